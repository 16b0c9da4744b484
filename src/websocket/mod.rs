//! WebSocket (RFC 6455) servers: `Worker::websocket("websocket://0.0.0.0:8081")`.
//!
//! `on_message` receives whole messages (fragments are joined, text is checked to be UTF-8);
//! pings are answered, close frames are answered and the connection then closes; client frames
//! must be masked. A handshake hook can read the upgrade request and refuse it, or accept it
//! choosing a subprotocol and adding headers and cookies ([`WsAccept`]); the handshake has a
//! deadline. Outbound connections can send headers and offer subprotocols. The codec is hand-written (see ARCHITECTURE.md for why).

mod codec;
mod deflate;
mod handshake;
mod worker;

pub use codec::{HandshakeInfo, WebSocket, WsMessage, WsOutput};
pub use deflate::DeflateSettings;
pub use handshake::WsAccept;
