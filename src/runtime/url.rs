//! Listen and connect URLs: `protocol://host:port`, `protocol+unix:///path`, `udp://host:port`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::error::{Error, ErrorKind, Result};

/// How bytes travel: the socket type under the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A TCP stream.
    Tcp,
    /// UDP datagrams: one datagram is one message.
    Udp,
    /// A Unix-domain stream socket.
    Unix,
}

/// Where a socket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// An IP address and port (TCP or UDP).
    Inet(SocketAddr),
    /// A filesystem path (Unix-domain socket).
    Path(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Inet(a) => write!(f, "{a}"),
            Endpoint::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A parsed `scheme://address` URL.
///
/// The scheme names the protocol (`tcp`, `text`, `frame`, `udp`, `unix`), optionally followed by
/// `+unix` or `+udp` to choose another transport: `text+unix:///run/app.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketUrl {
    /// The protocol part of the scheme (`text` in `text+unix://`).
    pub protocol: String,
    /// The transport chosen by the scheme.
    pub transport: Transport,
    /// The address.
    pub endpoint: Endpoint,
    original: String,
}

impl fmt::Display for SocketUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl SocketUrl {
    /// Parses and resolves a URL. Host names are resolved once, here.
    pub(crate) fn parse(url: &str) -> Result<SocketUrl> {
        let bad =
            |why: &str| Error::new(ErrorKind::InvalidUrl, format!("invalid URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://address, e.g. text://0.0.0.0:8888"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty() {
            return Err(bad("empty scheme"));
        }
        let (protocol, transport) = match scheme.split_once('+') {
            Some((p, "unix")) => (p.to_string(), Transport::Unix),
            Some((p, "udp")) => (p.to_string(), Transport::Udp),
            Some((p, "tcp")) => (p.to_string(), Transport::Tcp),
            Some((_, t)) => return Err(bad(&format!("unknown transport {t:?} (tcp, udp, unix)"))),
            None if scheme == "unix" => ("tcp".to_string(), Transport::Unix),
            None if scheme == "udp" => ("udp".to_string(), Transport::Udp),
            None => (scheme.clone(), Transport::Tcp),
        };
        let endpoint = match transport {
            Transport::Unix => {
                if rest.is_empty() {
                    return Err(bad("empty socket path"));
                }
                Endpoint::Path(PathBuf::from(rest))
            }
            Transport::Tcp | Transport::Udp => {
                let addr = rest
                    .to_socket_addrs()
                    .map_err(|e| bad(&format!("cannot resolve {rest:?}: {e}")))?
                    .next()
                    .ok_or_else(|| bad("address resolves to nothing"))?;
                Endpoint::Inet(addr)
            }
        };
        Ok(SocketUrl {
            protocol,
            transport,
            endpoint,
            original: url.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_over_tcp() {
        let u = SocketUrl::parse("text://127.0.0.1:8888").expect("valid");
        assert_eq!(u.protocol, "text");
        assert_eq!(u.transport, Transport::Tcp);
        assert_eq!(
            u.endpoint,
            Endpoint::Inet("127.0.0.1:8888".parse().expect("addr"))
        );
    }

    #[test]
    fn unix_path_with_protocol() {
        let u = SocketUrl::parse("frame+unix:///tmp/x.sock").expect("valid");
        assert_eq!(u.protocol, "frame");
        assert_eq!(u.transport, Transport::Unix);
        assert_eq!(u.endpoint, Endpoint::Path("/tmp/x.sock".into()));
    }

    #[test]
    fn bare_unix_is_raw_stream() {
        let u = SocketUrl::parse("unix:///tmp/y.sock").expect("valid");
        assert_eq!((u.protocol.as_str(), u.transport), ("tcp", Transport::Unix));
    }

    #[test]
    fn udp_scheme() {
        let u = SocketUrl::parse("udp://0.0.0.0:9000").expect("valid");
        assert_eq!(u.transport, Transport::Udp);
    }

    #[test]
    fn missing_scheme_is_a_clear_error() {
        let e = SocketUrl::parse("0.0.0.0:80").expect_err("no scheme");
        assert!(e.to_string().contains("scheme://"), "{e}");
    }

    #[test]
    fn unknown_transport_rejected() {
        assert!(SocketUrl::parse("text+sctp://1.2.3.4:5").is_err());
    }
}
