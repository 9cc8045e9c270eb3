//! `GET /v1/openapi.json`: the control API's OpenAPI 3.1 document, `docs/openapi.json`,
//! built in. Its tests hold it to the router: the same routes and methods, the same keys.
//! What each route answers is held to it by schemathesis against a live node
//! (`tests/it/openapi.rs`).

use hyper::Response;

use super::{Body, JSON, response};

/// `docs/openapi.json`.
const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// The document, as the route answers it.
pub(super) fn document() -> Response<Body> {
    response(200, JSON, DOCUMENT)
}

#[cfg(test)]
mod tests;
