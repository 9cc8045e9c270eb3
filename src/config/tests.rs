use std::time::Duration;

use super::*;

#[test]
fn shipped_default_file_parses_and_matches_the_built_in_defaults() {
    let text = include_str!("../../config/switchboard.toml");
    let from_file = Config::from_toml_str(text).expect("config/switchboard.toml is valid");
    let built_in = Config::default().validate().expect("defaults are valid");
    // node_id is generated per start when empty; compare everything else.
    let strip = |mut config: Config| {
        config.server.node_id.clear();
        config.to_toml()
    };
    assert_eq!(strip(from_file), strip(built_in));
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let err = Config::from_toml_str("[limits]\nmax_conections = 5\n").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("limits.max_conections"), "{message}");
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn wrong_types_name_the_key() {
    let err = Config::from_toml_str("[session]\nheartbeat = 5\n").unwrap_err();
    assert!(err.to_string().contains("session.heartbeat"), "{err}");
}

#[test]
fn out_of_range_values_name_the_key() {
    for (text, key) in [
        ("[server]\nshards = 3\n", "server.shards"),
        ("[presence]\ncoalesce = \"11s\"\n", "presence.coalesce"),
        ("[presence]\nmax_listed = 0\n", "presence.max_listed"),
        ("[presence]\nttl = \"2s\"\n", "presence.ttl"),
        ("[presence]\nttl = \"2h\"\n", "presence.ttl"),
        ("[presence]\nmax_listed = 100001\n", "presence.max_listed"),
        ("[server]\nworker_threads = 1025\n", "server.worker_threads"),
        ("[server]\nws_path = \"ws\"\n", "server.ws_path"),
        (
            "[session]\nheartbeat = \"30s\"\nidle_timeout = \"10s\"\n",
            "session.idle_timeout",
        ),
        ("[history]\nsize = 5000\n", "history.size"),
        ("[compression]\nlevel = 0\n", "compression.level"),
        ("[compression]\nlevel = 10\n", "compression.level"),
        (
            "[compression]\nmin_bytes = 65536\n",
            "compression.min_bytes",
        ),
        ("[control]\napi_keys = [\"short\"]\n", "control.api_keys"),
        ("[log]\nlevel = \"loud[\"\n", "log.level"),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        (
            "[cluster]\nredis = [\"rediss://a:6380\", \"redis://b:6379\"]\n",
            "cluster.redis",
        ),
        (
            "[cluster]\nredis = \"redis://a:6379\"\nredis_ca_file = \"/ca.pem\"\n",
            "cluster.redis_ca_file",
        ),
        ("[cluster]\nredis = \"http://a:6379\"\n", "cluster.redis"),
        ("[cluster]\nbus_max_age = \"59s\"\n", "cluster.bus_max_age"),
        (
            "[cluster]\ninterest_ttl = \"29s\"\n",
            "cluster.interest_ttl",
        ),
        (
            "[cluster]\ninterest_ttl = \"25h\"\n",
            "cluster.interest_ttl",
        ),
        (
            "[cluster]\nbus_routing = \"fanout\"\n",
            "cluster.bus_routing",
        ),
        (
            "[limits]\nfragment_timeout = \"0s\"\n",
            "limits.fragment_timeout",
        ),
        (
            "[limits]\nmax_upgrade_request_bytes = 10\n",
            "limits.max_upgrade_request_bytes",
        ),
        ("[control]\nbody_timeout = \"0s\"\n", "control.body_timeout"),
        (
            "[server]\nallowed_origins = [\"example.com\"]\n",
            "server.allowed_origins",
        ),
        (
            "[server]\nallowed_origins = [\"https://a.com/path\"]\n",
            "server.allowed_origins",
        ),
        ("[control]\nlisten = \"0.0.0.0:9090\"\n", "control.api_keys"),
        (
            "[session]\nfirst_byte_timeout = \"11s\"\n",
            "session.first_byte_timeout",
        ),
        (
            "[session]\nfirst_byte_timeout = \"0s\"\n",
            "session.first_byte_timeout",
        ),
        (
            "[limits]\nipv6_source_prefix = 16\n",
            "limits.ipv6_source_prefix",
        ),
        (
            "[limits]\nmax_publish_payload_bytes = 300000\nclient_publish_byte_burst = 400000\n",
            "limits.max_publish_payload_bytes",
        ),
        (
            "[limits]\nmax_publish_payload_bytes = 300000\n",
            "limits.client_publish_byte_burst",
        ),
        (
            "[limits]\nmax_pending_upgrades_per_ip = 0\n",
            "limits.max_pending_upgrades_per_ip",
        ),
        (
            "[limits]\nmax_event_loop_lag = \"10ms\"\n",
            "limits.max_event_loop_lag",
        ),
        (
            "[limits]\nmax_event_loop_lag = \"61s\"\n",
            "limits.max_event_loop_lag",
        ),
    ] {
        let err = Config::from_toml_str(text).unwrap_err();
        assert!(err.to_string().starts_with(key), "{text}: {err}");
    }
}

#[test]
fn environment_overrides_the_file() {
    let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "[limits]\nmax_connections = 10\n[session]\nheartbeat = \"5s\"\n",
    )
    .unwrap();
    let env = [
        (
            "SWITCHBOARD_LIMITS__MAX_CONNECTIONS".to_owned(),
            "42".to_owned(),
        ),
        (
            "SWITCHBOARD_SERVER__LISTEN".to_owned(),
            "127.0.0.1:1234".to_owned(),
        ),
        (
            "SWITCHBOARD_SESSION__CLIENT_PUBLISH".to_owned(),
            "false".to_owned(),
        ),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ];
    let config = Config::load(Some(&path), env).unwrap();
    assert_eq!(config.limits.max_connections, 42);
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:1234");
    assert!(!config.session.client_publish);
    assert_eq!(config.session.heartbeat, Duration::from_secs(5));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_environment_keys_are_refused() {
    let env = [("SWITCHBOARD_LIMITS__NOPE".to_owned(), "1".to_owned())];
    let err = Config::load(None, env).unwrap_err();
    assert!(err.to_string().contains("limits.nope"), "{err}");
    let env = [("SWITCHBOARD_SERVER__TLS__CERT".to_owned(), "x".to_owned())];
    let err = Config::load(None, env).unwrap_err();
    assert!(
        err.to_string().contains("SWITCHBOARD_SERVER__TLS__CERT")
            && err.to_string().contains("server.tls.cert"),
        "{err}"
    );
    let env = [("SWITCHBOARD___LISTEN".to_owned(), "x".to_owned())];
    assert!(Config::load(None, env).is_err());
}

/// The overlay reaches every key the file can: nested sections, string keys given digits,
/// the top-level arrays of tables; a bad value names its variable.
#[test]
fn environment_reaches_nested_keys_strings_and_arrays_of_tables() {
    let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(var, value)| ((*var).to_owned(), (*value).to_owned()))
            .collect()
    };
    let config = Config::load(
        None,
        vars(&[
            ("SWITCHBOARD_SERVER__NODE_ID", "12345"),
            ("SWITCHBOARD_AUTH__AUDIENCE", "2024"),
            (
                "SWITCHBOARD_AUTH__KEYS",
                r#"[{algorithm = "HS256", secret = "a-secret-of-at-least-32-bytes-long!!"}]"#,
            ),
            (
                "SWITCHBOARD_NAMESPACES",
                r#"[{pattern = "room:*", subscribe = "authenticated", publish = "none", history = "none"}, {pattern = "*", subscribe = "anonymous", publish = "none", history = "none"}]"#,
            ),
        ]),
    )
    .unwrap();
    assert_eq!(config.server.node_id, "12345");
    assert_eq!(config.auth.audience, "2024");
    assert_eq!(config.auth.keys.len(), 1);
    assert_eq!(config.namespaces.len(), 2);
    assert_eq!(config.namespaces[0].pattern, "room:*");

    // Deeper than a section: the key is set (and the TLS files it names are checked later,
    // when the node starts or `check-config` reads them).
    let mut table = toml::Table::new();
    env::apply(
        &mut table,
        vars(&[("SWITCHBOARD_SERVER__TLS__CERT_FILE", "/etc/tls/cert.pem")]),
    )
    .unwrap();
    assert_eq!(
        table["server"]["tls"]["cert_file"].as_str(),
        Some("/etc/tls/cert.pem")
    );

    let err = Config::load(
        None,
        vars(&[("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "many")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("SWITCHBOARD_LIMITS__MAX_CONNECTIONS")
            && err.contains("limits.max_connections"),
        "{err}"
    );
}

/// What Kubernetes injects for Services named `switchboard-ws` and `switchboard-control`
/// (service links): none is in the `<SECTION>__<KEY>` form, so none is ours.
#[test]
fn variables_kubernetes_injects_for_services_are_ignored() {
    let env: Vec<(String, String)> = [
        ("SWITCHBOARD_WS_SERVICE_HOST", "10.96.0.12"),
        ("SWITCHBOARD_WS_SERVICE_PORT", "8080"),
        ("SWITCHBOARD_WS_SERVICE_PORT_WS", "8080"),
        ("SWITCHBOARD_WS_PORT", "tcp://10.96.0.12:8080"),
        ("SWITCHBOARD_WS_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("SWITCHBOARD_WS_PORT_8080_TCP_PROTO", "tcp"),
        ("SWITCHBOARD_WS_PORT_8080_TCP_PORT", "8080"),
        ("SWITCHBOARD_WS_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("SWITCHBOARD_CONTROL_SERVICE_HOST", "10.96.0.13"),
        ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "5000"),
    ]
    .into_iter()
    .map(|(var, value)| (var.to_owned(), value.to_owned()))
    .collect();
    let config = Config::load(None, env).unwrap();
    assert_eq!(config.limits.max_connections, 5000);
    assert_eq!(config.ignored_env.len(), 9);
    assert!(
        config
            .ignored_env
            .contains(&"SWITCHBOARD_WS_PORT_8080_TCP".to_owned())
    );
}

#[test]
fn auto_shards_are_a_power_of_two_of_at_least_four_per_core() {
    let config = Config::default().validate().unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(config.server.shards.is_power_of_two());
    assert!(config.server.shards >= 4 * cores);
    assert!(config.server.node_id.starts_with("node-"));
}

#[test]
fn the_load_generator_config_parses_and_opens_client_publishing() {
    let text = include_str!("../../loadtest/switchboard.toml");
    let config = Config::from_toml_str(text).expect("loadtest/switchboard.toml is valid");
    assert_eq!(config.limits.client_messages_per_second, 0);
    assert_eq!(config.namespaces[0].publish, Rule::Anonymous);
}

#[test]
fn namespaces_are_checked() {
    for text in [
        "[[namespaces]]\npattern = \"a*b\"\nsubscribe = \"anonymous\"\npublish = \"none\"\nhistory = \"none\"\n",
        "[[namespaces]]\npattern = \"room:*\"\nsubscribe = \"owner\"\npublish = \"none\"\nhistory = \"none\"\n",
        "[[namespaces]]\npattern = \"{sub}:{sub}\"\nsubscribe = \"owner\"\npublish = \"none\"\nhistory = \"none\"\n",
    ] {
        let err = Config::from_toml_str(text).unwrap_err();
        assert!(err.to_string().starts_with("namespaces"), "{text}: {err}");
    }
    let err = Config::from_toml_str(
        "[[namespaces]]\npattern = \"x\"\nsubscribe = \"everyone\"\npublish = \"none\"\nhistory = \"none\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("namespaces"), "{err}");
}

#[test]
fn check_config_output_hides_secrets() {
    let config = Config::from_toml_str(
        r#"
[control]
api_keys = ["an-api-key-of-some-length"]
[cluster]
redis = "rediss://default:hunter2-redis@redis.internal:6380/0"
[[auth.keys]]
algorithm = "HS256"
secret = "a-secret-of-at-least-thirty-two-bytes"
"#,
    )
    .unwrap()
    .validate()
    .unwrap();
    let shown = config.to_toml();
    for secret in [
        "an-api-key-of-some-length",
        "hunter2-redis",
        "a-secret-of-at-least-thirty-two-bytes",
    ] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(
        shown.contains("rediss://default:<redacted>@redis.internal:6380/0"),
        "{shown}"
    );
}

/// A control listener off loopback needs API keys, or an explicit opt-out.
#[test]
fn a_public_control_listener_needs_keys_or_an_opt_out() {
    let keyed = "[control]\nlisten = \"0.0.0.0:9090\"\napi_keys = [\"sixteen-chars-key\"]\n";
    assert!(Config::from_toml_str(keyed).is_ok());
    let opted = "[control]\nlisten = \"0.0.0.0:9090\"\nallow_no_api_keys = true\n";
    assert!(Config::from_toml_str(opted).is_ok());
    let loopback = "[control]\nlisten = \"[::1]:9090\"\n";
    assert!(Config::from_toml_str(loopback).is_ok());
}

/// `[streams]`' bounds left at 0 are derived from the queue they must fit; values given
/// that would not fit are refused naming the key, so a config that never mentions streams
/// keeps starting whatever its limits.
#[test]
fn stream_bounds_are_derived_from_the_queue_or_refused_when_they_do_not_fit() {
    let config = Config::default().validate().unwrap();
    assert_eq!(config.streams.max_text_bytes, 256 * 1024);
    assert_eq!(config.streams.max_open_per_channel, 3);
    let small = Config::from_toml_str(
        "[limits]\noutbound_queue_bytes = 65536\nmax_publish_payload_bytes = 16384\n",
    )
    .unwrap();
    assert_eq!(small.streams.max_text_bytes, 65536 - 16384 - 1024);
    assert_eq!(small.streams.max_open_per_channel, 1);
    let roomy = Config::from_toml_str("[limits]\noutbound_queue_bytes = 67108864\n").unwrap();
    assert_eq!(roomy.streams.max_open_per_channel, 64);
    for (text, key) in [
        (
            "[streams]\nmax_text_bytes = 1048576\n",
            "streams.max_text_bytes",
        ),
        (
            "[streams]\nmax_open_per_channel = 4\n",
            "streams.max_open_per_channel",
        ),
        ("[streams]\nidle_timeout = \"0s\"\n", "streams.idle_timeout"),
        ("[streams]\ncoalesce = \"2s\"\n", "streams.coalesce"),
    ] {
        let err = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

/// Node ids come from pod names, which may be longer than 64 characters: such a name is
/// shortened the same way every time, and two long names that share a beginning stay two
/// ids. A placeholder API key from an example is refused.
#[test]
fn long_pod_names_become_node_ids_and_placeholder_keys_are_refused() {
    let with_node = |id: &str| {
        Config::load(
            None,
            [("SWITCHBOARD_SERVER__NODE_ID".to_owned(), id.to_owned())],
        )
    };
    let base = "switchboard-7d9f8b6c5-production-eu-west-1-chat-platform-edge";
    let a = with_node(&format!("{base}-aaaaa")).unwrap().server.node_id;
    let again = with_node(&format!("{base}-aaaaa")).unwrap().server.node_id;
    let b = with_node(&format!("{base}-bbbbb")).unwrap().server.node_id;
    assert_eq!(a.len(), 64);
    assert_eq!(a, again);
    assert_ne!(a, b);
    assert!(a.starts_with("switchboard-7d9f8b6c5"));
    assert!(with_node("bad id!").is_err());
    assert!(with_node(&"x".repeat(254)).is_err());

    for placeholder in [
        "replace-with-a-long-random-key",
        "<32 random bytes, base64>",
    ] {
        let err = Config::load(
            None,
            [(
                "SWITCHBOARD_CONTROL__API_KEYS".to_owned(),
                format!("[\"{placeholder}\"]"),
            )],
        )
        .unwrap_err();
        assert!(err.to_string().contains("placeholder"), "{err}");
    }
}

/// The tokens of `text` that are numbers or durations (`1024`, `1,000`, `500ms`, `366d`),
/// commas dropped, outside parentheses.
fn numbers(text: &str) -> Vec<String> {
    // What a message says in parentheses is derived from other keys, not a bound of its own.
    let mut depth = 0_u32;
    let outside: String = text
        .chars()
        .filter(|c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect();
    outside
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ',' || c == '.'))
        .map(|word| word.trim_matches(|c| c == ',' || c == '.').replace(',', ""))
        .filter(|word| word.starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

/// Every bound the validation holds a key to is stated in the comment above the key in the
/// shipped file: each key with a number or a duration is set to 0 and to a huge value, and
/// the numbers of the error that names it must all be in its comment.
#[test]
fn the_shipped_file_states_every_bound_the_validation_holds() {
    let text = include_str!("../../config/switchboard.toml");
    let lines: Vec<&str> = text.lines().collect();
    let (mut section, mut comment) = (String::new(), String::new());
    let mut unstated = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if let Some(said) = trimmed.strip_prefix('#') {
            comment.push_str(said);
            comment.push(' ');
            continue;
        }
        if trimmed.starts_with('[') {
            section = trimmed.trim_matches(['[', ']']).to_owned();
            comment.clear();
            continue;
        }
        let Some((key, value)) = trimmed.split_once(" = ") else {
            comment.clear();
            continue;
        };
        let duration = value.starts_with("\"")
            && value[1..].starts_with(|c: char| c.is_ascii_digit())
            && value.trim_end_matches('"').ends_with(['s', 'm', 'h', 'd']);
        let tries: &[&str] = if duration {
            &["\"0s\"", "\"100000d\""]
        } else if value.parse::<u64>().is_ok() {
            &["0", "4000000000000"]
        } else {
            &[]
        };
        let stated = numbers(&comment);
        for tried in tries {
            let changed = format!("{key} = {tried}");
            let mut edited = lines.clone();
            edited[index] = &changed;
            let Err(err) = Config::from_toml_str(&edited.join("\n")) else {
                continue;
            };
            let message = err.to_string();
            let name = format!("{section}.{key}");
            let Some((_, said)) = message.split_once(&name) else {
                continue; // a relation another key's check names
            };
            let tried = tried.trim_matches('"');
            for bound in numbers(said) {
                if bound != tried && !stated.contains(&bound) {
                    unstated.push(format!("{name}: `{bound}` ({message})"));
                }
            }
        }
        comment.clear();
    }
    unstated.sort();
    unstated.dedup();
    assert!(
        unstated.is_empty(),
        "config/switchboard.toml does not state these bounds above their keys:\n{}",
        unstated.join("\n")
    );
}
