//! `text://`: one message per line.

use bytes::{BufMut, BytesMut};

use super::{Input, Payload, Protocol, Rejection, Wire};

/// Newline-delimited text, Workerman's `Text` protocol.
///
/// On input a message ends at `\n`; the `\n`, and a `\r` just before it, are stripped. Empty
/// lines are empty messages. On `send` a `\n` is appended. Input that is not valid UTF-8 is
/// refused: the connection is closed with the reason "text message is not valid UTF-8", so that
/// handlers always receive a real `String` (use `frame://` or `tcp://` for bytes).
#[derive(Debug, Default, Clone)]
pub struct Text {
    /// How many bytes of the buffer are already known to contain no `\n`, so a long line that
    /// arrives in many reads is scanned once, not once per read.
    scanned: usize,
}

impl Protocol for Text {
    type Message = String;
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
        let start = self.scanned.min(buf.len());
        match memchr::memchr(b'\n', &buf[start..]) {
            Some(i) => {
                self.scanned = 0;
                Ok(Input::Packet(start + i + 1))
            }
            None => {
                self.scanned = buf.len();
                Ok(Input::NeedMore)
            }
        }
    }

    fn decode(
        &mut self,
        mut packet: BytesMut,
        _wire: &mut Wire<'_>,
    ) -> Result<Option<String>, Rejection> {
        if packet.last() == Some(&b'\n') {
            packet.truncate(packet.len() - 1);
            if packet.last() == Some(&b'\r') {
                packet.truncate(packet.len() - 1);
            }
        }
        String::from_utf8(packet.to_vec())
            .map(Some)
            .map_err(|_| Rejection::new("text message is not valid UTF-8"))
    }

    fn encode(&mut self, msg: Payload, wire: &mut Wire<'_>) -> Result<(), Rejection> {
        let dst = wire.buf();
        dst.reserve(msg.0.len() + 1);
        dst.put_slice(&msg.0);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::decode_all;

    #[test]
    fn message_split_into_single_bytes() {
        let mut p = Text::default();
        let (msgs, rest) = decode_all(&mut p, b"hello\r\n".iter().map(|b| vec![*b]), 1024);
        assert_eq!(msgs.expect("valid"), vec!["hello".to_string()]);
        assert!(rest.is_empty());
    }

    #[test]
    fn many_messages_in_one_read() {
        let mut p = Text::default();
        let (msgs, rest) = decode_all(&mut p, [b"a\nbb\r\nccc\npartial".to_vec()], 1024);
        assert_eq!(msgs.expect("valid"), vec!["a", "bb", "ccc"]);
        assert_eq!(&rest[..], b"partial");
    }

    #[test]
    fn empty_line_is_an_empty_message() {
        let mut p = Text::default();
        let (msgs, _) = decode_all(&mut p, [b"\n\r\n".to_vec()], 1024);
        assert_eq!(msgs.expect("valid"), vec!["", ""]);
    }

    #[test]
    fn invalid_utf8_is_rejected_with_a_reason() {
        let mut p = Text::default();
        let (msgs, _) = decode_all(&mut p, [b"ok\n\xff\xfe\n".to_vec()], 1024);
        let err = msgs.expect_err("invalid utf-8");
        assert!(err.reason().contains("UTF-8"), "{err}");
    }

    #[test]
    fn line_longer_than_limit_without_newline_is_rejected() {
        let mut p = Text::default();
        let chunks = std::iter::repeat_n(vec![b'x'; 100], 20);
        let (msgs, _) = decode_all(&mut p, chunks, 1000);
        assert!(msgs
            .expect_err("too long")
            .reason()
            .contains("max_package_size"));
    }

    #[test]
    fn encode_appends_newline() {
        let mut dst = BytesMut::new();
        Text::default()
            .encode(Payload::from("Hello, x!"), &mut Wire::new(&mut dst))
            .expect("encode");
        assert_eq!(&dst[..], b"Hello, x!\n");
    }
}
