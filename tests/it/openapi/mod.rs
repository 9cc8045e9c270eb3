//! The control API's OpenAPI document (`docs/openapi.json`) against the real server, both
//! ways. schemathesis (PyPI, in the venv `tests/run.sh` makes) runs every one of its checks
//! on every operation against a node of this build's binary: no 5xx, every answer's status,
//! headers and body as documented, input outside the schemas refused, input inside it taken.
//! Then every status the document gives an operation must have been answered: by the fuzzer,
//! or by the probes here for what it cannot cause (a stalled or oversized body, a key's rate
//! limit, Redis gone, a drain started by a signal). Which routes exist is held to the router
//! by `control::openapi`'s unit tests; openapi-spec-validator holds the document to the
//! OpenAPI 3.1 specification.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

use self::probes::{
    Answer, probe_bodies_and_state, probe_rate_limit, probe_redis_down, probe_signal_drain,
};
use crate::{harness::BinaryNode, tls::CertDir};

mod probes;

const KEY: &str = "openapi-contract-key-0123456789";

/// The fuzzer's seed: fixed, so that a run is repeatable; `SWITCHBOARD_OPENAPI_SEED` tries
/// others.
const SEED: &str = "20261206";

/// Statuses no loopback test can cause, with the test that shows each.
const UNREACHABLE: [(u16, &str); 1] = [(
    403,
    "403 needs a caller off loopback with no key configured: \
     control::tests::only_loopback_peers_count_as_local",
)];

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One operation of the document.
struct Operation {
    method: String,
    path: String,
    statuses: BTreeSet<u16>,
    keyed: bool,
}

/// The document's operations by `operationId`.
fn operations(doc: &Value) -> BTreeMap<String, Operation> {
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let statuses = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|status| status.parse().unwrap())
                .collect();
            operations.insert(
                operation["operationId"].as_str().unwrap().to_owned(),
                Operation {
                    method: method.to_uppercase(),
                    path: path.clone(),
                    statuses,
                    keyed: operation.get("security") != Some(&json!([])),
                },
            );
        }
    }
    operations
}

/// The operation a request went to: its method, and its path against the templates.
fn operation_of<'a>(
    operations: &'a BTreeMap<String, Operation>,
    method: &str,
    path: &str,
) -> Option<&'a str> {
    operations.iter().find_map(|(id, operation)| {
        let matches = match operation.path.split_once("{channel}") {
            None => operation.path == path,
            Some((before, after)) => path.strip_prefix(before).is_some_and(|rest| {
                rest.strip_suffix(after)
                    .is_some_and(|channel| !channel.is_empty())
            }),
        };
        (matches && operation.method.eq_ignore_ascii_case(method)).then_some(id.as_str())
    })
}

/// What was answered, by operation; each answer checked against the document.
#[derive(Default)]
struct Seen(BTreeMap<String, BTreeSet<u16>>);

impl Seen {
    fn record(&mut self, operations: &BTreeMap<String, Operation>, id: &str, answer: &Answer) {
        assert!(
            operations[id].statuses.contains(&answer.status),
            "{id} answered {}, which docs/openapi.json does not give it: {}",
            answer.status,
            answer.body
        );
        assert!(
            answer
                .headers
                .iter()
                .any(|(name, _)| name == "x-request-id"),
            "{id}'s answer has no X-Request-Id"
        );
        self.0
            .entry(id.to_owned())
            .or_default()
            .insert(answer.status);
    }
}

/// A command of the venv `tests/run.sh` makes (schemathesis, openapi-spec-validator).
fn venv_tool(name: &str) -> PathBuf {
    let binary = crate::python_client::venv().join("bin").join(name);
    assert!(
        binary.exists(),
        "{} not found: run tests/run.sh, which installs tests/openapi/requirements.txt in \
         the test venv (or `pip install -r tests/openapi/requirements.txt` in \
         $SWITCHBOARD_VENV)",
        binary.display()
    );
    binary
}

/// Runs schemathesis against a node of the binary; what it answered, by operation.
async fn fuzz(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
    let dir = CertDir::new("sb-openapi-fuzz");
    let config = dir.path("switchboard.toml");
    // A drain the fuzzer starts must never close the node under it: it waits an hour.
    std::fs::write(
        &config,
        format!("[control]\napi_keys = [\"{KEY}\"]\n[shutdown]\ndrain_delay = \"3600s\"\n"),
    )
    .unwrap();
    let node = BinaryNode::start(&["--config", &config], &[]).await;
    let url = format!("http://{}", node.control_addr);

    // The document served is the one in the repository, and needs no key.
    let served = reqwest::get(format!("{url}/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.unwrap();
    assert_eq!(
        served,
        document(),
        "GET /v1/openapi.json is docs/openapi.json"
    );

    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let har = dir.path("run.har");
    let seed = std::env::var("SWITCHBOARD_OPENAPI_SEED").unwrap_or_else(|_| SEED.to_owned());
    let run = Command::new("timeout")
        .args(["--kill-after=10", "600"])
        .arg(venv_tool("schemathesis"))
        .arg("--config-file")
        .arg(checkout.join("tests/openapi/schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(checkout.join("docs/openapi.json"))
        .args(["--url", &url])
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args(["--checks", "all", "--max-examples", "60", "--seed", &seed])
        .args(["--generation-database", "none", "--request-timeout", "30"])
        .args(["--report", "har", "--report-har-path", &har])
        .current_dir(dir.path(""))
        .env("PYTHONPATH", checkout.join("tests/openapi"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .output()
        .expect("timeout runs (coreutils)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "schemathesis found the server and docs/openapi.json apart (seed {seed}):\n{report}"
    );

    let har: Value = serde_json::from_str(&std::fs::read_to_string(&har).unwrap()).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    assert!(
        entries.len() > 1000,
        "the fuzzer sent {} requests",
        entries.len()
    );
    for entry in entries {
        let url = reqwest::Url::parse(entry["request"]["url"].as_str().unwrap()).unwrap();
        let method = entry["request"]["method"].as_str().unwrap();
        let status = u16::try_from(entry["response"]["status"].as_u64().unwrap()).unwrap();
        // Undocumented methods (405) and paths are the fuzzer's own probes.
        if let Some(id) = operation_of(operations, method, url.path()) {
            seen.0.entry(id.to_owned()).or_default().insert(status);
        }
    }
    drop(node);
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let check = Command::new(venv_tool("openapi-spec-validator"))
        .arg(&path)
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        check.status.success(),
        "docs/openapi.json breaks the OpenAPI 3.1 specification:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_its_openapi_contract_in_both_directions() {
    let doc = document();
    let operations = operations(&doc);
    let mut seen = Seen::default();
    fuzz(&operations, &mut seen).await;
    probe_bodies_and_state(&operations, &mut seen).await;
    probe_rate_limit(&operations, &mut seen).await;
    probe_redis_down(&operations, &mut seen).await;
    probe_signal_drain(&operations, &mut seen).await;

    let mut never = Vec::new();
    for (id, operation) in &operations {
        let answered = seen.0.get(id).cloned().unwrap_or_default();
        for status in &operation.statuses {
            let exempt = operation.keyed && UNREACHABLE.iter().any(|(code, _)| code == status);
            if !answered.contains(status) && !exempt {
                never.push(format!("{} {} {status}", operation.method, operation.path));
            }
        }
    }
    assert!(
        never.is_empty(),
        "documented but never answered (remove them from docs/openapi.json, or add a probe \
         that causes them): {never:#?}"
    );
}
