use std::future::poll_fn;

use tokio::io::AsyncWriteExt as _;

use super::*;

fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mut wire = vec![0x81, 0x80 | 127];
    wire.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    wire.extend_from_slice(&[0; 4]);
    wire.extend_from_slice(payload);
    wire
}

/// Over a real TCP connection: a 60 KiB message needs a 60 KiB buffer while it is read,
/// and none is kept after it.
#[tokio::test]
async fn the_read_buffer_is_given_back_after_a_large_message() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let mut socket = Socket::new(Coalesce::new(server), BytesMut::new(), 256);
    let limits = Limits {
        max_message_bytes: 64 * 1024,
        max_fragments: 4,
        inflate: false,
    };
    let large = vec![b'a'; 60 * 1024];
    client.write_all(&masked_text(&large)).await.unwrap();
    let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
    assert_eq!(
        frame,
        Inbound::Text(String::from_utf8(large).unwrap().into())
    );
    assert_eq!(socket.read_buf.capacity(), 0, "an empty buffer is freed");

    // A large message with the start of the next frame behind it: the rest moves to a
    // small buffer.
    let mut two = masked_text(&[b'b'; 50 * 1024]);
    two.extend_from_slice(&masked_text(b"next")[..5]);
    client.write_all(&two).await.unwrap();
    let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
    assert!(matches!(frame, Inbound::Text(text) if text.len() == 50 * 1024));
    assert!(
        socket.read_buf.capacity() <= 4 * 256,
        "kept {} bytes",
        socket.read_buf.capacity()
    );
    client.write_all(&masked_text(b"next")[5..]).await.unwrap();
    let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
    assert_eq!(frame, Inbound::Text("next".into()));
}

/// An idle connection, before its first frame and between frames, waits with no read
/// buffer; frames that arrive whole, in pieces or several at once are read as before.
#[tokio::test]
async fn an_idle_connection_holds_no_read_buffer() {
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let mut socket = Socket::new(Coalesce::new(near), BytesMut::with_capacity(1024), 256);
    let limits = Limits {
        max_message_bytes: 64 * 1024,
        max_fragments: 4,
        inflate: false,
    };
    let idle = |socket: &mut Socket<_>| {
        let pending = socket
            .poll_frame(&mut Context::from_waker(std::task::Waker::noop()), &limits)
            .is_pending();
        assert!(pending);
        assert_eq!(
            socket.read_buf.capacity(),
            0,
            "an idle connection holds no buffer"
        );
    };
    idle(&mut socket);

    far.write_all(&masked_text(b"one")).await.unwrap();
    let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
    assert_eq!(frame, Inbound::Text("one".into()));
    idle(&mut socket);

    // A frame in two pieces: the first piece is kept in a buffer until the rest comes.
    let two = masked_text(&[b'2'; 600]);
    far.write_all(&two[..100]).await.unwrap();
    let pending = poll_fn(|cx| Poll::Ready(socket.poll_frame(cx, &limits).is_pending())).await;
    assert!(pending);
    assert_eq!(socket.read_buf.len(), 100);
    far.write_all(&two[100..]).await.unwrap();
    let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
    assert!(matches!(frame, Inbound::Text(text) if text.len() == 600));

    // Two frames in one write, the first larger than the stack read.
    let mut both = masked_text(&[b'3'; 5000]);
    both.extend_from_slice(&masked_text(b"four"));
    far.write_all(&both).await.unwrap();
    let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
    assert!(matches!(frame, Inbound::Text(text) if text.len() == 5000));
    let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
    assert_eq!(frame, Inbound::Text("four".into()));
    idle(&mut socket);

    drop(far);
    let end = poll_fn(|cx| socket.poll_frame(cx, &limits)).await;
    assert!(matches!(end, Err(End::TransportLost)));
}

/// A header that declares 65,530 bytes and sends none of them reserves nothing for
/// them: the buffer grows with what arrives (it reserved the whole frame on the header,
/// 64 KiB per connection for 14 bytes sent).
#[tokio::test]
async fn a_declared_length_reserves_nothing_until_bytes_arrive() {
    let (near, mut far) = tokio::io::duplex(256 * 1024);
    let mut socket = Socket::new(Coalesce::new(near), BytesMut::new(), 256);
    let limits = Limits {
        max_message_bytes: 64 * 1024,
        max_fragments: 4,
        inflate: false,
    };
    let wire = masked_text(&[b'x'; 65_530]);
    far.write_all(&wire[..14]).await.unwrap();
    let pending = poll_fn(|cx| Poll::Ready(socket.poll_frame(cx, &limits).is_pending())).await;
    assert!(pending, "only a header has arrived");
    assert!(
        socket.read_buf.capacity() <= 1024,
        "{} bytes reserved for a 14-byte header",
        socket.read_buf.capacity()
    );
    far.write_all(&wire[14..30_014]).await.unwrap();
    let pending = poll_fn(|cx| Poll::Ready(socket.poll_frame(cx, &limits).is_pending())).await;
    assert!(pending, "half of the payload has arrived");
    assert!(
        socket.read_buf.capacity() <= 2 * 30_014 + 256,
        "{} bytes reserved for 30,014 received",
        socket.read_buf.capacity()
    );
    far.write_all(&wire[30_014..65_000]).await.unwrap();
    let pending = poll_fn(|cx| Poll::Ready(socket.poll_frame(cx, &limits).is_pending())).await;
    assert!(pending, "most of the payload has arrived");
    assert!(
        socket.read_buf.capacity() <= wire.len() + 256,
        "{} bytes reserved for a {}-byte frame",
        socket.read_buf.capacity(),
        wire.len()
    );
    far.write_all(&wire[65_000..]).await.unwrap();
    let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
    assert!(matches!(frame, Inbound::Text(text) if text.len() == 65_530));
}

#[tokio::test]
async fn only_the_newest_ping_is_owed_a_pong() {
    let (near, _far) = tokio::io::duplex(64);
    let mut socket = Socket::new(Coalesce::new(near), BytesMut::new(), 256);
    for n in 0..1000_u32 {
        socket.owe_pong(&n.to_be_bytes());
    }
    assert_eq!(
        &socket.take_pong().unwrap()[..],
        &[0x8A, 4, 0, 0, 0x03, 0xe7]
    );
    assert!(!socket.owes_pong());
}
