//! WebSocket (RFC 6455) servers: `Worker::websocket("websocket://0.0.0.0:8081")`.
//!
//! `on_message` receives whole messages (fragments are joined, text is checked to be UTF-8);
//! pings are answered, close frames are answered and the connection then closes; client frames
//! must be masked. A handshake hook can read the upgrade request and refuse it; the handshake has
//! a deadline. The codec is hand-written (see ARCHITECTURE.md for why).

mod codec;
mod worker;

pub use codec::{HandshakeInfo, WebSocket, WsMessage, WsOutput};
