//! What a node says about itself: [`NodeInfo`] (its addresses, given at start) and
//! [`NodeEntry`] (its entry in the registry, what `GET /v1/nodes` and
//! `GET /v1/stats?scope=cluster` list). One type for both the entry a node writes to Redis and
//! the entries it reads back, so the two cannot drift.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where this node listens: what its registry entry tells balancers and clients.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub ws_addr: SocketAddr,
    pub control_addr: SocketAddr,
}

#[cfg(test)]
impl NodeInfo {
    /// Addresses for a bus in unit tests, which listen nowhere.
    pub(crate) fn unbound() -> Self {
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            ws_addr: unbound,
            control_addr: unbound,
        }
    }
}

/// A live node, as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// `server.node_id`.
    pub node: String,
    /// The process running under that id (a restart gets a new one); a single node, which
    /// keeps no registry, has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub incarnation: String,
    pub ws_addr: SocketAddr,
    pub control_addr: SocketAddr,
    /// Connections open, as of the entry's last heartbeat.
    pub connections: u64,
    /// Refusing upgrades (a drain past its delay): what a balancer choosing a node should
    /// skip.
    pub draining: bool,
    /// When the process started, in Unix milliseconds.
    pub started_unix_ms: u64,
}

impl NodeEntry {
    /// This node's entry now.
    pub(super) fn of(
        node: &str,
        incarnation: &str,
        info: &NodeInfo,
        hub: &crate::hub::Hub,
        started_unix_ms: u64,
    ) -> Self {
        Self {
            node: node.to_owned(),
            incarnation: incarnation.to_owned(),
            ws_addr: info.ws_addr,
            control_addr: info.control_addr,
            connections: hub.connections() as u64,
            draining: hub.is_draining(),
            started_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry's JSON is read back by other nodes, possibly of another build: its field
    /// names are the wire format of `GET /v1/nodes`.
    #[test]
    fn an_entry_reads_back_as_written_and_omits_no_incarnation() {
        let entry = NodeEntry {
            node: "edge-1".into(),
            incarnation: String::new(),
            ws_addr: "10.0.0.7:8080".parse().unwrap(),
            control_addr: "10.0.0.7:9090".parse().unwrap(),
            connections: 17_320,
            draining: false,
            started_unix_ms: 1_795_555_758_848,
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"node":"edge-1","ws_addr":"10.0.0.7:8080",
                "control_addr":"10.0.0.7:9090","connections":17320,"draining":false,
                "started_unix_ms":1_795_555_758_848_u64})
        );
        assert_eq!(serde_json::from_value::<NodeEntry>(json).unwrap(), entry);
    }
}
