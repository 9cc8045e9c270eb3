//! Switchboard: a WebSocket edge and fan-out server.
//!
//! See `ARCHITECTURE.md` for the bird's eye view. The binary (`src/main.rs`) only parses the
//! command line, loads the configuration, starts telemetry and calls [`app::run`].

pub mod accept;
pub mod app;
pub mod auth;
pub mod blocks;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod drain;
pub mod hooks;
pub mod hub;
pub mod memory;
pub mod occupancy;
pub mod overload;
pub mod presence;
pub mod protocol;
pub mod rates;
pub mod revocations;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod webhooks;
