//! A TCP socket shared by the session task (which reads it and, when the socket is full,
//! writes it) and the hub's flushers (which write it while it has room): tokio's readiness
//! API works through `&TcpStream`, so both hold an `Arc` and take turns by the outbound lane.

use std::{
    io::{self, IoSlice},
    net::Shutdown,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::hub::Wire;

/// The session's side of a shared socket.
#[derive(Debug)]
pub(super) struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    pub(super) fn new(stream: TcpStream) -> Self {
        Self(Arc::new(stream))
    }

    /// The flushers' side of the same socket.
    pub(super) fn wire(&self) -> Arc<dyn Wire> {
        Arc::clone(&self.0) as Arc<dyn Wire>
    }
}

/// Flushers write straight to the socket, past tokio's readiness cache: tokio's
/// `try_write_vectored` would first look at the socket's registration, a cache line the I/O
/// driver and the session's task also write, for every delivery. A `WouldBlock` here leaves
/// that cache saying "writable"; the session, which takes over on `WouldBlock`, then tries a
/// write through tokio, gets `WouldBlock` too, and waits for the next writability event.
impl Wire for TcpStream {
    fn try_write_vectored(&self, buffers: &[IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(self).send_vectored(buffers)
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // tungstenite reads into initialized memory: this initializes nothing.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale and is now cleared: wait again.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(buffers) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends FIN now, although flushers may still hold the socket until they return.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(Shutdown::Write))
    }
}
