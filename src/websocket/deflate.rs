//! permessage-deflate (RFC 7692): the negotiation of both ends and the compression of whole
//! messages.
//!
//! Memory is the design's constraint: a zlib compressor with a 32 KiB window holds about
//! 256 KiB, an inflater about 40 KiB. Without context takeover (the default), the server asks
//! both ends to start every message afresh (`server_no_context_takeover;
//! client_no_context_takeover`), so a process needs one compressor and one inflater for all
//! its connections (per thread, reset after each message) and a connection holds nothing.
//! With context takeover (`DeflateSettings::context_takeover`), each connection keeps its own
//! pair, created on first use, for the better ratio on streams of similar messages.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// How a worker (or an outbound connection) uses permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateSettings {
    /// zlib level, 0 (store) to 9 (smallest). Default 1: text and JSON lose most of what they
    /// will lose at the first level, for a fraction of the CPU of the higher ones.
    pub level: u32,
    /// Messages shorter than this many bytes go uncompressed (the choice is per message).
    /// Default 64.
    pub threshold: usize,
    /// Keep the compression context from one message to the next (a better ratio for streams
    /// of similar messages, at about 300 KiB per connection). Default false: every message is
    /// compressed on its own, and connections hold no compression state.
    pub context_takeover: bool,
}

impl Default for DeflateSettings {
    fn default() -> Self {
        DeflateSettings {
            level: 1,
            threshold: 64,
            context_takeover: false,
        }
    }
}

/// What the handshake agreed, seen from this end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Agreed {
    /// This end may keep its compression context between messages.
    pub(crate) own_takeover: bool,
    /// The peer keeps its context, so the inflater must keep it too.
    pub(crate) peer_takeover: bool,
    /// The window this end compresses with (9-15; 8 means never compress: zlib cannot make a
    /// 256-byte window).
    pub(crate) own_window: u8,
    pub(crate) level: u32,
    pub(crate) threshold: usize,
}

/// One extension offer or answer: its name and parameters.
#[derive(Debug, PartialEq, Eq)]
struct Extension<'a> {
    name: &'a str,
    params: Vec<(&'a str, Option<&'a str>)>,
}

/// The extensions in `Sec-WebSocket-Extensions` values, in order.
fn parse_extensions<'a>(values: &'a [String]) -> Vec<Extension<'a>> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|ext| {
            let mut parts = ext.split(';').map(str::trim);
            let name = parts.next().filter(|n| !n.is_empty())?;
            let params = parts
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (p, None),
                })
                .collect();
            Some(Extension { name, params })
        })
        .collect()
}

/// Window bits as a parameter gives them: 8 to 15.
fn window_bits(value: Option<&str>) -> Option<u8> {
    value
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|b| (8..=15).contains(b))
}

/// The offer of permessage-deflate this server takes, and the answer's header value: the first
/// offer it can honour (RFC 7692 5.1), or none.
pub(crate) fn answer_offers(
    values: &[String],
    settings: &DeflateSettings,
) -> Option<(Agreed, String)> {
    'offers: for offer in parse_extensions(values) {
        if offer.name != "permessage-deflate" {
            continue;
        }
        let mut seen: Vec<&str> = Vec::new();
        let mut server_no_takeover = false;
        let mut client_no_takeover = false;
        let mut server_window = None;
        for (key, value) in &offer.params {
            if seen.contains(key) {
                continue 'offers;
            }
            seen.push(key);
            match (*key, value) {
                ("server_no_context_takeover", None) => server_no_takeover = true,
                ("client_no_context_takeover", None) => client_no_takeover = true,
                ("server_max_window_bits", v) => match window_bits(*v) {
                    // zlib cannot compress with a 256-byte window; declined, as RFC 7692 8.1
                    // allows.
                    Some(8) | None => continue 'offers,
                    Some(bits) => server_window = Some(bits),
                },
                // Bits or none: the inflater keeps a 32 KiB window, which reads any.
                ("client_max_window_bits", None) => {}
                ("client_max_window_bits", v) if window_bits(*v).is_some() => {}
                _ => continue 'offers,
            }
        }
        let takeover = settings.context_takeover;
        let own_takeover = takeover && !server_no_takeover;
        let peer_takeover = takeover && !client_no_takeover;
        let mut answer = String::from("permessage-deflate");
        if !own_takeover {
            answer.push_str("; server_no_context_takeover");
        }
        if !peer_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = server_window {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        let agreed = Agreed {
            own_takeover,
            peer_takeover,
            own_window: server_window.unwrap_or(15),
            level: settings.level.min(9),
            threshold: settings.threshold,
        };
        return Some((agreed, answer));
    }
    None
}

/// What a client offers.
pub(crate) fn client_offer(settings: &DeflateSettings) -> String {
    if settings.context_takeover {
        "permessage-deflate; client_max_window_bits".to_string()
    } else {
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         client_max_window_bits"
            .to_string()
    }
}

/// What the server's answer agrees to, for a client that offered [`client_offer`]: `Ok(None)`
/// when it declined, `Err` when it answered with something not offered (the handshake fails,
/// RFC 7692 5.1).
pub(crate) fn read_answer(
    values: &[String],
    settings: &DeflateSettings,
) -> Result<Option<Agreed>, String> {
    let extensions = parse_extensions(values);
    let answer = match extensions.as_slice() {
        [] => return Ok(None),
        [one] if one.name == "permessage-deflate" => one,
        _ => {
            return Err(format!(
                "the server answered extensions not offered: {values:?}"
            ))
        }
    };
    // The server keeps its context unless it says otherwise (whatever was asked, the inflater
    // follows what the server does); this end keeps its own only when set to and allowed.
    let mut agreed = Agreed {
        own_takeover: settings.context_takeover,
        peer_takeover: true,
        own_window: 15,
        level: settings.level.min(9),
        threshold: settings.threshold,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in &answer.params {
        if seen.contains(key) {
            return Err(format!("the server repeated {key}"));
        }
        seen.push(key);
        match (*key, value) {
            ("server_no_context_takeover", None) => agreed.peer_takeover = false,
            ("client_no_context_takeover", None) => agreed.own_takeover = false,
            ("server_max_window_bits", v) if window_bits(*v).is_some() => {}
            ("client_max_window_bits", v) => match window_bits(*v) {
                Some(bits) => agreed.own_window = bits,
                None => return Err("client_max_window_bits without bits".into()),
            },
            _ => return Err(format!("the server answered parameter {key} wrongly")),
        }
    }
    Ok(Some(agreed))
}

/// Why an incoming message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates past the largest message allowed.
    TooBig,
    /// It is not deflate data.
    Corrupt(String),
}

/// The four bytes a sync flush ends with, left off on the wire (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// The process's shared compressors, one per (level, window), for connections that start
    /// every message afresh.
    static SHARED_COMPRESS: RefCell<Vec<((u32, u8), Compress)>> = const { RefCell::new(Vec::new()) };
    /// The process's shared inflater.
    static SHARED_INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// A connection's compression state.
#[derive(Default)]
pub(crate) struct Codec {
    pub(crate) agreed: Option<Agreed>,
    own: Option<Compress>,
    peer: Option<Decompress>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("agreed", &self.agreed)
            .finish()
    }
}

impl Clone for Codec {
    /// A fresh state with the same agreement (a connection's protocol value is cloned only
    /// before its handshake).
    fn clone(&self) -> Self {
        Codec {
            agreed: self.agreed,
            own: None,
            peer: None,
        }
    }
}

fn new_compress(level: u32, window: u8) -> Compress {
    Compress::new_with_window_bits(Compression::new(level), false, window)
}

impl Codec {
    /// An agreed codec.
    pub(crate) fn new(agreed: Agreed) -> Codec {
        Codec {
            agreed: Some(agreed),
            own: None,
            peer: None,
        }
    }

    /// `message` compressed for the wire, or `None` when it goes as it is (too short, or no
    /// compression agreed).
    pub(crate) fn compress(&mut self, message: &[u8]) -> Option<Vec<u8>> {
        let a = self.agreed?;
        if message.len() < a.threshold || a.own_window < 9 {
            return None;
        }
        let out = if a.own_takeover {
            let c = self
                .own
                .get_or_insert_with(|| new_compress(a.level, a.own_window));
            deflate(c, message)
        } else {
            SHARED_COMPRESS.with(|all| {
                let mut all = all.borrow_mut();
                let key = (a.level, a.own_window);
                let i = match all.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        all.push((key, new_compress(a.level, a.own_window)));
                        all.len() - 1
                    }
                };
                let c = &mut all[i].1;
                let out = deflate(c, message);
                c.reset();
                out
            })
        };
        // A compressor error leaves the message to go uncompressed.
        out.ok().filter(|o| o.len() < message.len())
    }

    /// A compressed message from the peer, inflated to at most `limit` bytes.
    pub(crate) fn inflate(&mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let takeover = self.agreed.is_some_and(|a| a.peer_takeover);
        if takeover {
            let d = self.peer.get_or_insert_with(|| Decompress::new(false));
            return inflate(d, data, limit);
        }
        SHARED_INFLATE.with(|shared| {
            let mut shared = shared.borrow_mut();
            let d = shared.get_or_insert_with(|| Decompress::new(false));
            let out = inflate(d, data, limit);
            d.reset(false);
            out
        })
    }
}

/// Compresses `input` with a sync flush, leaving off the flush's last four bytes.
fn deflate(c: &mut Compress, input: &[u8]) -> Result<Vec<u8>, flate2::CompressError> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let start_in = c.total_in();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let consumed = (c.total_in() - start_in) as usize;
        c.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)?;
        let consumed = (c.total_in() - start_in) as usize;
        // A flush is complete when all input is taken and room is left over.
        if consumed == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Ok(out)
}

/// Inflates `input` (and the flush tail the sender left off), never holding more than
/// `limit + 1` bytes of output: a small message that inflates past the limit stops there.
fn inflate(d: &mut Decompress, input: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let cap = limit.saturating_add(1);
    let mut out: Vec<u8> = Vec::with_capacity(input.len().saturating_mul(4).clamp(64, cap));
    for part in [input, &TAIL[..]] {
        let start_in = d.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.capacity() >= cap {
                    return Err(InflateError::TooBig);
                }
                let more = out.capacity().min(cap - out.capacity());
                out.reserve_exact(more);
            }
            let consumed = (d.total_in() - start_in) as usize;
            let before = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(&part[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|e| InflateError::Corrupt(e.to_string()))?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let consumed = (d.total_in() - start_in) as usize;
            let done = consumed == part.len() && out.len() < out.capacity();
            if status == Status::StreamEnd {
                // A final block: whatever follows it is not part of this stream.
                d.reset(false);
                break;
            }
            if done {
                break;
            }
            if (d.total_in(), d.total_out()) == before && out.len() < out.capacity() {
                return Err(InflateError::Corrupt(
                    "the deflate data stops making progress".into(),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(v: &str) -> Vec<String> {
        vec![v.to_string()]
    }

    #[test]
    fn the_server_answers_the_first_offer_it_can_honour() {
        let plain = DeflateSettings::default();
        // Python websockets' and Chromium's offer.
        let (agreed, answer) = answer_offers(
            &offers("permessage-deflate; client_max_window_bits"),
            &plain,
        )
        .expect("taken");
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(!agreed.own_takeover && !agreed.peer_takeover);
        // An 8-bit server window is declined; the next offer is taken.
        let two = offers(
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10",
        );
        let (agreed, answer) = answer_offers(&two, &plain).expect("second taken");
        assert_eq!(agreed.own_window, 10);
        assert!(answer.ends_with("; server_max_window_bits=10"), "{answer}");
        // Unknown or repeated parameters, bad values, other extensions: declined.
        for bad in [
            "permessage-deflate; x_unknown",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(answer_offers(&offers(bad), &plain), None, "{bad}");
        }
    }

    #[test]
    fn with_context_takeover_the_server_keeps_what_the_client_allows() {
        let keep = DeflateSettings {
            context_takeover: true,
            ..DeflateSettings::default()
        };
        let (agreed, answer) =
            answer_offers(&offers("permessage-deflate; client_max_window_bits"), &keep)
                .expect("taken");
        assert_eq!(answer, "permessage-deflate");
        assert!(agreed.own_takeover && agreed.peer_takeover);
        let (agreed, answer) = answer_offers(
            &offers("permessage-deflate; server_no_context_takeover"),
            &keep,
        )
        .expect("taken");
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover");
        assert!(!agreed.own_takeover && agreed.peer_takeover);
    }

    #[test]
    fn a_client_reads_the_answer_and_refuses_what_it_did_not_offer() {
        let keep = DeflateSettings {
            context_takeover: true,
            ..DeflateSettings::default()
        };
        let agreed = read_answer(
            &offers("permessage-deflate; server_no_context_takeover; client_max_window_bits=10"),
            &keep,
        )
        .expect("valid")
        .expect("agreed");
        assert!(agreed.own_takeover && !agreed.peer_takeover);
        assert_eq!(agreed.own_window, 10);
        assert_eq!(read_answer(&[], &keep), Ok(None));
        assert!(read_answer(&offers("permessage-deflate; foo"), &keep).is_err());
        assert!(read_answer(&offers("x-other"), &keep).is_err());
        // A server that keeps its context though asked not to is followed, not refused.
        let plain = DeflateSettings::default();
        let agreed = read_answer(&offers("permessage-deflate"), &plain)
            .expect("valid")
            .expect("agreed");
        assert!(!agreed.own_takeover && agreed.peer_takeover);
    }

    fn agreed(takeover: bool, window: u8) -> Agreed {
        Agreed {
            own_takeover: takeover,
            peer_takeover: takeover,
            own_window: window,
            level: 6,
            threshold: 16,
        }
    }

    #[test]
    fn messages_round_trip_with_and_without_context_takeover_and_shrink() {
        let text =
            br#"{"type":"chat","room":"lobby","text":"hello there, how is everyone today?"}"#
                .repeat(3);
        for takeover in [false, true] {
            for window in [9, 12, 15] {
                let mut sender = Codec::new(agreed(takeover, window));
                let mut receiver = Codec::new(agreed(takeover, window));
                let mut sizes = Vec::new();
                for _ in 0..3 {
                    let wire = sender.compress(&text).expect("compressed");
                    sizes.push(wire.len());
                    assert_eq!(receiver.inflate(&wire, 1 << 20).expect("inflates"), text);
                }
                assert!(sizes[0] < text.len() / 2, "{sizes:?}");
                if takeover {
                    // The second copy refers back to the first.
                    assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
                } else {
                    assert_eq!(sizes[0], sizes[1]);
                }
            }
        }
    }

    #[test]
    fn short_messages_and_an_eight_bit_window_go_uncompressed() {
        assert_eq!(Codec::new(agreed(false, 15)).compress(b"tiny"), None);
        assert_eq!(Codec::new(agreed(false, 8)).compress(&[b'a'; 4096]), None);
        assert_eq!(Codec::default().compress(&[b'a'; 4096]), None);
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_an_error() {
        let zeros = vec![0u8; 10 << 20];
        let wire = Codec::new(agreed(false, 15))
            .compress(&zeros)
            .expect("compressed");
        assert!(wire.len() < 20_000, "{}", wire.len());
        let mut receiver = Codec::new(agreed(false, 15));
        assert_eq!(receiver.inflate(&wire, 1 << 20), Err(InflateError::TooBig));
        // The shared inflater is reset: the next message is fine.
        let ok = Codec::new(agreed(false, 15))
            .compress(&[b'x'; 1000])
            .expect("c");
        assert_eq!(
            receiver.inflate(&ok, 1 << 20).expect("fine"),
            vec![b'x'; 1000]
        );
        assert!(matches!(
            receiver.inflate(&[0xff, 0xff, 0xff, 0x13, 0x37], 1 << 20),
            Err(InflateError::Corrupt(_))
        ));
        assert_eq!(
            receiver.inflate(&ok, 1 << 20).expect("fine"),
            vec![b'x'; 1000]
        );
    }
}
