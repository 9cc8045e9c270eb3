//! The WebSocket listener: binding it with a deep backlog, raising the open-file limit it
//! lives on, and the accept loop (an accept that fails for lack of descriptors answers a
//! waiting client 503 from the reserve descriptor).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    accept::AcceptFailures,
    session,
    shutdown::{Readiness, TaskGroup},
    telemetry,
};

pub(super) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<session::SessionContext>,
    tls: Option<Arc<crate::tls::Tls>>,
    readiness: Readiness,
    stop: CancellationToken,
    sessions: TaskGroup,
) {
    let mut failing = AcceptFailures::new("ws", Some(readiness));
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = failing.recovered() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            // The accept loop only spawns: the upgrade and all per-connection work (including
            // cleanup after a disconnect) happen in the session's own task.
            Ok((stream, _peer)) => match &tls {
                Some(tls) => {
                    sessions.spawn(session::serve_tls(stream, tls.config(), Arc::clone(&ctx)));
                }
                None => {
                    sessions.spawn(session::serve_tcp(stream, Arc::clone(&ctx)));
                }
            },
            Err(err) => {
                if failing.failed(&err) {
                    refuse_one(&listener, &mut failing);
                }
                // Back off so the loop does not spin while the process is out of something.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Out of descriptors: accepts one waiting connection on the reserve descriptor, answers it
/// 503 and closes it, so that the client does not wait in the backlog.
pub(super) fn refuse_one(listener: &TcpListener, failing: &mut AcceptFailures) {
    failing.release_reserve();
    let accepted = futures_util::FutureExt::now_or_never(listener.accept());
    if let Some(Ok((stream, _))) = accepted {
        let body = "the server is out of file descriptors; try another node or later\n";
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: \
             text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.try_write(response.as_bytes());
        telemetry::connection_rejected("out_of_files");
    }
    failing.restore_reserve();
}

/// An open-file limit that holds this many descriptors serves thousands of connections: below
/// `limits.max_connections` it is said at info, not warned about.
pub(super) const ROOMY_FILE_LIMIT: u64 = 16_384;

/// Raises the soft limit on open files to the hard limit (what `ulimit -n` allows without
/// privileges), and warns when it is still below what `limits.max_connections` needs and
/// small (under `ROOMY_FILE_LIMIT`).
pub(super) fn raise_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // Listeners, Redis, the control API's connections, logs: a margin of 1,024.
            let needed = u64::try_from(max_connections)
                .unwrap_or(u64::MAX)
                .saturating_add(1024);
            if limit < needed && limit < ROOMY_FILE_LIMIT {
                tracing::warn!(
                    open_files_limit = limit,
                    max_connections,
                    "The open-file limit is below limits.max_connections + 1024: connections \
                     beyond it will be refused (raise LimitNOFILE / ulimit -n, see \
                     docs/operations.md)"
                );
            } else if limit < needed {
                // Room for thousands of connections (a developer's machine, a small node):
                // said, not warned about, as the first run of the shipped configuration
                // (limits.max_connections = 1,000,000) would otherwise greet everyone.
                tracing::info!(
                    open_files_limit = limit,
                    max_connections,
                    "Connections are capped by the open-file limit, below \
                     limits.max_connections + 1024 (raise LimitNOFILE / ulimit -n for more, \
                     see docs/operations.md)"
                );
            } else {
                tracing::debug!(open_files_limit = limit, "Open-file limit");
            }
        }
        Err(err) => tracing::warn!(error = %err, "Cannot read or raise the open-file limit"),
    }
}

/// Pending connections the kernel queues for the WebSocket listener (capped by
/// `net.core.somaxconn`). tokio's default of 1024 overflows under connect bursts, and an
/// overflow costs the client a 1 s SYN retransmit.
pub(super) const WS_BACKLOG: u32 = 8192;

pub(super) fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Restarting a node must not wait for the old sockets' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(WS_BACKLOG)
}
