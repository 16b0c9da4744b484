//! The client behind trusted proxies: `Forwarded` (RFC 7239) or `X-Forwarded-For`, believed only
//! from a peer the worker trusts, read from the right (the proxy nearest us) to the first
//! address that is not itself a trusted proxy.

use std::net::IpAddr;

use http::HeaderMap;

/// Addresses and networks (`10.0.0.0/8`, `::1`) whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.168.1.10`, `fd00::/8` ...; the first bad entry is an error.
    pub(crate) fn parse(list: &[&str]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for entry in list {
            let (ip, bits) = match entry.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (*entry, None),
            };
            let ip: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| format!("trusted proxy {entry:?}: not an address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("trusted proxy {entry:?}: bad prefix length"))?,
                None => max,
            };
            nets.push((ip, bits));
        }
        Ok(TrustedProxies(nets))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the networks (an IPv4-mapped IPv6 address counts as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

/// One `for=` value of `Forwarded`: an address, maybe quoted, bracketed and with a port.
fn forwarded_node(value: &str) -> Option<IpAddr> {
    let v = value.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.parse().ok().or_else(|| {
        let (ip, port) = v.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        ip.parse().ok()
    })
}

/// The forwarding chain the headers give, the original client first; `None` when an entry is
/// not an address (`unknown`, an obfuscated name, garbage): then nothing in it is believed.
fn chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        let mut out = Vec::new();
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            let for_value = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v)
            })?;
            out.push(forwarded_node(for_value)?);
        }
        return Some(out);
    }
    let mut out = Vec::new();
    for v in headers.get_all("x-forwarded-for").iter() {
        for item in v.to_str().ok()?.split(',') {
            out.push(forwarded_node(item)?);
        }
    }
    Some(out)
}

/// The client's address for a request that `peer` (a trusted proxy) forwarded: the rightmost
/// address of the chain that is not a trusted proxy (the leftmost if all are). `None` when
/// the peer is not trusted or the headers name nobody or something unreadable.
pub(crate) fn client(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    if trusted.is_empty() || !trusted.contains(peer) {
        return None;
    }
    let chain = chain(headers)?;
    chain
        .iter()
        .rev()
        .find(|ip| !trusted.contains(**ip))
        .or(chain.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks_match_by_prefix() {
        let t = TrustedProxies::parse(&["10.0.0.0/8", "192.168.1.10", "fd00::/8"]).expect("ok");
        assert!(t.contains(ip("10.200.3.4")));
        assert!(t.contains(ip("192.168.1.10")));
        assert!(!t.contains(ip("192.168.1.11")));
        assert!(t.contains(ip("fd12::1")));
        assert!(t.contains(ip("::ffff:10.1.1.1")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local"]).is_err());
        assert!(TrustedProxies::parse(&["0.0.0.0/0"])
            .expect("all")
            .contains(ip("8.8.8.8")));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_address_and_only_from_a_trusted_peer() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).expect("ok");
        let h = headers(&[("X-Forwarded-For", "6.6.6.6, 203.0.113.9, 10.0.0.7")]);
        // The client may have written 6.6.6.6 itself; 203.0.113.9 is who reached our proxy.
        assert_eq!(client(&h, ip("10.0.0.2"), &t), Some(ip("203.0.113.9")));
        // A peer that is not a trusted proxy is believed in nothing.
        assert_eq!(client(&h, ip("203.0.113.50"), &t), None);
        let f = headers(&[(
            "Forwarded",
            r#"for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711""#,
        )]);
        assert_eq!(
            client(&f, ip("10.1.1.1"), &t),
            Some(ip("2001:db8:cafe::17"))
        );
        let all_trusted = headers(&[("X-Forwarded-For", "10.9.9.9, 10.0.0.7")]);
        assert_eq!(
            client(&all_trusted, ip("10.0.0.1"), &t),
            Some(ip("10.9.9.9"))
        );
    }

    #[test]
    fn unreadable_or_empty_chains_name_nobody() {
        let t = TrustedProxies::parse(&["127.0.0.1"]).expect("ok");
        for bad in [
            ("X-Forwarded-For", "not-an-ip"),
            ("X-Forwarded-For", "1.2.3.4, , 5.6.7.8"),
            ("Forwarded", "for=unknown"),
            ("Forwarded", "for=_hidden"),
            ("Forwarded", "proto=https"),
        ] {
            assert_eq!(
                client(&headers(&[bad]), ip("127.0.0.1"), &t),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(client(&HeaderMap::new(), ip("127.0.0.1"), &t), None);
        let long = vec!["9.9.9.9"; 5000].join(",");
        assert_eq!(
            client(&headers(&[("X-Forwarded-For", &long)]), ip("127.0.0.1"), &t),
            Some(ip("9.9.9.9"))
        );
    }
}
