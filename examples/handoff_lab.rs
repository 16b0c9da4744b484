//! Live connection hand-off on reload: a `text` group (port 7100) and a `websocket` group
//! (port 7101), two processes each, both with `hand_off(true)`, and a `pusher` that sends
//! `g:N` to the group `all` and `u:N` to the uid `u{N % 10}` every 50 ms.
//!
//! A client line `join:UID` binds the connection to UID and the group `all`; `pad:N` puts N
//! bytes in the connection's session (over 64 KiB it cannot move); `n:SEQ` is
//! answered `VERSION:SEQ:PEER_PORT:CLIENT_ID:PID:MOVES`, where MOVES counts (in the
//! connection's session) how many reloads handed the connection over. Run it, connect with
//! `nc 127.0.0.1 7100`, send `n:1`, run `reload` and send `n:2`: same connection, new PID.
//!
//! `examples/handoff_lab_v2.rs` is the same program answering `v2`: the tests swap the
//! binary between two reloads to see the new code take over live connections.
//! `HANDOFF_TEXT_LISTEN`, `HANDOFF_WS_LISTEN` and `HANDOFF_PUSH_MS` change the defaults;
//! `HANDOFF_TLS_CERT` and `HANDOFF_TLS_KEY` (PEM files) put the WebSocket group on TLS, whose
//! connections cannot move and are closed with 1012 on reload instead.

/// The version this build answers with.
const VERSION: &str = "v1";

include!("shared/handoff_lab.rs");
