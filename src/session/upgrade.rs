//! The HTTP side of a connection before it is a WebSocket: reading the upgrade request with a
//! size limit, checking it (RFC 6455 section 4.2.1), and answering 101, or a status saying
//! what was wrong (400, 404, 405, 426 with `Sec-WebSocket-Version: 13`, 429, 431, 503), and
//! the caps on connections that have not finished upgrading, in total and per address.
//!
//! Sockets that have not upgraded hold a `hub::PendingSlot`, not an admission slot: silent
//! TCP connections cannot make a node refuse real clients, and one address cannot hold more
//! than `limits.max_pending_upgrades_per_ip` of them.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::protocol::deflate::{self, Deflate};

/// Headers an upgrade request may carry, at most.
const MAX_HEADERS: usize = 64;

/// Why an upgrade was refused: the status, the reason label for metrics, the body, and the
/// seconds for `Retry-After` when trying again later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub message: &'static str,
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub(super) const fn new(status: u16, reason: &'static str, message: &'static str) -> Self {
        Self {
            status,
            reason,
            message,
            retry_after: None,
        }
    }

    const fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Too many connections are upgrading, on the node or from this address (`reason`).
    pub(super) const fn pending(reason: &'static str) -> Self {
        Self::new(503, reason, "too many connections are upgrading").retry_after(1)
    }
}

pub(super) const IP_RATE_LIMITED: Refusal = Refusal::new(
    429,
    "ip_rate_limited",
    "too many new connections from this address",
)
.retry_after(1);
pub(super) const MEMORY_PRESSURE: Refusal = Refusal::new(
    503,
    "memory_pressure",
    "the server is low on memory; try another node or later",
)
.retry_after(10);
pub(super) const OVERLOADED: Refusal = Refusal::new(
    503,
    "overloaded",
    "the server is behind on its work; try another node or later",
)
.retry_after(2);
pub(super) const ORIGIN_NOT_ALLOWED: Refusal = Refusal::new(
    403,
    "origin_not_allowed",
    "this page's origin may not open a WebSocket here (server.allowed_origins)",
);
pub(super) const DRAINING: Refusal = Refusal::new(
    503,
    "draining",
    "this node is draining; connect to another node",
)
.retry_after(1);
pub(super) const MAX_CONNECTIONS: Refusal =
    Refusal::new(503, "max_connections", "connection limit reached").retry_after(5);

/// An upgrade request that passed the checks.
#[derive(Debug)]
pub(super) struct Request {
    /// The path, without the query.
    pub path: String,
    /// `Sec-WebSocket-Accept` for the answer.
    pub accept: String,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<Vec<u8>>,
    /// The `Host` header.
    pub host: Vec<u8>,
    /// A token from `Authorization: Bearer`.
    pub bearer_token: Option<String>,
    /// A token from the `token` query parameter.
    pub query_token: Option<String>,
    /// The request's head as read, for what the connect hook is sent ([`hook_inputs`]).
    pub head: bytes::Bytes,
    /// The client's first acceptable permessage-deflate offer (`Sec-WebSocket-Extensions`),
    /// if any; taken only when `[compression]` is on.
    pub deflate: Option<Deflate>,
}

/// Why no upgrade request was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotRead {
    /// Answer with this.
    Refuse(Refusal),
    /// Not an upgrade but one of the demo's static files (`demo.enabled`): answer with it.
    Page(&'static crate::demo::Page),
    /// The stream ended or failed first.
    Ended,
    /// Nothing arrived within the first-byte deadline (`session.first_byte_timeout`).
    Silent,
}

/// Reads the request head (up to `max_bytes`; its first byte within `first_byte`, when
/// given: the fuzz target runs without a timer) and checks
/// it as an upgrade to `paths`. Returns the request and whatever bytes followed the head
/// (pipelined frames).
///
/// The head is parsed once, when its end has arrived: bytes are scanned for the blank line
/// as they come, each once, so a head sent a byte per packet costs its length, not its
/// length squared (re-parsed from its start on every read, 50 heads of 15 KB sent that way
/// cost 2.9 s of CPU).
///
/// # Errors
/// [`NotRead`]: the refusal to answer with, or why there is nothing to answer.
pub(super) async fn read_request<S>(
    stream: &mut S,
    max_bytes: usize,
    first_byte: Option<std::time::Duration>,
    paths: &[&str],
    demo: bool,
) -> Result<(Request, BytesMut), NotRead>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::new();
    // Where the search for the head's end goes on: no end starts before it.
    let mut searched = 0;
    loop {
        if buf.len() >= max_bytes {
            return Err(NotRead::Refuse(Refusal::new(
                431,
                "request_too_large",
                "request header fields too large",
            )));
        }
        buf.reserve(1024.min(max_bytes - buf.len()));
        let limit = max_bytes - buf.len();
        let first = buf.is_empty();
        let mut limited = (&mut *stream).take(limit as u64);
        let read = limited.read_buf(&mut buf);
        let read = if let Some(first_byte) = first_byte.filter(|_| first) {
            tokio::time::timeout(first_byte, read)
                .await
                .map_err(|_| NotRead::Silent)?
        } else {
            read.await
        };
        match read {
            Ok(0) | Err(_) => return Err(NotRead::Ended),
            Ok(_) => {}
        }
        let Some(end) = head_end(&buf, searched) else {
            // The last bytes may be the start of the blank line.
            searched = buf.len().saturating_sub(2);
            continue;
        };
        searched = end;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                if demo && let Some(page) = demo_page(&parsed) {
                    return Err(NotRead::Page(page));
                }
                let mut request = check(&parsed, paths).map_err(NotRead::Refuse)?;
                request.head = buf.split_to(head_len).freeze();
                return Ok((request, buf));
            }
            // A blank line httparse does not take as the end (inside a header): read on.
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(NotRead::Refuse(Refusal::new(
                    431,
                    "request_too_large",
                    "too many header fields",
                )));
            }
            Err(_) => {
                return Err(NotRead::Refuse(Refusal::new(
                    400,
                    "bad_request",
                    "malformed HTTP request",
                )));
            }
        }
    }
}

/// Where the first blank line that ends a head (`\n\n` or `\n\r\n`, as httparse accepts)
/// ends, searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(offset) = buf.get(at..)?.iter().position(|&byte| byte == b'\n') {
        let newline = at + offset;
        match buf.get(newline + 1..newline + 3) {
            Some([b'\n', _]) => return Some(newline + 2),
            Some([b'\r', b'\n']) => return Some(newline + 3),
            None if buf.get(newline + 1) == Some(&b'\n') => return Some(newline + 2),
            _ => {}
        }
        at = newline + 1;
    }
    None
}

/// Whether the comma-separated `header` values contain `token` (case-insensitive).
fn has_token(request: &httparse::Request<'_, '_>, name: &str, token: &str) -> bool {
    request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case(name))
        .flat_map(|header| header.value.split(|&byte| byte == b','))
        .any(|value| value.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn count(request: &httparse::Request<'_, '_>, name: &str) -> usize {
    request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case(name))
        .count()
}

fn header<'a>(request: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a [u8]> {
    request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

/// The demo's file a plain `GET` asks for, if any.
fn demo_page(request: &httparse::Request<'_, '_>) -> Option<&'static crate::demo::Page> {
    if request.method != Some("GET") {
        return None;
    }
    let target = request.path.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    crate::demo::page(path)
}

fn check(request: &httparse::Request<'_, '_>, paths: &[&str]) -> Result<Request, Refusal> {
    let target = request.path.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if !paths.contains(&path) {
        return Err(Refusal::new(404, "not_found", "not found"));
    }
    if request.method != Some("GET") {
        return Err(Refusal::new(
            405,
            "method_not_allowed",
            "a WebSocket upgrade is a GET request",
        ));
    }
    if request.version != Some(1) {
        return Err(Refusal::new(
            400,
            "bad_request",
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    let Some(host) = header(request, "host") else {
        return Err(Refusal::new(400, "bad_request", "missing Host header"));
    };
    // Two answers to "which site?" (RFC 9110 section 7.2; RFC 6454 section 7.3): a
    // check of one could be passed while something downstream reads the other.
    if count(request, "host") > 1 || count(request, "origin") > 1 {
        return Err(Refusal::new(
            400,
            "bad_request",
            "more than one Host or Origin header",
        ));
    }
    if !has_token(request, "upgrade", "websocket") || !has_token(request, "connection", "upgrade") {
        return Err(Refusal::new(
            426,
            "upgrade_required",
            "this endpoint only speaks WebSocket: send Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if header(request, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Refusal::new(
            426,
            "unsupported_version",
            "only WebSocket version 13 is supported",
        ));
    }
    let key = header(request, "sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .filter(|key| is_valid_key(key))
        .ok_or(Refusal::new(
            400,
            "bad_request",
            "missing or invalid Sec-WebSocket-Key",
        ))?;
    Ok(Request {
        path: path.to_owned(),
        accept: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key),
        origin: header(request, "origin").map(<[u8]>::to_vec),
        host: host.trim_ascii().to_vec(),
        bearer_token: header(request, "authorization")
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            }),
        // A JWT is base64url and dots: nothing in it needs percent-decoding.
        query_token: target
            .split_once('?')
            .and_then(|(_, query)| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("token="))
            })
            .map(str::to_owned),
        head: bytes::Bytes::new(),
        deflate: deflate::negotiate(
            request
                .headers
                .iter()
                .filter(|header| header.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|header| header.value),
        ),
    })
}

/// Headers of an upgrade request passed to the connect hook: those named in `forward`
/// (case-insensitive; several of one name joined with `, `, cookies with `; `, values not
/// UTF-8 read lossily),
/// as named there.
pub(super) type Forwarded = Vec<(String, String)>;

/// The query parameters a connect hook may read, at most.
const MAX_QUERY_PARAMS: usize = 64;

/// What the connect hook is sent of an upgrade request (`head`, as [`read_request`] kept
/// it): the headers named in `forward` and the decoded query parameters (at most 64).
pub(super) fn hook_inputs(head: &[u8], forward: &[String]) -> (Forwarded, Forwarded) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(_))) {
        return (Vec::new(), Vec::new());
    }
    let mut forwarded = Vec::new();
    for name in forward {
        let values: Vec<std::borrow::Cow<'_, str>> = parsed
            .headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| String::from_utf8_lossy(header.value))
            .collect();
        if !values.is_empty() {
            // Cookies are joined as one `Cookie` header holds them (RFC 6265 section 5.4).
            let separator = if name.eq_ignore_ascii_case("cookie") {
                "; "
            } else {
                ", "
            };
            forwarded.push((name.clone(), values.join(separator)));
        }
    }
    let query = parsed
        .path
        .and_then(|target| target.split_once('?'))
        .map(|(_, query)| {
            form_urlencoded::parse(query.as_bytes())
                .take(MAX_QUERY_PARAMS)
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    (forwarded, query)
}

/// A key is 16 bytes in base64: 22 characters of the alphabet and `==` (section 4.1).
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
}

/// Answers the upgrade with 101, with permessage-deflate when `deflate` is what was
/// negotiated.
pub(super) async fn accept<S: AsyncWrite + Unpin>(
    stream: &mut S,
    request: &Request,
    deflate: Option<Deflate>,
) -> std::io::Result<()> {
    let extensions = deflate.map_or_else(String::new, |deflate| {
        format!("Sec-WebSocket-Extensions: {}\r\n", deflate.response())
    });
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{extensions}\r\n",
        request.accept
    );
    stream.write_all(response.as_bytes()).await
}

/// How long answering a refusal may take: a client that does not read it is dropped.
const REFUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers with `refusal`, counts it, and closes the connection, within [`REFUSE_TIMEOUT`]
/// (the caller may hold a pending-upgrade slot meanwhile).
pub(super) async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, refusal: Refusal) {
    crate::telemetry::connection_rejected(refusal.reason);
    let status_text = match refusal.status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut extra = String::new();
    match refusal.status {
        405 => extra.push_str("Allow: GET\r\n"),
        426 => extra.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"),
        _ => {}
    }
    if let Some(seconds) = refusal.retry_after {
        extra.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    let head = format!(
        "{} {status_text}\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}",
        refusal.status
    );
    answer(stream, &head, refusal.message).await;
}

/// Answers with one of the demo's static files (`demo.enabled`) and closes.
pub(super) async fn serve_page<S: AsyncWrite + Unpin>(stream: &mut S, page: &crate::demo::Page) {
    let head = format!(
        "200 OK\r\nContent-Type: {}\r\nCache-Control: no-cache\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'self'; \
         connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'\r\n",
        page.content_type
    );
    answer(stream, &head, page.body).await;
}

/// Writes `HTTP/1.1 ` + `head` (the status line's rest and the headers, each line ending in
/// CRLF), the length, `Connection: close` and `body` with a newline, then closes; within
/// `REFUSE_TIMEOUT`, so a client that does not read cannot hold the task.
async fn answer<S: AsyncWrite + Unpin>(stream: &mut S, head: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    );
    let answer = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, answer).await;
}

#[cfg(test)]
mod tests;
