//! A server-side TLS stream over rustls's unbuffered API, for the WebSocket listener: it
//! holds no buffer while the connection is idle.
//!
//! `tokio-rustls` keeps rustls's buffered connection, whose read buffer is 4 KiB for the
//! connection's whole life (rustls reads in 4 KiB steps and only ever shrinks the buffer
//! back to that), plus its plaintext and record queues. Here the bytes are ours:
//!
//! - `incoming`: TLS bytes read from the socket and not yet processed. Nothing is read until
//!   the socket is readable, and the buffer is freed as soon as it holds no partial record.
//! - `plain`: decrypted bytes the session has not read yet; freed once read.
//! - `outgoing`: records waiting for the socket (handshake messages, tickets, alerts,
//!   application data); freed once written. Each write first flushes what is there, so it
//!   holds at most one write's records.
//!
//! rustls still does everything TLS: the handshake, records, key updates, alerts. An idle
//! connection costs its `UnbufferedServerConnection` (state, keys) and nothing else.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::rustls::{
    ServerConfig,
    server::UnbufferedServerConnection,
    unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus},
};

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;
/// The most `incoming` may hold: one whole record (2^14 bytes of plaintext plus the
/// largest expansion and the header, RFC 8446 section 5.2), or during the handshake a
/// handshake message rustls joins from several records (it allows 64 KiB).
const MAX_RECORD: usize = 16_384 + 2_048 + 5;
const MAX_HANDSHAKE: usize = 0xffff + 5;
/// Application bytes encrypted per write at most, so `outgoing` stays bounded.
const MAX_WRITE: usize = 64 * 1024;

/// What [`ServerTls::drive`] sends once rustls allows application data.
#[derive(Clone, Copy)]
enum Outgoing<'a> {
    /// Nothing: only process what came in.
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// What the record processing stopped on.
enum Step {
    /// Nothing more can be done without more bytes from the socket.
    NeedBytes,
    /// The peer sent close_notify.
    PeerClosed,
}

/// A TLS server connection on a TCP socket. See the module documentation.
pub struct ServerTls {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    /// Bytes of `incoming` that hold data (the rest is room for the next read).
    incoming_len: usize,
    plain: Vec<u8>,
    /// Bytes of `plain` already read by the session.
    plain_read: usize,
    outgoing: Vec<u8>,
    /// Bytes of `outgoing` already written to the socket.
    outgoing_written: usize,
    /// The peer closed: close_notify, or the socket's end of file.
    read_closed: bool,
    /// The handshake is complete (rustls would let us send application data).
    established: bool,
    /// close_notify is queued or sent.
    close_sent: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("incoming", &self.incoming_len)
            .field("plain", &(self.plain.len() - self.plain_read))
            .field("outgoing", &(self.outgoing.len() - self.outgoing_written))
            .finish_non_exhaustive()
    }
}

fn invalid(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl ServerTls {
    /// Runs the TLS handshake on `io`. The caller bounds its time.
    ///
    /// # Errors
    /// When the handshake fails (the alert, if any, has been sent) or the socket does.
    pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let mut tls = Self {
            io,
            conn: UnbufferedServerConnection::new(config).map_err(invalid)?,
            incoming: Vec::new(),
            incoming_len: 0,
            plain: Vec::new(),
            plain_read: 0,
            outgoing: Vec::new(),
            outgoing_written: 0,
            read_closed: false,
            established: false,
            close_sent: false,
        };
        std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
        Ok(tls)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = self.process();
            // Whatever the outcome, what rustls produced (its flight, or an alert) goes out.
            ready!(self.poll_flush_outgoing(cx))?;
            match step? {
                _ if self.established => return Poll::Ready(Ok(())),
                Step::PeerClosed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Step::NeedBytes => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
    }

    /// Processes every complete record in `incoming`: application data goes to `plain`,
    /// records rustls wants sent go to `outgoing`. Stops when more bytes are needed.
    fn process(&mut self) -> io::Result<Step> {
        self.drive(Outgoing::Nothing)
    }

    /// Runs rustls's state machine over `incoming` until it needs more bytes, having
    /// encrypted `send` into `outgoing` once rustls allowed it. Application data that comes
    /// in meanwhile waits in `plain`.
    fn drive(&mut self, send: Outgoing<'_>) -> io::Result<Step> {
        let sending = !matches!(send, Outgoing::Nothing);
        loop {
            let Self {
                conn,
                incoming,
                incoming_len,
                plain,
                outgoing,
                established,
                read_closed,
                ..
            } = self;
            let UnbufferedStatus { discard, state } =
                conn.process_tls_records(&mut incoming[..*incoming_len]);
            let state = match state {
                Ok(state) => state,
                Err(err) => {
                    // rustls queued an alert saying why; the next round hands it over.
                    let alert = conn.process_tls_records(&mut []);
                    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = alert.state {
                        let _ = append_records(outgoing, |buf| Ok(encode.encode(buf)?));
                    }
                    return Err(invalid(err));
                }
            };
            let step = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        plain.extend_from_slice(record.map_err(invalid)?.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append_records(outgoing, |buf| Ok(encode.encode(buf)?))?;
                    None
                }
                // The records are in `outgoing`, which goes out before anything written
                // later: as good as transmitted for rustls.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    *established = true;
                    match send {
                        Outgoing::Nothing => Some(Step::NeedBytes),
                        Outgoing::Data(data) => {
                            append_records(outgoing, |buf| Ok(traffic.encrypt(data, buf)?))?;
                            Some(Step::NeedBytes)
                        }
                        Outgoing::CloseNotify => {
                            append_records(outgoing, |buf| Ok(traffic.queue_close_notify(buf)?))?;
                            Some(Step::NeedBytes)
                        }
                    }
                }
                // Reported once; application data may still be sent after it.
                ConnectionState::PeerClosed => {
                    *read_closed = true;
                    (!sending).then_some(Step::PeerClosed)
                }
                ConnectionState::BlockedHandshake if !sending => Some(Step::NeedBytes),
                ConnectionState::Closed => match send {
                    // Both sides closed already: nothing left to say.
                    Outgoing::Nothing | Outgoing::CloseNotify => Some(Step::PeerClosed),
                    Outgoing::Data(_) => return Err(io::ErrorKind::BrokenPipe.into()),
                },
                ConnectionState::BlockedHandshake => return Err(io::ErrorKind::BrokenPipe.into()),
                _ => return Err(invalid("unexpected TLS state (early data is not enabled)")),
            };
            self.discard(discard);
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    fn discard(&mut self, taken: usize) {
        if taken == 0 {
            return;
        }
        self.incoming.copy_within(taken..self.incoming_len, 0);
        self.incoming_len -= taken;
        if self.incoming_len == 0 {
            self.incoming = Vec::new();
        }
    }

    /// Reads what the socket has into `incoming`, allocating room only once the socket is
    /// readable; returns the bytes read (0: end of file).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let max = if self.established {
            MAX_RECORD
        } else {
            MAX_HANDSHAKE
        };
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            if self.incoming_len >= max {
                return Poll::Ready(Err(invalid("TLS record larger than the protocol allows")));
            }
            let room = READ_CHUNK.min(max - self.incoming_len);
            if self.incoming.len() < self.incoming_len + room {
                self.incoming.resize(self.incoming_len + room, 0);
            }
            match self
                .io
                .try_read(&mut self.incoming[self.incoming_len..self.incoming_len + room])
            {
                Ok(read) => {
                    self.incoming_len += read;
                    if self.incoming_len == 0 {
                        self.incoming = Vec::new();
                    }
                    return Poll::Ready(Ok(read));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if self.incoming_len == 0 {
                        self.incoming = Vec::new();
                    }
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Writes `outgoing` to the socket; frees it once it is all written.
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_written < self.outgoing.len() {
            let written = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.outgoing_written..])
            )?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_written += written;
        }
        if !self.outgoing.is_empty() {
            self.outgoing = Vec::new();
            self.outgoing_written = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Copies unread plaintext into `buf`; frees `plain` once it is all read.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) {
        let unread = &self.plain[self.plain_read..];
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        self.plain_read += n;
        if self.plain_read == self.plain.len() {
            self.plain = Vec::new();
            self.plain_read = 0;
        }
    }
}

/// Why rustls did not write into the buffer it was given.
enum Refused {
    /// The buffer must have this many bytes.
    TooSmall(usize),
    Other(String),
}

impl From<EncodeError> for Refused {
    fn from(err: EncodeError) -> Self {
        match err {
            EncodeError::InsufficientSize(size) => Refused::TooSmall(size.required_size),
            err => Refused::Other(err.to_string()),
        }
    }
}

impl From<EncryptError> for Refused {
    fn from(err: EncryptError) -> Self {
        match err {
            EncryptError::InsufficientSize(size) => Refused::TooSmall(size.required_size),
            err => Refused::Other(err.to_string()),
        }
    }
}

/// Appends what `write` (rustls encoding or encrypting records) produces to `outgoing`: asked
/// with no room first, rustls says how much it needs, and `outgoing` grows by exactly that.
fn append_records(
    outgoing: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Refused>,
) -> io::Result<()> {
    let start = outgoing.len();
    let required = match write(&mut []) {
        Ok(_) => return Ok(()),
        Err(Refused::TooSmall(required)) => required,
        Err(Refused::Other(err)) => return Err(invalid(err)),
    };
    outgoing.resize(start + required, 0);
    match write(&mut outgoing[start..]) {
        Ok(written) => {
            outgoing.truncate(start + written);
            Ok(())
        }
        Err(Refused::TooSmall(_)) => Err(invalid("rustls asked for more room than it said")),
        Err(Refused::Other(err)) => Err(invalid(err)),
    }
}

impl AsyncRead for ServerTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_read < this.plain.len() {
                this.take_plain(buf);
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            let step = this.process();
            // Tickets, key updates and alerts (also the one saying why `step` failed) go out;
            // a full socket does not hold reading back (writes flush the rest first).
            if let Poll::Ready(Err(err)) = this.poll_flush_outgoing(cx) {
                return Poll::Ready(Err(err));
            }
            let step = step?;
            if this.plain_read < this.plain.len() {
                continue;
            }
            match step {
                Step::PeerClosed => this.read_closed = true,
                Step::NeedBytes => {
                    if ready!(this.poll_fill(cx))? == 0 {
                        // End of file without close_notify: the session treats both alike.
                        this.read_closed = true;
                    }
                }
            }
        }
    }
}

impl AsyncWrite for ServerTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        // Each slice (a whole frame, usually) becomes its own record(s), as rustls's own
        // vectored write does; together at most MAX_WRITE bytes.
        let mut taken = 0;
        for slice in slices {
            let part = &slice[..slice.len().min(MAX_WRITE - taken)];
            if part.is_empty() {
                continue;
            }
            this.drive(Outgoing::Data(part))?;
            taken += part.len();
            if taken == MAX_WRITE {
                break;
            }
        }
        // Best effort now; the rest goes out on the next write or flush.
        if let Poll::Ready(Err(err)) = this.poll_flush_outgoing(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.established && !this.close_sent {
            this.close_sent = true;
            this.drive(Outgoing::CloseNotify)?;
        }
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
