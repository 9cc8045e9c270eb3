//! The TLS stream on real loopback sockets against a rustls client: what it holds at rest,
//! and its error paths (a peer that is not TLS, one that leaves mid-handshake, a record
//! over the protocol's limit, a record that does not decrypt, an end of file with and
//! without close_notify).

use std::sync::Arc;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{self, RootCertStore, pki_types::ServerName},
};

use super::{MAX_RECORD, ServerTls};

struct Pair {
    server_config: Arc<rustls::ServerConfig>,
    client_config: Arc<rustls::ClientConfig>,
    listener: TcpListener,
}

impl Pair {
    async fn new() -> Pair {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pair {
            server_config: Arc::new(server_config),
            client_config: Arc::new(client_config),
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    /// A raw TCP client and the server's side of it, before any TLS.
    async fn tcp(&self) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(self.listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = self.listener.accept().await.unwrap();
        (client, server)
    }

    /// A TLS client and the server's stream, both past the handshake.
    async fn established(&self) -> (TlsStream<TcpStream>, ServerTls) {
        let (client, server) = self.tcp().await;
        let connector = TlsConnector::from(Arc::clone(&self.client_config));
        let (client, server) = tokio::join!(
            connector.connect(ServerName::try_from("localhost").unwrap(), client),
            ServerTls::accept(server, Arc::clone(&self.server_config)),
        );
        (client.unwrap(), server.unwrap())
    }
}

/// Reads what the peer sends until it closes (or 2 s pass).
async fn read_all(socket: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        socket.read_to_end(&mut all),
    )
    .await;
    all
}

#[tokio::test]
async fn a_connection_at_rest_holds_no_buffer() {
    let pair = Pair::new().await;
    let (mut client, mut server) = pair.established().await;
    client.write_all(b"hello").await.unwrap();
    client.flush().await.unwrap();
    let mut got = [0; 5];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    server.write_all(b"world").await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"world");
    assert_eq!(
        (
            server.incoming.capacity(),
            server.plain.capacity(),
            server.outgoing.capacity()
        ),
        (0, 0, 0),
        "{server:?}"
    );
}

#[tokio::test]
async fn a_peer_that_is_not_tls_fails_the_handshake_and_is_told_why() {
    let pair = Pair::new().await;
    let (mut client, server) = pair.tcp().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let err = ServerTls::accept(server, Arc::clone(&pair.server_config))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    // An alert record (content type 21) went out before the socket closed.
    let answer = read_all(&mut client).await;
    assert_eq!(answer.first(), Some(&21), "{answer:?}");
}

#[tokio::test]
async fn a_peer_that_leaves_during_the_handshake_is_an_unexpected_end() {
    let pair = Pair::new().await;
    let (mut client, server) = pair.tcp().await;
    // The first bytes of a ClientHello record, then the end of the stream.
    client.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
    client.shutdown().await.unwrap();
    let err = ServerTls::accept(server, Arc::clone(&pair.server_config))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

#[tokio::test]
async fn a_record_over_the_protocols_limit_is_refused_without_being_held() {
    let pair = Pair::new().await;
    let (mut client, mut server) = pair.established().await;
    // An application-data record header announcing 65,535 bytes (TLS allows 2^14 + 256),
    // and the bytes, raw on the socket under the client's TLS.
    let mut record = vec![23, 3, 3, 0xff, 0xff];
    record.resize(5 + 0xffff, 7);
    let (tcp, _) = client.get_mut();
    tcp.write_all(&record).await.unwrap();
    let mut buf = [0; 16];
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(server.incoming_len <= MAX_RECORD, "{server:?}");
}

#[tokio::test]
async fn a_record_that_does_not_decrypt_is_an_error_and_the_peer_is_told() {
    let pair = Pair::new().await;
    let (mut client, mut server) = pair.established().await;
    let mut record = vec![23, 3, 3, 0, 100];
    record.resize(5 + 100, 0x5a);
    let (tcp, _) = client.get_mut();
    tcp.write_all(&record).await.unwrap();
    let mut buf = [0; 16];
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    drop(server);
    // The alert is encrypted under TLS 1.3 (content type 23 outside): what the client's
    // TLS reads is the alert itself.
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest).await;
    assert!(read.is_err(), "the client is told: {read:?}");
}

#[tokio::test]
async fn an_end_of_file_without_close_notify_reads_as_closed() {
    let pair = Pair::new().await;
    let (mut client, mut server) = pair.established().await;
    let (tcp, _) = client.get_mut();
    tcp.shutdown().await.unwrap();
    let mut buf = [0; 16];
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    assert_eq!(server.read(&mut buf).await.unwrap(), 0, "and stays closed");
}

#[tokio::test]
async fn close_notify_reads_as_closed_and_the_server_may_still_answer() {
    let pair = Pair::new().await;
    let (mut client, mut server) = pair.established().await;
    client.write_all(b"last").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last");
    server.write_all(b"bye").await.unwrap();
    server.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"bye");
}
