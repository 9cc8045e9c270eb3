//! Sockets bound to a source address (127.0.0.K) without choosing their port at `bind()`.
//!
//! A `bind()` to port 0 reserves an ephemeral port there and then, searching the range for
//! one no socket of that address holds (`inet_csk_get_port`): with hundreds of thousands of
//! sockets per machine that search is what the load generators spent their time in (85 % of
//! the machine in system time, the ramp down from 1,800 to 150 connections/s near 388,000
//! sockets). `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2) defers the choice to `connect()`, which
//! only needs the 4-tuple to be unique, so a source port may serve every server port.
//!
//! Written by hand: neither `socket2` (0.6) nor `rustix` (1.1) exposes this option.
//!
//! Either way, one source address should not carry more than about 12,000 connections to
//! one server address: Linux picks a connecting socket's port from one half of the
//! ephemeral range first (even ports; `bind()` starts with the odd half), 14,116 ports of
//! 32768-60999 here, and past it searches the range for every connection. Measured on this
//! machine (kernel 6.18, 3 nodes, 3 load generators of 19,000 connections each, asked 3,000
//! a second each, `/tmp`-free reproduction in loadtest/README.md "connect"): one source
//! address per generator ran flat at 3,000/s until about 14,000 connections, then fell to
//! 150-450/s (average 920/s with this option, 750-840/s reserving the port at `bind()`); two
//! source addresses per generator held 3,000/s to the last connection either way.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
};

use tokio::net::TcpSocket;

/// A TCP socket bound to `source` and a port reserved now, as before: to measure the search.
pub fn bound_reserving_port(source: Ipv4Addr) -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    Ok(socket)
}

/// A TCP socket bound to `source`, its port chosen at `connect()`.
pub fn bound(source: Ipv4Addr) -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    let enable: libc::c_int = 1;
    let size = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .expect("an int's size fits socklen_t");
    // SAFETY: the descriptor is this socket's, open for the call; the option value points at
    // a live `c_int` and `size` is its size, which is what the kernel reads for this option.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const enable).cast(),
            size,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    Ok(socket)
}

/// Connections per (source address, server address) pair past which the kernel's port
/// choice searches the whole range per connection (see the module doc).
pub const PER_PAIR: usize = 12_000;

/// Warns when `connections` spread over `servers` x `sources` crowd a pair past
/// [`PER_PAIR`], naming the `--source-addrs` that avoids it.
pub fn warn_if_crowded(connections: usize, servers: usize, sources: usize) {
    let pairs = servers.max(1) * sources.max(1);
    if connections.div_ceil(pairs) > PER_PAIR {
        let enough = connections.div_ceil(servers.max(1) * PER_PAIR);
        eprintln!(
            "warning: {} connections per source address and server exceed {PER_PAIR}: the \
             kernel searches its port range for each one past about 14,000 (connects/s falls \
             10x); use --source-addrs {enough} or more",
            connections.div_ceil(pairs)
        );
    }
}
