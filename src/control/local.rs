//! One request to this machine's node over its control API, for `switchboard probe` (a
//! container's health check) and `switchboard drain` (a preStop hook): blocking, bounded in
//! time and size, no runtime.
//!
//! The address is `control.listen`'s: its own IP when it names one (a private address in
//! the production layout), loopback when it is unspecified (`0.0.0.0`, `::`). With
//! `[control.tls]` on, it speaks HTTPS and trusts exactly the configured certificate (its
//! first, the leaf): the node it talks to is the one holding that certificate's key,
//! whatever names the certificate was made for.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};

use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(3);
/// The most of an answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// An answer: its status and body.
#[derive(Debug)]
pub struct LocalAnswer {
    pub status: u16,
    pub body: String,
}

/// Where `config`'s control API is reached from this machine.
#[must_use]
pub fn local_addr(config: &Config) -> SocketAddr {
    let listen = config.control.listen;
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Sends `method path` with the first of `control.api_keys`, and reads the answer.
///
/// # Errors
/// What went wrong, in words (connecting, the TLS handshake, reading).
pub fn request(config: &Config, method: &str, path: &str) -> Result<LocalAnswer, String> {
    let addr = local_addr(config);
    let scheme = if config.control.tls.is_set() {
        "https"
    } else {
        "http"
    };
    let fail = |err: &dyn std::fmt::Display| format!("{method} {scheme}://{addr}{path}: {err}");
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|err| fail(&err))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|err| fail(&err))?;
    let auth = config
        .control
        .api_keys
        .first()
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let mut answer = String::new();
    if config.control.tls.is_set() {
        let pinned = pinned_certificate(&config.control.tls.cert_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| fail(&err))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pinned, provider }))
            .with_no_client_auth();
        let name = ServerName::IpAddress(addr.ip().into());
        let connection =
            rustls::ClientConnection::new(Arc::new(client), name).map_err(|err| fail(&err))?;
        let mut tls = rustls::StreamOwned::new(connection, stream);
        tls.write_all(head.as_bytes()).map_err(|err| fail(&err))?;
        read_answer(&mut tls, &mut answer).map_err(|err| fail(&err))?;
    } else {
        let mut stream = stream;
        stream
            .write_all(head.as_bytes())
            .map_err(|err| fail(&err))?;
        read_answer(&mut stream, &mut answer).map_err(|err| fail(&err))?;
    }
    let status = answer
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim_end().to_owned())
        .unwrap_or_default();
    Ok(LocalAnswer { status, body })
}

/// Reads to the end (the node closes after answering), at most `MAX_ANSWER` bytes. A TLS
/// peer that closes without `close_notify` ends the answer too.
fn read_answer(stream: &mut impl std::io::Read, answer: &mut String) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    match stream.take(MAX_ANSWER).read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {}
        Err(err) => return Err(err),
    }
    *answer = String::from_utf8_lossy(&bytes).into_owned();
    Ok(())
}

fn pinned_certificate(path: &str) -> Result<CertificateDer<'static>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("control.tls.cert_file {path}: {err}"))?
        .next()
        .ok_or_else(|| format!("control.tls.cert_file {path} holds no certificate"))?
        .map_err(|err| format!("control.tls.cert_file {path}: {err}"))
}

/// Trusts exactly one certificate: the node's own, from its configuration.
#[derive(Debug)]
struct Pinned {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the control API's certificate is not control.tls.cert_file's".to_owned(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
