use super::*;

const SECOND: Option<std::time::Duration> = Some(std::time::Duration::from_secs(1));

async fn parse(head: &str) -> Result<(Request, BytesMut), NotRead> {
    read_request(&mut head.as_bytes(), 8192, SECOND, &["/ws", "/echo"], false).await
}

fn refusal(read: Result<(Request, BytesMut), NotRead>) -> Refusal {
    match read {
        Err(NotRead::Refuse(refusal)) => refusal,
        other => panic!("not a refusal: {other:?}"),
    }
}

#[tokio::test]
async fn the_demo_is_served_only_when_enabled() {
    let head = "GET /demo HTTP/1.1\r\nHost: a\r\n\r\n";
    let off = read_request(&mut head.as_bytes(), 8192, SECOND, &["/ws"], false).await;
    assert_eq!(refusal(off).status, 404);
    let on = read_request(&mut head.as_bytes(), 8192, SECOND, &["/ws"], true).await;
    match on {
        Err(NotRead::Page(page)) => assert_eq!(page.content_type, "text/html; charset=utf-8"),
        other => panic!("not the demo page: {other:?}"),
    }
    let post = "POST /demo HTTP/1.1\r\nHost: a\r\n\r\n";
    let refused = read_request(&mut post.as_bytes(), 8192, SECOND, &["/ws"], true).await;
    assert_eq!(refusal(refused).status, 404);
}

const GOOD: &str = "GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n\
    Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn a_valid_upgrade_is_accepted_with_the_rfc_accept_key() {
    let (request, rest) = parse(&format!("{GOOD}\u{81}")).await.unwrap();
    assert_eq!(request.path, "/ws");
    // RFC 6455 section 1.3's example.
    assert_eq!(request.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(&rest[..], "\u{81}".as_bytes());
}

#[tokio::test]
async fn malformed_upgrades_get_the_status_that_says_why() {
    let cases = [
        (GOOD.replace("/ws?x=1", "/nope"), 404),
        (GOOD.replace("GET", "POST"), 405),
        (GOOD.replace("HTTP/1.1", "HTTP/1.0"), 400),
        (GOOD.replace("Host: a\r\n", ""), 400),
        (GOOD.replace("Upgrade: WebSocket\r\n", ""), 426),
        (GOOD.replace("keep-alive, Upgrade", "keep-alive"), 426),
        (GOOD.replace("Version: 13", "Version: 8"), 426),
        (
            GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
        ),
        (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
        (GOOD.replace("Host: a\r\n", "Host: a\r\nHost: b\r\n"), 400),
        (
            GOOD.replace(
                "Host: a\r\n",
                "Host: a\r\nOrigin: http://a\r\norigin: https://evil.example\r\n",
            ),
            400,
        ),
        ("GET /ws HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(), 426),
        ("\u{1}\u{2} garbage\r\n\r\n".to_owned(), 400),
    ];
    for (head, status) in cases {
        assert_eq!(refusal(parse(&head).await).status, status, "{head}");
    }
    let huge = format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(refusal(parse(&huge).await).status, 431);
    let many = format!("GET /ws HTTP/1.1\r\n{}\r\n", "X: a\r\n".repeat(70));
    assert_eq!(refusal(parse(&many).await).status, 431);
    assert_eq!(
        parse("GET /ws HTTP/1.1\r\n").await.unwrap_err(),
        NotRead::Ended
    );
}

#[test]
fn the_end_of_a_head_is_found_wherever_reads_split_it() {
    let head = GOOD.as_bytes();
    for split in 0..head.len() {
        let mut searched = 0;
        let mut found = None;
        for end in [split, head.len()] {
            if found.is_none() {
                found = head_end(&head[..end], searched);
                searched = end.saturating_sub(2);
            }
        }
        assert_eq!(found, Some(head.len()), "split at {split}");
    }
    assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
}

/// A head sent a byte per read is scanned once, and one that sends nothing is silent.
#[tokio::test]
async fn a_trickled_head_is_read_and_a_silent_one_times_out() {
    let (mut near, mut far) = tokio::io::duplex(64);
    let reading =
        tokio::spawn(async move { read_request(&mut near, 8192, SECOND, &["/ws"], false).await });
    for byte in GOOD.as_bytes() {
        far.write_all(&[*byte]).await.unwrap();
    }
    let (request, _) = reading.await.unwrap().unwrap();
    assert_eq!(request.path, "/ws");

    let (mut near, _far) = tokio::io::duplex(64);
    let quiet = Some(std::time::Duration::from_millis(50));
    let read = read_request(&mut near, 8192, quiet, &["/ws"], false).await;
    assert_eq!(read.unwrap_err(), NotRead::Silent);
}
