use std::future::poll_fn;

use futures_util::FutureExt as _;
use tokio::io::AsyncReadExt as _;

use super::*;

#[tokio::test]
async fn pushes_wait_for_the_write_out_in_order_and_nothing_is_kept() {
    let (near, mut far) = tokio::io::duplex(1 << 20);
    let mut stream = Coalesce::new(near);
    for part in ["one ", "two ", "three"] {
        stream.push(Bytes::from_static(part.as_bytes()));
    }
    let mut got = [0_u8; 13];
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut got))
            .await
            .is_err(),
        "nothing reaches the socket before the write-out"
    );
    poll_fn(|cx| stream.poll_write_out(cx)).await.unwrap();
    far.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"one two three");
    assert_eq!(
        stream.pending.capacity(),
        0,
        "an idle connection keeps no queue"
    );
    assert_eq!(stream.unwritten, 0);
}

#[tokio::test]
async fn a_full_socket_keeps_the_rest_until_it_takes_more() {
    let (near, mut far) = tokio::io::duplex(1024);
    let mut stream = Coalesce::new(near);
    let chunk = Bytes::from(vec![7_u8; 16 * 1024]);
    while stream.has_room() {
        stream.push(chunk.clone());
    }
    assert_eq!(stream.unwritten, HIGH_WATER);
    assert!(
        poll_fn(|cx| stream.poll_write_out(cx))
            .now_or_never()
            .is_none(),
        "the socket took everything"
    );
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        far.read_to_end(&mut all).await.unwrap();
        all
    });
    poll_fn(|cx| stream.poll_write_out(cx)).await.unwrap();
    poll_fn(|cx| stream.poll_shutdown(cx)).await.unwrap();
    drop(stream);
    let all = reader.await.unwrap();
    assert_eq!(all.len(), HIGH_WATER);
    assert!(all.iter().all(|&byte| byte == 7));
}
