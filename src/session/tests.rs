use super::*;

#[test]
fn the_fuzzed_read_path_reads_a_whole_session() {
    let mut input = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    // RFC 6455 5.7: "Hello", masked, then a ping.
    input.extend_from_slice(&[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58, 0x89, 0x80, 0, 0, 0, 0,
    ]);
    for chunk in [1, 3, 7, 4096] {
        assert_eq!(fuzz_read_path(&input, chunk), 2, "chunk {chunk}");
    }
    assert_eq!(fuzz_read_path(b"garbage", 1), 0);
}

#[tokio::test]
async fn session_task_states_stay_small() {
    use crate::{
        cluster::LocalBus,
        hub::{Hub, HubSettings},
    };
    let hub = Hub::new(HubSettings {
        shards: 2,
        max_connections: 10,
        max_pending_upgrades: 1024,
        max_pending_upgrades_per_ip: 1024,
        queue_messages: 64,
        queue_bytes: 1 << 20,
        history_size: 10,
        history_ttl: Duration::from_secs(60),
        history_max_bytes: 1 << 20,
        remote: false,
    });
    let ctx = Arc::new(SessionContext {
        bus: Arc::new(LocalBus::new(Arc::clone(&hub), Arc::from("n"))),
        hub: Arc::clone(&hub),
        node_id: Arc::from("n"),
        settings: SessionSettings {
            ws_path: "/ws".into(),
            origins: Origins::default(),
            heartbeat: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            ipv6_source_prefix: 64,
            client_publish: true,
            max_channel_name_bytes: 64,
            max_publish_payload_bytes: 1024,
            max_subscriptions: 8,
            max_inbound_message_bytes: 4096,
            max_fragments: 8,
            fragment_timeout: Duration::from_secs(1),
            max_upgrade_request_bytes: 4096,
            read_buffer_bytes: 1024,
            history_size: 10,
            echo_path: String::new(),
            demo: false,
            history_reply_bytes: 64 << 10,
            client_quota: Quota::new(100, 100),
            control_quota: Quota::new(10, 10),
            throttled_close_after: Duration::from_secs(1),
            auth_required: false,
            token_query: true,
            auth_timeout: Duration::from_secs(1),
            namespaces: Namespaces::default(),
        },
        connect_limiter: None,
        auth: None,
        presence: crate::presence::Presence::start(
            crate::presence::PresenceSettings {
                node: Arc::from("n"),
                coalesce: Duration::ZERO,
                max_listed: 10,
                ttl: Duration::from_secs(30),
                namespaces: Namespaces::default(),
            },
            Arc::new(LocalBus::new(Arc::clone(&hub), Arc::from("n"))),
            None,
            &crate::shutdown::TaskGroup::new(),
            &tokio_util::sync::CancellationToken::new(),
        ),
    });
    // The accept loop spawns `serve_tcp`: that future is the session task's state.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let serve = serve_tcp(tcp, Arc::clone(&ctx));
    let socket = || {
        Socket::new(
            Coalesce::new(tokio::io::duplex(64).0),
            bytes::BytesMut::new(),
            256,
        )
    };
    let mut read_socket = socket();
    let outbound = hub.register(None);
    let mut session = run_loop::Session::new(Arc::clone(&ctx), outbound);
    let read = session.run(&mut read_socket);
    // Each connection holds these task states for its whole life; a regression here
    // multiplies by a million sockets. Bounds leave about 25% headroom.
    let run_size = std::mem::size_of_val(&run(socket(), Arc::clone(&ctx), None, None, None));
    let sizes = [
        ("serve", std::mem::size_of_val(&serve), 150),
        ("run", run_size, 550),
        ("session loop", std::mem::size_of_val(&read), 150),
    ];
    fn size_of_output<A, B, C, D, E, F, Fut>(_: fn(A, B, C, D, E, F) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }
    // The TLS path boxes its stream (a rustls connection is 1.2 KB) so that each future
    // holding it keeps a pointer; inline, the upgrade's future alone was 2.5 KB.
    type Tls = crate::tls::ServerTls;
    let tls_upgrade = size_of_output(serve_upgrade::<Box<Tls>>);
    assert!(
        tls_upgrade <= 160,
        "the TLS upgrade future grew to {tls_upgrade} bytes"
    );
    for (name, size, bound) in sizes {
        println!("{name}: {size} bytes");
        assert!(
            size <= bound,
            "the {name} future grew to {size} bytes (bound {bound})"
        );
    }
}

#[test]
fn every_end_but_transport_loss_sends_a_close_code() {
    assert_eq!(End::TransportLost.close_code(), None);
    assert_eq!(
        End::Requested(CloseCode::IdleTimeout).close_code(),
        Some(CloseCode::IdleTimeout)
    );
    assert_eq!(
        End::ClientClosed(Some(4000)).close_code(),
        Some(CloseCode::Normal)
    );
    assert_eq!(End::TooBig.close_code().map(CloseCode::code), Some(1009));
    assert_eq!(
        End::BinaryFrame.close_code().map(CloseCode::code),
        Some(1003)
    );
    for end in [End::TooManyFragments, End::FragmentTimeout, End::Flooding] {
        assert_eq!(end.close_code().map(CloseCode::code), Some(1008));
    }
    // A client's close is answered with its own code.
    assert_eq!(
        &End::ClientClosed(Some(4000)).close_frame().unwrap()[..],
        &[0x88, 2, 0x0f, 0xa0]
    );
    assert_eq!(
        &End::ClientClosed(None).close_frame().unwrap()[..],
        &[0x88, 0]
    );
}
