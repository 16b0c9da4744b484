//! `frame://`: a 4-byte big-endian length that counts itself, then the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Input, Payload, Protocol, Rejection, Wire};

/// Length-prefixed binary messages, Workerman's `Frame` protocol.
///
/// The header is a `u32` in network byte order giving the whole packet's length, header
/// included; so the smallest valid packet is 4 bytes (an empty body). A length below 4 is
/// refused, and so is one above `max_package_size`, as soon as the header has arrived.
#[derive(Debug, Default, Clone)]
pub struct Frame;

const HEADER: usize = 4;

impl Protocol for Frame {
    type Message = Bytes;
    type Output = Payload;

    fn export_state(&self) -> Option<Vec<u8>> {
        Some(Vec::new())
    }

    fn import_state(&mut self, _state: &[u8]) -> Result<(), Rejection> {
        Ok(())
    }

    fn output_from_payload(payload: Payload) -> Option<Payload> {
        Some(payload)
    }

    fn input(&mut self, buf: &[u8], _wire: &mut Wire<'_>) -> Result<Input, Rejection> {
        let Some(header) = buf.get(..HEADER) else {
            return Ok(Input::NeedMore);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len < HEADER {
            return Err(Rejection::new(format!(
                "frame length {len} is less than its own 4-byte header"
            )));
        }
        Ok(Input::Packet(len))
    }

    fn decode(
        &mut self,
        mut packet: BytesMut,
        _wire: &mut Wire<'_>,
    ) -> Result<Option<Bytes>, Rejection> {
        packet.advance(HEADER);
        Ok(Some(packet.freeze()))
    }

    fn encode(&mut self, msg: Payload, wire: &mut Wire<'_>) -> Result<(), Rejection> {
        let dst = wire.buf();
        let len = u32::try_from(msg.0.len() + HEADER)
            .map_err(|_| Rejection::new("frame body larger than 4 GiB"))?;
        dst.reserve(len as usize);
        dst.put_u32(len);
        dst.put_slice(&msg.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::decode_all;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn message_split_into_single_bytes() {
        let bytes = frame(b"payload");
        let mut p = Frame;
        let (msgs, _) = decode_all(&mut p, bytes.iter().map(|b| vec![*b]), 1024);
        assert_eq!(msgs.expect("valid"), vec![Bytes::from_static(b"payload")]);
    }

    #[test]
    fn many_frames_in_one_read() {
        let mut all = frame(b"one");
        all.extend(frame(b""));
        all.extend(frame(b"three"));
        let mut p = Frame;
        let (msgs, _) = decode_all(&mut p, [all], 1024);
        let msgs = msgs.expect("valid");
        assert_eq!(msgs.len(), 3);
        assert!(msgs[1].is_empty());
    }

    #[test]
    fn length_zero_is_rejected() {
        let (msgs, _) = decode_all(&mut Frame, [vec![0, 0, 0, 0]], 1024);
        assert!(msgs.expect_err("len 0").reason().contains("frame length 0"));
    }

    #[test]
    fn length_three_is_rejected() {
        let (msgs, _) = decode_all(&mut Frame, [vec![0, 0, 0, 3, 1, 2, 3]], 1024);
        assert!(msgs.expect_err("len 3").reason().contains("frame length 3"));
    }

    #[test]
    fn length_above_limit_is_rejected_on_the_header_alone() {
        let (msgs, _) = decode_all(&mut Frame, [vec![0, 1, 0, 0]], 1024);
        assert!(msgs
            .expect_err("too big")
            .reason()
            .contains("max_package_size"));
    }

    #[test]
    fn encode_counts_the_header() {
        let mut dst = BytesMut::new();
        Frame
            .encode(Payload::from("ab"), &mut Wire::new(&mut dst))
            .expect("encode");
        assert_eq!(&dst[..], &[0, 0, 0, 6, b'a', b'b']);
    }
}
