use super::*;

use crate::{
    auth::Namespaces,
    cluster::{ApplyError, BusError, BusFuture, LocalBus},
    config::{NamespaceConfig, Rule},
    hub::{
        Applied, Editor, HistoryPage, Hub, HubSettings, Op, RemoteView, SessionCommand, WriteBatch,
    },
    protocol::{ChannelName, Offset},
    throttle::Quota,
};

fn test_hub() -> HubHandle {
    Hub::new(HubSettings {
        shards: 2,
        max_connections: 10,
        queue_messages: 64,
        queue_bytes: 1 << 20,
        history_size: 10,
        history_ttl: Duration::from_secs(60),
        history_max_bytes: 1 << 20,
        ..HubSettings::default()
    })
}

fn anyone() -> Namespaces {
    Namespaces::new(&[NamespaceConfig {
        pattern: "*".to_owned(),
        subscribe: Rule::Anonymous,
        publish: Rule::Anonymous,
        history: Rule::Anonymous,
        presence: Rule::None,
        join_leave: false,
        edit: crate::config::EditRule::Own,
        history_size: None,
        history_ttl: None,
        slow_consumer: crate::config::SlowConsumer::Disconnect,
        conflate_key: None,
        queue_bytes: None,
    }])
}

/// A session context on `hub`, through `bus`, where anyone may subscribe and publish.
fn test_context(hub: &HubHandle, bus: Arc<dyn Bus>) -> Arc<SessionContext> {
    Arc::new(SessionContext {
        bus,
        hub: Arc::clone(hub),
        node_id: Arc::from("n"),
        settings: SessionSettings {
            ws_path: "/ws".into(),
            compression: None,
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
            publish_byte_quota: None,
            throttled_close_after: Duration::from_secs(1),
            auth_required: false,
            token_query: true,
            auth_timeout: Duration::from_secs(1),
            namespaces: anyone(),
            user_limit: None,
        },
        connect_limiter: None,
        channel_budget: None,
        auth: None,
        hooks: None,
        webhooks: None,
        publish_rates: None,
        occupancy: None,
        presence: crate::presence::Presence::start(
            crate::presence::PresenceSettings {
                node: Arc::from("n"),
                coalesce: Duration::ZERO,
                max_listed: 10,
                ttl: Duration::from_secs(30),
                namespaces: Namespaces::default(),
                watch: None,
            },
            Arc::new(LocalBus::new(
                Arc::clone(hub),
                Arc::from("n"),
                crate::cluster::NodeInfo::unbound(),
            )),
            None,
            &crate::shutdown::TaskGroup::new(),
            &tokio_util::sync::CancellationToken::new(),
        ),
    })
}

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
    let hub = test_hub();
    let ctx = test_context(
        &hub,
        Arc::new(LocalBus::new(
            Arc::clone(&hub),
            Arc::from("n"),
            crate::cluster::NodeInfo::unbound(),
        )),
    );
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
    let run_size = std::mem::size_of_val(&run(socket(), Arc::clone(&ctx), None, None, None, None));
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
    let tls_upgrade = size_of_output(accept::serve_upgrade::<Box<Tls>>);
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

/// The embedded bus, except that a publish to `boom` panics: a bug in a handler.
#[derive(Debug)]
struct PanickingBus(LocalBus);

impl Bus for PanickingBus {
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: &'a str,
        writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Offset, BusError>> {
        assert!(channel.as_str() != "boom", "a bug in a handler");
        self.0.publish(channel, data, writes)
    }
    fn apply<'a>(
        &'a self,
        channel: &'a ChannelName,
        op: Op<'a>,
        editor: &'a Editor,
        writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Applied, ApplyError>> {
        assert!(channel.as_str() != "boom", "a bug in a handler");
        self.0.apply(channel, op, editor, writes)
    }
    fn read_channel<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<RemoteView, BusError>> {
        self.0.read_channel(channel, since, limit)
    }
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<HistoryPage, BusError>> {
        self.0.history(channel, since, limit)
    }
    fn announce<'a>(
        &'a self,
        channel: &'a ChannelName,
        text: String,
    ) -> BusFuture<'a, Result<(), BusError>> {
        self.0.announce(channel, text)
    }
    fn command_user<'a>(
        &'a self,
        user: &'a str,
        command: SessionCommand,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        self.0.command_user(user, command)
    }
    fn disconnect_user<'a>(
        &'a self,
        user: &'a str,
        code: CloseCode,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        self.0.disconnect_user(user, code)
    }
    fn block<'a>(
        &'a self,
        user: &'a str,
        until: Option<u64>,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        self.0.block(user, until)
    }
    fn unblock<'a>(&'a self, user: &'a str) -> BusFuture<'a, Result<bool, BusError>> {
        self.0.unblock(user)
    }
    fn revoke<'a>(
        &'a self,
        revocation: &'a crate::revocations::Revocation,
    ) -> BusFuture<'a, Result<usize, crate::cluster::RevokeFailed>> {
        self.0.revoke(revocation)
    }
    fn admit_user<'a>(
        &'a self,
        user: &'a Arc<str>,
        conn_id: crate::hub::ConnId,
        limit: crate::cluster::UserLimit,
    ) -> BusFuture<'a, bool> {
        self.0.admit_user(user, conn_id, limit)
    }
    fn user_left(&self, user: &str, conn_id: crate::hub::ConnId) {
        self.0.user_left(user, conn_id);
    }
    fn take_grants<'a>(
        &'a self,
        key: &'a str,
        wanted: u32,
        interval: std::time::Duration,
        burst: u32,
    ) -> BusFuture<'a, Result<crate::cluster::Grant, BusError>> {
        self.0.take_grants(key, wanted, interval, burst)
    }
    fn unready_reasons(&self) -> Vec<String> {
        self.0.unready_reasons()
    }
    fn nodes(&self) -> BusFuture<'_, Result<Vec<crate::cluster::NodeEntry>, BusError>> {
        self.0.nodes()
    }
    fn kind(&self) -> &'static str {
        "panicking"
    }
}

/// A panic in a handler ends the session's task; the connection still leaves the hub and
/// its channels (it stayed in `hub.conns`, and every later drain waited for it), and a
/// bystander on the same channel keeps getting its messages.
#[tokio::test]
async fn a_panicking_handler_leaves_nothing_in_the_hub() {
    let hub = test_hub();
    let bus = PanickingBus(LocalBus::new(
        Arc::clone(&hub),
        Arc::from("n"),
        crate::cluster::NodeInfo::unbound(),
    ));
    let ctx = test_context(&hub, Arc::new(bus));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server_ctx = Arc::clone(&ctx);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_tcp(tcp, Arc::clone(&server_ctx)));
        }
    });
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let (mut doomed, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut bystander, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    for client in [&mut doomed, &mut bystander] {
        let subscribe = r#"{"type":"subscribe","id":1,"channel":"room"}"#;
        client.send(Message::text(subscribe)).await.unwrap();
    }
    let subscribed = |hub: &HubHandle| hub.connections() == 2;
    for _ in 0..200 {
        if subscribed(&hub) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(subscribed(&hub));
    let boom = r#"{"type":"publish","id":2,"channel":"boom","data":1}"#;
    doomed.send(Message::text(boom)).await.unwrap();
    // The task's end closes the socket (the hub held it open, through its `Wire`).
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = doomed.next().await {}
    });
    assert!(
        closed.await.is_ok(),
        "the panicked session's socket was closed"
    );
    for _ in 0..200 {
        if hub.connections() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hub.connections(), 1, "the panicked session left the hub");
    let mut writes = hub.write_batch();
    let room = ChannelName::parse("room", 64).unwrap();
    ctx.bus.publish(&room, "7", &mut writes).await.unwrap();
    drop(writes);
    loop {
        let frame = bystander.next().await.unwrap().unwrap();
        if frame.to_text().unwrap().contains(r#""type":"message""#) {
            assert!(frame.to_text().unwrap().contains(r#""data":7"#));
            break;
        }
    }
    assert_eq!(
        hub.channels("room", None, 10).0,
        vec![(room, 1)],
        "only the bystander is subscribed"
    );
}
