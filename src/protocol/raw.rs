//! `tcp://`: raw chunks as they arrive.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Input, Payload, Protocol, Rejection, Wire};

/// No framing: each read is one message, as in Workerman's plain `tcp://`.
///
/// TCP keeps no message boundaries, so a peer's one `send` may arrive as several messages and
/// several sends as one. Use `text://` or `frame://` when boundaries matter.
#[derive(Debug, Default, Clone)]
pub struct Raw;

impl Protocol for Raw {
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
        Ok(if buf.is_empty() {
            Input::NeedMore
        } else {
            Input::Packet(buf.len())
        })
    }

    fn decode(
        &mut self,
        packet: BytesMut,
        _wire: &mut Wire<'_>,
    ) -> Result<Option<Bytes>, Rejection> {
        Ok(Some(packet.freeze()))
    }

    fn encode(&mut self, msg: Payload, wire: &mut Wire<'_>) -> Result<(), Rejection> {
        let dst = wire.buf();
        dst.put_slice(&msg.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::decode_all;

    #[test]
    fn each_read_is_one_message() {
        let (msgs, _) = decode_all(&mut Raw, [b"ab".to_vec(), b"c".to_vec()], 1024);
        assert_eq!(msgs.expect("valid").len(), 2);
    }
}
