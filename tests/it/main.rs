//! Integration tests: real servers on loopback sockets, real WebSocket and HTTP clients.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test or its harness reports failure"
)]

mod amplification;
mod auth;
mod auth_tooling;
mod backend;
mod bad_input;
mod blocks;
mod boundaries;
mod browser;
mod bus_routing;
mod busy_node;
mod cluster;
mod cluster_state;
mod compression;
mod conformance;
mod control_api;
mod deploy;
mod drain;
mod fault_proxy;
mod harness;
mod hooks;
mod hostile;
mod js_client;
mod jwks;
mod limits;
mod lockout;
mod mass_disconnect;
mod namespace_history;
mod openapi;
mod overload;
mod presence;
mod presence_cost;
mod presence_reply;
mod presence_store;
mod presence_truth;
mod process;
mod publish_rates;
mod pubsub;
mod python_client;
mod raw;
mod redis_cluster;
mod redis_retention;
mod redis_scripts;
mod redis_server;
mod resume;
mod revoke;
mod rolling_restart;
mod slow_consumer;
mod slow_policy;
mod stream_ingest;
mod stream_model;
mod streams;
mod streams_cluster;
mod throttle;
mod tls;
mod user_limit;
mod webhooks;
mod webhooks_cluster;
