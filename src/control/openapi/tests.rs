use std::collections::BTreeSet;

use super::DOCUMENT;
use crate::control::routes::ROUTES;

fn document() -> serde_json::Value {
    serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
}

/// `(path, METHOD, needs a key)` of every operation the router serves.
fn served() -> BTreeSet<(String, String, bool)> {
    ROUTES
        .iter()
        .flat_map(|route| {
            route
                .methods
                .split(", ")
                .map(|method| (route.path.to_owned(), method.to_owned(), route.keyed))
        })
        .collect()
}

/// The same, as the document says: an operation needs a key unless its `security` is `[]`.
fn documented() -> BTreeSet<(String, String, bool)> {
    let doc = document();
    let global_key = doc["security"] == serde_json::json!([{ "apiKey": [] }]);
    assert!(
        global_key,
        "every operation needs the key unless it says otherwise"
    );
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let keyed = operation.get("security") != Some(&serde_json::json!([]));
            operations.insert((path.clone(), method.to_uppercase(), keyed));
        }
    }
    operations
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_serves() {
    let served = served();
    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in docs/openapi.json (path, method, keyed): {undocumented:?}; \
         documented but not served: {unserved:?}"
    );
}

#[test]
fn the_document_names_this_version_and_openapi_3_1() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference}: only local references"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} resolves to nothing"
        );
    }
}

fn collect_refs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(reference)) = map.get("$ref") {
                out.push(reference.clone());
            }
            map.values().for_each(|value| collect_refs(value, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|value| collect_refs(value, out)),
        _ => {}
    }
}
