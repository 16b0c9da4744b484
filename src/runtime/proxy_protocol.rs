//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends before
//! the client's bytes, saying whose connection it relays. Parsing is I/O-free and total: any
//! input is a header, "need more", or a reason to refuse the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's first twelve bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest line, CRLF included (the specification's figure).
const V1_MAX: usize = 107;
/// The longest version 2 header taken (its TLVs included). The format allows 64 KiB; a relay
/// sends a few dozen bytes of TLVs, and a larger claim is refused rather than buffered.
pub(crate) const V2_MAX: usize = 16 + 1024;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relayed {
    /// A connection the relay made itself (a health check: v2 LOCAL, v1 UNKNOWN): the
    /// connection's own addresses stand.
    Local,
    /// A client's connection: its address, and the address it connected to.
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// What the bytes so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not yet a whole header (and nothing wrong so far).
    NeedMore,
    /// A header of `len` bytes.
    Header { relayed: Relayed, len: usize },
    /// Not a valid header: the connection is refused with this reason.
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> Parsed {
    Parsed::Invalid(why.into())
}

/// Parses the start of a connection's input.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::NeedMore;
    }
    let v2_prefix = buf.len().min(V2_SIGNATURE.len());
    if buf[..v2_prefix] == V2_SIGNATURE[..v2_prefix] {
        return parse_v2(buf);
    }
    let v1_prefix = buf.len().min(6);
    if buf[..v1_prefix] == b"PROXY "[..v1_prefix] {
        return parse_v1(buf);
    }
    invalid("no PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            invalid("PROXY v1 line too long")
        } else {
            Parsed::NeedMore
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return invalid("PROXY v1 line too long");
    }
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return invalid("PROXY v1 line is not text");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Parsed::Header {
            relayed: Relayed::Local,
            len,
        },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v6 = *family == "TCP6";
            let ip = |s: &str| -> Option<IpAddr> {
                if v6 {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                } else {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                }
            };
            // Ports are plain decimal: no sign, no leading zero (but "0" itself).
            let port = |s: &str| -> Option<u16> {
                let plain = !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0'));
                plain.then(|| s.parse().ok()).flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => Parsed::Header {
                    relayed: Relayed::Client {
                        source: SocketAddr::new(s, sp),
                        destination: SocketAddr::new(d, dp),
                    },
                    len,
                },
                _ => invalid(format!("PROXY v1 addresses do not parse: {line:?}")),
            }
        }
        _ => invalid(format!("not a PROXY v1 line: {line:?}")),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::NeedMore;
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0F);
    if version != 2 {
        return invalid(format!("PROXY v2 header with version {version}"));
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return invalid(format!("PROXY v2 header of {len} bytes, over {V2_MAX}"));
    }
    if buf.len() < len {
        return Parsed::NeedMore;
    }
    let addresses = &buf[16..len];
    let relayed = match command {
        0 => Relayed::Local,
        1 => match buf[13] {
            // TCP or UDP over IPv4.
            0x11 | 0x12 if addresses.len() >= 12 => {
                let ip = |i: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        addresses[i],
                        addresses[i + 1],
                        addresses[i + 2],
                        addresses[i + 3],
                    ))
                };
                let port = |i: usize| u16::from_be_bytes([addresses[i], addresses[i + 1]]);
                Relayed::Client {
                    source: SocketAddr::new(ip(0), port(8)),
                    destination: SocketAddr::new(ip(4), port(10)),
                }
            }
            // TCP or UDP over IPv6.
            0x21 | 0x22 if addresses.len() >= 36 => {
                let ip = |i: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&addresses[i..i + 16]);
                    IpAddr::V6(Ipv6Addr::from(b))
                };
                let port = |i: usize| u16::from_be_bytes([addresses[i], addresses[i + 1]]);
                Relayed::Client {
                    source: SocketAddr::new(ip(0), port(32)),
                    destination: SocketAddr::new(ip(16), port(34)),
                }
            }
            // Unspecified or Unix-domain families: nothing to say about a client's address.
            0x00 | 0x31 | 0x32 => Relayed::Local,
            family => {
                return invalid(format!(
                    "PROXY v2 family {family:#04x} with {} address bytes",
                    addresses.len()
                ))
            }
        },
        other => return invalid(format!("PROXY v2 command {other}")),
    };
    Parsed::Header { relayed, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(src: &str, dst: &str) -> Relayed {
        Relayed::Client {
            source: src.parse().expect("src"),
            destination: dst.parse().expect("dst"),
        }
    }

    #[test]
    fn version_1_lines_give_the_client_address_and_their_length() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            Parsed::Header {
                relayed: client("203.0.113.7:51234", "10.0.0.1:8080"),
                len: 44
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 443 8443\r\n";
        assert!(matches!(
            parse(v6),
            Parsed::Header {
                relayed: Relayed::Client { .. },
                ..
            }
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                relayed: Relayed::Local,
                len: 15
            }
        );
        // Whole lines only, one byte at a time.
        for cut in 1..line.len().min(43) {
            assert_eq!(parse(&line[..cut]), Parsed::NeedMore, "{cut}");
        }
    }

    #[test]
    fn hostile_or_broken_version_1_lines_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY \xff\xfe\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&endless), Parsed::Invalid(_)));
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn version_2_headers_give_the_client_address_and_skip_tlvs() {
        let mut a = vec![198, 51, 100, 9, 10, 0, 0, 1];
        a.extend_from_slice(&40000u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a.extend_from_slice(&[0x04, 0x00, 0x02, 0xab, 0xcd]); // a TLV
        let h = v2(1, 0x11, &a);
        let mut with_data = h.clone();
        with_data.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&with_data),
            Parsed::Header {
                relayed: client("198.51.100.9:40000", "10.0.0.1:443"),
                len: h.len()
            }
        );
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut]), Parsed::NeedMore, "{cut}");
        }
        let mut six = vec![0u8; 36];
        six[15] = 1;
        six[31] = 2;
        six[32..34].copy_from_slice(&1234u16.to_be_bytes());
        six[34..36].copy_from_slice(&80u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &six)),
            Parsed::Header {
                relayed: client("[::1]:1234", "[::2]:80"),
                len: 52
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Parsed::Header {
                relayed: Relayed::Local,
                len: 16
            }
        );
    }

    #[test]
    fn hostile_version_2_headers_are_refused() {
        // Too short for its family, an unknown command, version 3, and a length over the cap.
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse(&v2(2, 0x11, &[0; 12])), Parsed::Invalid(_)));
        let mut three = v2(1, 0x11, &[0; 12]);
        three[12] = 0x31;
        assert!(matches!(parse(&three), Parsed::Invalid(_)));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
    }
}
