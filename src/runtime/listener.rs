//! Listening sockets: opened by the master (or per process with `reuse_port`), inherited by
//! worker processes as plain file descriptors.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;

use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};

use crate::error::{Error, Result};
use crate::runtime::url::{Endpoint, SocketUrl, Transport};

/// The kernel's accept queue length we ask for (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// A bound socket of one of the three transports.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(std::net::TcpListener),
    Unix(StdUnixListener),
    Udp(std::net::UdpSocket),
}

impl Listener {
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Udp(l) => l.as_raw_fd(),
        }
    }

    /// Rebuilds a listener from a descriptor inherited from the master.
    pub(crate) fn from_owned_fd(transport: Transport, fd: OwnedFd) -> Listener {
        match transport {
            Transport::Tcp => Listener::Tcp(fd.into()),
            Transport::Unix => Listener::Unix(fd.into()),
            Transport::Udp => Listener::Udp(fd.into()),
        }
    }

    /// Sets the socket non-blocking, as tokio requires of sockets it is handed.
    pub(crate) fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Udp(l) => l.set_nonblocking(true),
        }
    }
}

/// Binds `url`'s address. With `reuse_port`, several processes may bind the same address and
/// the kernel balances connections among them.
pub(crate) fn bind(url: &SocketUrl, reuse_port: bool) -> Result<Listener> {
    let fail = |e: std::io::Error| Error::io(format!("cannot listen on {url}"), e);
    match (&url.endpoint, url.transport) {
        (Endpoint::Inet(addr), Transport::Tcp) => {
            let socket = inet_socket(*addr, Type::STREAM, reuse_port).map_err(fail)?;
            socket.listen(BACKLOG).map_err(fail)?;
            Ok(Listener::Tcp(socket.into()))
        }
        (Endpoint::Inet(addr), Transport::Udp) => {
            let socket = inet_socket(*addr, Type::DGRAM, reuse_port).map_err(fail)?;
            Ok(Listener::Udp(socket.into()))
        }
        (Endpoint::Path(path), Transport::Unix) => {
            remove_stale_socket(path);
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
            socket
                .bind(&SockAddr::unix(path).map_err(fail)?)
                .map_err(fail)?;
            socket.listen(BACKLOG).map_err(fail)?;
            let std: StdUnixListener = OwnedFd::from(socket).into();
            Ok(Listener::Unix(std))
        }
        _ => Err(Error::new(
            crate::error::ErrorKind::InvalidUrl,
            format!("{url}: address does not fit its transport"),
        )),
    }
}

fn inet_socket(addr: SocketAddr, ty: Type, reuse_port: bool) -> std::io::Result<Socket> {
    let proto = if ty == Type::STREAM {
        SockProtocol::TCP
    } else {
        SockProtocol::UDP
    };
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if ty == Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The socket file of a Unix-domain listening URL, removed when the server stops (only if it
/// is a socket: never a file someone else put there).
pub(crate) fn remove_socket_file(url: &crate::runtime::url::SocketUrl) {
    use std::os::unix::fs::FileTypeExt;
    if let crate::runtime::url::Endpoint::Path(path) = &url.endpoint {
        let is_socket = std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if is_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket file left by a process that died is removed; a live one (something accepts on it)
/// is left for `bind` to report as in use.
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}
