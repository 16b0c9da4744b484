//! Entry points for fuzzing the decoders (`fuzz/`, cargo-fuzz) and for the never-panic tests
//! that run on stable in the ordinary suite. Not part of the API.

use bytes::BytesMut;

use crate::protocol::{next_message, Protocol, Wire};

/// Feeds `data` to a fresh `proto` in reads of sizes taken from the data itself, decoding
/// everything it can, and answering each message so pipelined protocols move on.
fn feed<P: Protocol>(mut proto: P, data: &[u8], answer: impl Fn() -> Option<P::Output>) {
    let (sizes, body) = data.split_at(data.len().min(4));
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut rest = body;
    let mut turn = 0;
    while !rest.is_empty() {
        let step = 1 + (*sizes.get(turn % sizes.len().max(1)).unwrap_or(&255) as usize);
        turn += 1;
        let (now, later) = rest.split_at(step.min(rest.len()));
        rest = later;
        buf.extend_from_slice(now);
        loop {
            match next_message(&mut proto, &mut buf, 64 * 1024, &mut Wire::new(&mut out)) {
                Ok(Some(_)) => {
                    if let Some(reply) = answer() {
                        let _ = proto.encode(reply, &mut Wire::new(&mut out));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        out.clear();
    }
}

/// The text protocol on arbitrary bytes.
pub fn text(data: &[u8]) {
    feed(crate::protocol::Text::default(), data, || None);
}

/// The frame protocol on arbitrary bytes.
pub fn frame(data: &[u8]) {
    feed(crate::protocol::Frame, data, || None);
}

/// The HTTP server protocol on arbitrary bytes.
pub fn http(data: &[u8]) {
    feed(crate::http::Http::default(), data, || {
        Some(crate::http::Response::text("ok").into())
    });
}

/// The WebSocket server protocol on arbitrary bytes: a valid handshake, then the data as frames.
pub fn websocket(data: &[u8]) {
    let mut all = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    all.extend_from_slice(data);
    let mut seeded = data.get(..4).unwrap_or(&[]).to_vec();
    seeded.extend_from_slice(&all);
    feed(crate::websocket::WebSocket::default(), &seeded, || None);
}

/// The WebSocket server protocol with permessage-deflate agreed (context takeover on, the
/// inflater's state carried from message to message) on arbitrary bytes as frames.
pub fn websocket_deflate(data: &[u8]) {
    let mut all = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n".to_vec();
    all.extend_from_slice(data);
    let mut seeded = data.get(..4).unwrap_or(&[]).to_vec();
    seeded.extend_from_slice(&all);
    let ws = crate::websocket::WebSocket::default();
    ws.deflate_settings
        .set(Some(crate::websocket::DeflateSettings {
            context_takeover: true,
            ..Default::default()
        }));
    feed(ws, &seeded, || None);
}

/// The bus's frame decoders on arbitrary bytes: the owned one processes use and the
/// borrowing one the hub uses.
pub fn bus_wire(data: &[u8]) {
    use crate::bus::hub::wire;
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = wire::decode(&mut buf, 1 << 20) {}
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = wire::cut_frame(&mut buf, 1 << 20) {
        let _ = wire::parse_inbound(&frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so failures reproduce.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, seed: &[u8], max: usize) -> Vec<u8> {
            let len = (self.next() as usize) % max;
            let mut v: Vec<u8> = if seed.is_empty() || self.next() % 2 == 0 {
                (0..len).map(|_| self.next() as u8).collect()
            } else {
                seed.to_vec()
            };
            // Flip, insert and delete a few bytes of the seed.
            for _ in 0..(self.next() % 8) {
                if v.is_empty() {
                    break;
                }
                let i = (self.next() as usize) % v.len();
                match self.next() % 3 {
                    0 => v[i] = self.next() as u8,
                    1 => v.insert(i, self.next() as u8),
                    _ => {
                        v.remove(i);
                    }
                }
            }
            v
        }
    }

    fn hammer(name: &str, seeds: &[&[u8]], f: fn(&[u8])) {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        for i in 0..20_000 {
            let seed = seeds[i % seeds.len()];
            let input = rng.bytes(seed, 512);
            f(&input);
        }
    }

    #[test]
    fn text_decoder_never_panics() {
        hammer("text", &[b"\x01\x02\x03\x04hello\nworld\r\n", b""], text);
    }

    #[test]
    fn frame_decoder_never_panics() {
        hammer(
            "frame",
            &[b"\x01\x02\x03\x04\x00\x00\x00\x07abc\x00\x00\x00\x04", b""],
            frame,
        );
    }

    #[test]
    fn http_decoder_never_panics() {
        hammer(
            "http",
            &[
                b"\x05\x09\x02\x10GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: a=b\r\n\r\n",
                b"\x03\x03\x03\x03POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                b"\x40\x40\x40\x40POST /u HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 60\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n--b--",
            ],
            http,
        );
    }

    #[test]
    fn websocket_decoder_never_panics() {
        hammer(
            "websocket",
            &[b"\x02\x02\x02\x02\x81\x85\x01\x02\x03\x04ignor", b"\x01\x01\x01\x01\x01\x80\x01\x02\x03\x04\x80\x80\x00\x00\x00\x00\x88\x82\x00\x00\x00\x00\x03\xe8"],
            websocket,
        );
    }

    #[test]
    fn websocket_deflate_decoder_never_panics() {
        // A masked compressed text frame (RSV1) holding "hello" deflated, then garbage.
        let mut frame = vec![0xC1, 0x87, 0, 0, 0, 0];
        frame.extend_from_slice(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        hammer(
            "websocket_deflate",
            &[
                &frame,
                b"\x01\x01\x01\x01\xc1\x85\x01\x02\x03\x04\xff\xff\xff\x13\x37",
            ],
            websocket_deflate,
        );
    }

    #[test]
    fn bus_wire_decoder_never_panics() {
        let mut seed = BytesMut::new();
        crate::bus::hub::wire::encode(
            &crate::bus::hub::wire::Frame::Pub {
                subject: "a.b".into(),
                reply: Some("r".into()),
                headers: crate::bus::Headers::new().with("k", "v"),
                payload: bytes::Bytes::from_static(b"x"),
            },
            &mut seed,
        )
        .expect("encodable");
        let seed = seed.to_vec();
        hammer("bus", &[&seed, b""], bus_wire);
    }
}
