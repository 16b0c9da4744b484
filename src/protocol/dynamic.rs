//! The protocol chosen by a URL's scheme at run time, for `Worker::new(url)`.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::{Frame, Input, Payload, Protocol, Raw, Rejection, Text, Wire};
use crate::error::{Error, ErrorKind, Result};

/// A message from one of the built-in protocols.
///
/// `text://` gives [`Message::Text`]; `frame://`, `tcp://` and `udp://` give
/// [`Message::Binary`]. It prints as text (`println!("{data}")`), lossily for binary data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// A UTF-8 message (one line of `text://`).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// The message as text, if it is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Message::Text(s) => Some(s),
            Message::Binary(_) => None,
        }
    }

    /// The message's bytes, whatever its kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The message's bytes, without copying.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Message::Text(s) => Bytes::from(s),
            Message::Binary(b) => b,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(s) => f.write_str(s),
            Message::Binary(b) => f.write_str(&String::from_utf8_lossy(b)),
        }
    }
}

impl PartialEq<str> for Message {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Message {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[derive(Debug, Clone)]
enum Builtin {
    Text(Text),
    Frame(Frame),
    Raw(Raw),
}

/// One of the built-in protocols, picked by name: `text`, `frame`, `tcp`/`udp`/`unix` (raw).
#[derive(Debug, Clone)]
pub struct Dynamic(Builtin);

impl Dynamic {
    /// The built-in protocol for a URL scheme's protocol part.
    pub fn by_name(name: &str) -> Result<Dynamic> {
        Ok(Dynamic(match name {
            "text" => Builtin::Text(Text::default()),
            "frame" => Builtin::Frame(Frame),
            "tcp" | "udp" | "unix" | "raw" => Builtin::Raw(Raw),
            "http" | "https" => {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    "http:// is typed: declare it with Worker::http(url)",
                ))
            }
            "websocket" | "ws" | "wss" => {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    "websocket:// is typed: declare it with Worker::websocket(url)",
                ))
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!("unknown protocol {other:?}: built in are text, frame, tcp, udp, unix"),
                ))
            }
        }))
    }
}

impl Protocol for Dynamic {
    type Message = Message;
    type Output = Payload;

    fn output_from_payload(payload: Payload) -> Option<Payload> {
        Some(payload)
    }

    fn export_state(&self) -> Option<Vec<u8>> {
        // Every built-in keeps nothing between messages (a text line half-read restarts its
        // scan from the bytes that travel with the connection).
        Some(Vec::new())
    }

    fn import_state(&mut self, _state: &[u8]) -> Result<(), Rejection> {
        Ok(())
    }

    fn input(&mut self, buf: &[u8], wire: &mut Wire<'_>) -> Result<Input, Rejection> {
        match &mut self.0 {
            Builtin::Text(p) => p.input(buf, wire),
            Builtin::Frame(p) => p.input(buf, wire),
            Builtin::Raw(p) => p.input(buf, wire),
        }
    }

    fn decode(
        &mut self,
        packet: BytesMut,
        wire: &mut Wire<'_>,
    ) -> Result<Option<Message>, Rejection> {
        Ok(match &mut self.0 {
            Builtin::Text(p) => p.decode(packet, wire)?.map(Message::Text),
            Builtin::Frame(p) => p.decode(packet, wire)?.map(Message::Binary),
            Builtin::Raw(p) => p.decode(packet, wire)?.map(Message::Binary),
        })
    }

    fn encode(&mut self, msg: Payload, wire: &mut Wire<'_>) -> Result<(), Rejection> {
        match &mut self.0 {
            Builtin::Text(p) => p.encode(msg, wire),
            Builtin::Frame(p) => p.encode(msg, wire),
            Builtin::Raw(p) => p.encode(msg, wire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_message_displays_as_itself() {
        assert_eq!(Message::Text("hi".into()).to_string(), "hi");
    }

    #[test]
    fn unknown_protocol_is_an_error() {
        assert!(Dynamic::by_name("gopher").is_err());
    }
}
