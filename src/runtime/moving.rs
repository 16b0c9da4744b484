//! Moving a live connection to another process (hand-off on reload): what a connection is
//! once it leaves its driver at a message boundary, and how the process layer hears of it.
//!
//! The runtime only cuts a connection out whole (its socket, the bytes read but not decoded,
//! its protocol's state, counters and session) and takes one in; carrying it between
//! processes is the process layer's business, and its memberships the bus's.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::protocol::PeerAddr;

/// The largest session a connection may carry to another process, as JSON.
pub(crate) const MAX_SESSION: usize = 64 * 1024;

/// A connection between processes: everything but the socket itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnectionState {
    pub(crate) id: u64,
    /// The worker group it belongs to (its name).
    pub(crate) worker: String,
    /// A Unix-domain socket (else TCP).
    pub(crate) unix: bool,
    pub(crate) peer: PeerAddr,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) age_ms: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) max_send_buffer_size: usize,
    /// Bytes read from the socket and not yet decoded (base64).
    pub(crate) unread: String,
    /// The protocol's `export_state` (base64).
    pub(crate) protocol: String,
    pub(crate) session: serde_json::Map<String, serde_json::Value>,
    /// When it left its old process (microseconds since the Unix epoch), to measure the move.
    #[serde(default)]
    pub(crate) departed_unix_us: u64,
}

/// Microseconds since the Unix epoch.
pub(crate) fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl ConnectionState {
    pub(crate) fn encode_bytes(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub(crate) fn decode_bytes(text: &str) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("bad base64: {e}"))
    }

    pub(crate) fn age(&self) -> Duration {
        Duration::from_millis(self.age_ms)
    }
}

/// A connection that left its driver to move: its state and its socket.
pub(crate) struct Departure {
    pub(crate) state: ConnectionState,
    pub(crate) socket: OwnedFd,
}

type Mover = Rc<dyn Fn(Departure)>;

thread_local! {
    static MOVER: RefCell<Option<Mover>> = const { RefCell::new(None) };
}

/// Sets who carries departing connections away (the process layer, during a reload).
pub(crate) fn set_mover(f: impl Fn(Departure) + 'static) {
    MOVER.with(|m| *m.borrow_mut() = Some(Rc::new(f)));
}

/// A connection left its driver to move.
pub(crate) fn depart(d: Departure) {
    let mover = MOVER.with(|m| m.borrow().clone());
    match mover {
        Some(f) => f(d),
        None => tracing::error!(
            "connection {} left to move with nobody to carry it",
            d.state.id
        ),
    }
}

/// A socket the driver can give up as a plain descriptor, to move it.
pub(crate) trait IntoSocket: Sized {
    /// Whether this kind of stream can move at all (TLS cannot: its session keys stay).
    const MOVABLE: bool;
    /// The descriptor, and whether it is a Unix-domain socket.
    fn into_socket(self) -> Option<(OwnedFd, bool)>;
}

impl IntoSocket for tokio::net::TcpStream {
    const MOVABLE: bool = true;
    fn into_socket(self) -> Option<(OwnedFd, bool)> {
        self.into_std().ok().map(|s| (OwnedFd::from(s), false))
    }
}

impl IntoSocket for tokio::net::UnixStream {
    const MOVABLE: bool = true;
    fn into_socket(self) -> Option<(OwnedFd, bool)> {
        self.into_std().ok().map(|s| (OwnedFd::from(s), true))
    }
}

impl<S> IntoSocket for tokio_rustls::server::TlsStream<S> {
    const MOVABLE: bool = false;
    fn into_socket(self) -> Option<(OwnedFd, bool)> {
        None
    }
}

impl<S> IntoSocket for tokio_rustls::client::TlsStream<S> {
    const MOVABLE: bool = false;
    fn into_socket(self) -> Option<(OwnedFd, bool)> {
        None
    }
}

impl IntoSocket for Box<dyn crate::protocol::Stream> {
    // A connection upgraded to a route (WebSocket on an HTTP port) stays where it is.
    const MOVABLE: bool = false;
    fn into_socket(self) -> Option<(OwnedFd, bool)> {
        None
    }
}
