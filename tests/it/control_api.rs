use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start().await;
    let (status, body) = server.get_json("/healthz").await;
    assert_eq!((status, body), (200, json!({"status":"ok"})));
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!((status, body), (200, json!({"ready":true})));
    let mut client = server.client().await;
    client.subscribe("m").await;
    server.publish("m", json!(1)).await;
    client.recv().await;
    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "switchboard_connections ",
        "switchboard_subscriptions ",
        "switchboard_channels ",
        "switchboard_messages_published_total",
        "switchboard_messages_delivered_total",
        "switchboard_bytes_sent_total",
        "switchboard_slow_consumer_closes_total",
        "switchboard_protocol_errors_total{code=\"bad_request\"}",
        "switchboard_outbound_queue_messages",
        "switchboard_publish_to_enqueue_seconds_bucket",
        "switchboard_http_publish_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn stats_count_connections_subscriptions_and_shards() {
    let server = TestServer::builder().shards(8).start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("s1").await;
    a.subscribe("s2").await;
    b.subscribe("s1").await;
    let (status, body) = server.get_json("/v1/stats").await;
    assert_eq!(status, 200);
    assert_eq!(body["connections"], 2);
    assert_eq!(body["subscriptions"], 3);
    assert_eq!(body["channels"], 2);
    assert_eq!(body["bus"], "local");
    let shards = body["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 8);
    let summed: u64 = shards
        .iter()
        .map(|s| s["subscriptions"].as_u64().unwrap())
        .sum();
    assert_eq!(summed, 3);
    server.stop().await;
}

#[tokio::test]
async fn disconnect_closes_the_named_connection_with_4000() {
    let server = TestServer::start().await;
    let mut victim = server.client().await;
    let mut bystander = server.client().await;
    let (status, body) = server
        .post("/v1/disconnect", json!({"conn_id": victim.conn_id()}))
        .await;
    assert_eq!((status, body), (200, json!({"disconnected":true})));
    assert_eq!(victim.close_code().await, 4000);
    bystander.send(json!({"type":"ping"})).await;
    assert_eq!(bystander.recv().await["type"], "pong");
    let (status, body) = server
        .post("/v1/disconnect", json!({"conn_id": 999_999}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_right_status() {
    let server = TestServer::start().await;
    let url = server.control_url("/v1/publish");
    let send = |body: &'static str, content_type: &'static str| {
        server
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let status = |response: reqwest::Response| response.status().as_u16();
    assert_eq!(status(send("{", "application/json").await.unwrap()), 400);
    assert_eq!(
        status(
            send(r#"{"channel":"a"}"#, "application/json")
                .await
                .unwrap()
        ),
        422
    );
    assert_eq!(
        status(
            send(r#"{"channel":"a b","data":1}"#, "application/json")
                .await
                .unwrap()
        ),
        422
    );
    assert_eq!(
        status(
            send(r#"{"channel":"a","data":1,"x":2}"#, "application/json")
                .await
                .unwrap()
        ),
        422
    );
    assert_eq!(
        status(
            send(r#"{"channel":"a","data":1}"#, "text/plain")
                .await
                .unwrap()
        ),
        415
    );
    assert_eq!(
        status(
            send(
                r#"{"channel":"a","data":1}"#,
                "application/json; charset=utf-8"
            )
            .await
            .unwrap()
        ),
        200
    );
    let huge = format!(
        r#"{{"channel":"a","data":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let response = server
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(status(response), 413);
    let response = server.http.get(&url).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(response.status(), 405);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let (code, body) = server.get_json("/v1/nothing").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (code, body) = server
        .post("/v1/broadcast", json!({"channels":[],"data":1}))
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (422, Some("bad_request"))
    );
    server.stop().await;
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    let key = "test-key-0123456789abcdef";
    let server = TestServer::builder()
        .configure(|c| c.control.api_keys = vec![key.to_owned()])
        .start()
        .await;
    let url = server.control_url("/v1/stats");
    let response = server.http.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = server
        .http
        .get(&url)
        .bearer_auth("wrong-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = server.http.get(&url).bearer_auth(key).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // The scheme is case-insensitive (RFC 9110 11.1).
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let response = server
            .http
            .get(&url)
            .header("authorization", format!("{scheme} {key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
    }
    let response = server
        .http
        .get(&url)
        .header("authorization", format!("Basic {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // Health endpoints stay open for load balancers.
    assert_eq!(server.get("/healthz").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn head_is_get_without_a_body() {
    let server = TestServer::start().await;
    for path in ["/healthz", "/readyz", "/metrics", "/v1/stats", "/v1/nodes"] {
        let get = server
            .http
            .get(server.control_url(path))
            .send()
            .await
            .unwrap();
        let head = server
            .http
            .head(server.control_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), get.status(), "{path}");
        assert_eq!(
            head.headers()["content-type"],
            get.headers()["content-type"],
            "{path}"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    let response = server
        .http
        .post(server.control_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    server.stop().await;
}

#[tokio::test]
async fn readiness_turns_false_while_stopping() {
    let server = TestServer::start().await;
    let control = server.control_url("/readyz");
    let http = server.http.clone();
    // This client does not read during the drain, so its session lingers (bounded by the
    // grace period) and the control API stays up long enough to be asked.
    let mut client = server.client().await;
    let drain = tokio::spawn(server.stop());
    crate::assert_eventually!(
        http.get(&control).send().await.unwrap().status().as_u16() == 503,
        "readiness fails once the stop starts"
    );
    let body: serde_json::Value = http
        .get(&control)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"ready": false, "reasons": ["stopping"]}));
    assert_eq!(client.close_code().await, 1001);
    drain.await.unwrap();
}

/// `POST /v1/batch`: commands run in order, one reply each; a failing command does not stop
/// the others; the envelope is checked first; each command counts against the key's rate.
#[tokio::test]
async fn a_batch_runs_its_commands_in_order_with_a_reply_each() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("orders").await;
    client.subscribe("audit").await;
    let (status, body) = server
        .post(
            "/v1/batch",
            json!({"commands": [
                {"publish": {"channel": "orders", "data": 1}},
                {"publish": {"channel": "bad channel!", "data": 2}},
                {"broadcast": {"channels": ["orders", "audit"], "data": 3}},
                {"publish": {"channel": "orders", "data": "x".repeat(70_000)}},
                {"publish": {"channel": "orders", "data": 4}},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let replies = body["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 5, "{body}");
    assert!(replies[0]["offset"].is_string(), "{body}");
    assert_eq!(replies[1]["error"]["code"], "bad_request", "{body}");
    assert!(replies[2]["offsets"]["orders"].is_string(), "{body}");
    assert!(replies[2]["offsets"]["audit"].is_string(), "{body}");
    assert_eq!(replies[3]["error"]["code"], "limit_exceeded", "{body}");
    assert!(replies[4]["offset"].is_string(), "{body}");
    // The subscriber sees the three messages of `orders` in the batch's order.
    let mut orders = Vec::new();
    while orders.len() < 3 {
        let message = client.recv_type("message").await;
        if message["channel"] == "orders" {
            orders.push((message["data"].clone(), message["offset"].clone()));
        }
    }
    assert_eq!(
        orders,
        [
            (json!(1), replies[0]["offset"].clone()),
            (json!(3), replies[2]["offsets"]["orders"].clone()),
            (json!(4), replies[4]["offset"].clone()),
        ],
        "deliveries in the batch's order, with the offsets the replies gave"
    );

    // The envelope: nothing runs when it is wrong, and a subscriber elsewhere keeps its
    // full rate meanwhile.
    crate::raw::with_bystander(&server, async {
        for bad in [
            json!({"commands": []}),
            json!({"commands": [{"subscribe": {"channel": "orders"}}]}),
            json!({"commands": [{"publish": {"channel": "orders"}}]}),
            json!({"orders": []}),
            json!({"commands": vec![json!({"publish": {"channel": "orders", "data": 0}}); 1001]}),
        ] {
            let (status, body) = server.post("/v1/batch", bad).await;
            assert_eq!(status, 422, "{body}");
        }
    })
    .await;
    // None of those published: the next message on `orders` is this one.
    server.publish("orders", json!("marker")).await;
    let next = loop {
        let message = client.recv_type("message").await;
        if message["channel"] == "orders" {
            break message;
        }
    };
    assert_eq!(next["data"], "marker");
    let (status, _) = server.get("/v1/batch").await;
    assert_eq!(status, 405);
    server.stop().await;
}

#[tokio::test]
async fn a_batch_counts_each_command_against_the_key_rate() {
    let key = "batch-key-0123456789abcdef";
    let server = TestServer::builder()
        .configure(|c| {
            c.control.api_keys = vec![key.to_owned()];
            c.control.requests_per_second_per_key = 1;
            c.control.request_burst_per_key = 5;
        })
        .start()
        .await;
    let batch = |n: usize| {
        let commands = vec![json!({"publish": {"channel": "rated", "data": 0}}); n];
        server
            .http
            .post(server.control_url("/v1/batch"))
            .bearer_auth(key)
            .json(&json!({ "commands": commands }))
            .send()
    };
    // More commands than the burst can never pass: refused as such, not as "retry later".
    assert_eq!(batch(6).await.unwrap().status(), 422);
    // Four commands take four of the five tokens (the 422 above took one: the request).
    assert_eq!(batch(3).await.unwrap().status(), 200);
    let refused = batch(3).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    server.stop().await;
}

/// What `curl -d '{...}'` and `requests.post(url, data=json.dumps(...))` send: JSON declared
/// as a form, or not declared at all. Taken when it parses as JSON; a real form body gets a
/// 400 that says what to send; other declared types stay 415.
#[tokio::test]
async fn a_json_body_without_its_content_type_is_taken() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("lenient").await;
    let url = server.control_url("/v1/publish");
    let body = r#"{"channel":"lenient","data":1}"#;
    let form = server
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let bare = server.http.post(&url).body(body).send().await.unwrap();
    assert_eq!(bare.status(), 200);
    assert_eq!(client.recv().await["data"], 1);
    assert_eq!(client.recv().await["data"], 1);
    let real_form = server
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("channel=lenient&data=1")
        .send()
        .await
        .unwrap();
    assert_eq!(real_form.status(), 400);
    let message = real_form.json::<serde_json::Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("Content-Type: application/json"),
        "{message}"
    );
    let xml = server
        .http
        .post(&url)
        .header("content-type", "application/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(xml.status(), 415);
    let body: serde_json::Value = xml.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
    server.stop().await;
}

/// Every control API answer carries `X-Request-Id`: the caller's when it sent a usable one,
/// else a new one; a header that could forge a log line or another header is replaced.
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let server = TestServer::start().await;
    let id = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-request-id")
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let given = server
        .http
        .get(server.control_url("/v1/stats"))
        .header("x-request-id", "lb-7f3a:42")
        .send()
        .await
        .unwrap();
    assert_eq!(id(&given).as_deref(), Some("lb-7f3a:42"));
    let mut made = Vec::new();
    for path in ["/healthz", "/v1/no-such-route", "/v1/stats"] {
        let response = server
            .http
            .get(server.control_url(path))
            .send()
            .await
            .unwrap();
        made.push(id(&response).expect("an id on every answer"));
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 3, "each request its own id");
    let forged = server
        .http
        .get(server.control_url("/v1/stats"))
        .header("x-request-id", "a b\" level=error")
        .send()
        .await
        .unwrap();
    let replaced = id(&forged).unwrap();
    assert_eq!(replaced.len(), 16, "{replaced}");
    server.stop().await;
}

/// The log lines about a control request carry its id, so that a backend's `X-Request-Id`
/// finds them.
#[tokio::test]
async fn the_log_lines_of_a_request_carry_its_id() {
    let node = crate::harness::BinaryNode::start_logged(
        &["--log-level", "warn,switchboard::control=debug"],
        &[],
    )
    .await;
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("http://{}/v1/publish", node.control_addr))
        .header("x-request-id", "backend-req-8812")
        .json(&json!({"channel":"logged","data":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let log = node.log().await;
    let line = log
        .lines()
        .find(|line| line.contains("Control request answered") && line.contains("/v1/publish"))
        .unwrap_or_else(|| panic!("no request line: {log}"));
    assert!(line.contains("backend-req-8812"), "{line}");
}

/// The metrics reference (docs/http-api.md, `GET /metrics`) lists every metric the code
/// names and every metric a live node exports, and every exported name keeps Prometheus's
/// naming rules.
#[tokio::test]
async fn the_metrics_reference_lists_every_metric() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docs = std::fs::read_to_string(format!("{root}/docs/http-api.md")).unwrap();
    let reference = docs
        .split("### `GET /metrics`")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap()
        .to_owned();
    let listed = |name: &str| {
        reference.contains(&format!("`{name}`")) || reference.contains(&format!("`{name}{{"))
    };
    let mut sources = vec![format!("{root}/src/telemetry.rs")];
    for entry in std::fs::read_dir(format!("{root}/src/telemetry")).unwrap() {
        sources.push(entry.unwrap().path().display().to_string());
    }
    let mut missing = Vec::new();
    for source in sources {
        let text = std::fs::read_to_string(&source).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.starts_with("switchboard_")
                && piece
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !listed(piece)
            {
                missing.push(format!("{piece} (named in {source})"));
            }
        }
    }
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("m").await;
    server.publish("m", json!(1)).await;
    client.recv().await;
    let (_, text) = server.get("/metrics").await;
    let mut misnamed = Vec::new();
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        if !listed(name) {
            missing.push(format!("{name} (exported)"));
        }
        // Prometheus's naming rules: one prefix of ours (or the standard `process_`), a
        // counter ends in `_total` and nothing else does, no unit in a plural it lacks.
        let ours = name.starts_with("switchboard_") || name.starts_with("process_");
        let total_right = (kind == "counter") == name.ends_with("_total");
        let units_right = !["_second", "_byte", "_ms", "_millis"]
            .iter()
            .any(|unit| name.ends_with(unit) || name.contains(&format!("{unit}_")));
        if !(ours && total_right && units_right) {
            misnamed.push(format!("{name} ({kind})"));
        }
    }
    assert!(
        misnamed.is_empty(),
        "against the naming rules: {misnamed:#?}"
    );
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "not in docs/http-api.md's metrics reference: {missing:#?}"
    );
    server.stop().await;
}

/// A single node lists itself with the fields a cluster's registry has (but no
/// incarnation): where it listens, its connections, whether it drains, when it started.
#[tokio::test]
async fn a_single_node_lists_itself_as_a_cluster_would() {
    let server = TestServer::start().await;
    let _client = crate::harness::TestClient::connect(&server.ws_url()).await;
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (status, body) = server.get_json("/v1/nodes").await;
    assert_eq!(status, 200);
    let nodes = body["nodes"].as_array().expect("a list of nodes");
    assert_eq!(nodes.len(), 1, "{body}");
    let node = &nodes[0];
    assert_eq!(node["ws_addr"], server.ws_addr.to_string(), "{body}");
    assert_eq!(
        node["control_addr"],
        server.control_addr.to_string(),
        "{body}"
    );
    assert_eq!(node["connections"], 1, "{body}");
    assert_eq!(node["draining"], false, "{body}");
    let started = node["started_unix_ms"].as_u64().expect("a start time");
    assert!(
        started <= before_ms && before_ms - started < 60_000,
        "{body}"
    );
    assert!(node.get("incarnation").is_none(), "{body}");
    assert!(node["node"].is_string(), "{body}");
}
