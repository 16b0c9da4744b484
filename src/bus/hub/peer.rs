//! A process connected to the hub: its outbound frames (bounded) and its subscriptions.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::BytesMut;
use tokio::sync::Notify;

use super::router::SubEntry;
use super::wire::{self, Frame};

/// Unwritten bytes the hub holds for one peer; past it, frames to that peer are dropped and
/// counted (a slow consumer must not take the hub's memory).
pub(super) const MAX_PEER_BACKLOG: usize = 64 * 1024 * 1024;

/// Why a frame did not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotSent {
    /// The peer has gone.
    Closed,
    /// The peer reads too slowly: [`MAX_PEER_BACKLOG`] is waiting already.
    Backlogged,
    /// The frame does not fit the wire format (never the case for what the hub decoded).
    Unencodable,
}

/// One connected process.
pub(super) struct Peer {
    pub(super) id: u64,
    out: RefCell<BytesMut>,
    pub(super) wake: Notify,
    pub(super) closed: Cell<bool>,
    pub(super) subs: RefCell<HashMap<u32, Rc<SubEntry>>>,
}

impl Peer {
    pub(super) fn new(id: u64) -> Peer {
        Peer {
            id,
            out: RefCell::new(BytesMut::new()),
            wake: Notify::new(),
            closed: Cell::new(false),
            subs: RefCell::new(HashMap::new()),
        }
    }

    /// Queues `frame` for the peer's writer.
    pub(super) fn send(&self, frame: &Frame) -> Result<(), NotSent> {
        self.send_encoded(|out| wire::encode(frame, out))
    }

    /// Queues a message delivery encoded straight from the published message's parts.
    pub(super) fn send_msg(&self, m: &wire::MsgRef<'_>) -> Result<(), NotSent> {
        self.send_encoded(|out| wire::encode_msg(m, out))
    }

    /// Queues a task delivery encoded from borrowed parts.
    pub(super) fn send_task(&self, t: &wire::TaskRef<'_>) -> Result<(), NotSent> {
        self.send_encoded(|out| wire::encode_task(t, out))
    }

    fn send_encoded(
        &self,
        encode: impl FnOnce(&mut bytes::BytesMut) -> Result<(), wire::TooLongForFrame>,
    ) -> Result<(), NotSent> {
        if self.closed.get() {
            return Err(NotSent::Closed);
        }
        let mut out = self.out.borrow_mut();
        if out.len() > MAX_PEER_BACKLOG {
            return Err(NotSent::Backlogged);
        }
        encode(&mut out).map_err(|_| NotSent::Unencodable)?;
        drop(out);
        self.wake.notify_one();
        Ok(())
    }

    /// Everything queued so far, for the writer.
    pub(super) fn take_output(&self) -> Option<bytes::Bytes> {
        let mut out = self.out.borrow_mut();
        (!out.is_empty()).then(|| out.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_peer_takes_nothing() {
        let p = Peer::new(1);
        assert_eq!(p.send(&Frame::Ping), Ok(()));
        assert!(p.take_output().is_some());
        p.closed.set(true);
        assert_eq!(p.send(&Frame::Ping), Err(NotSent::Closed));
        assert!(p.take_output().is_none());
    }

    #[test]
    fn a_peer_that_does_not_read_is_cut_off_at_its_backlog() {
        let p = Peer::new(1);
        let big = Frame::Pub {
            subject: "s".into(),
            reply: None,
            headers: Default::default(),
            payload: bytes::Bytes::from(vec![0u8; 1024 * 1024]),
        };
        let mut sent = 0;
        while p.send(&big).is_ok() {
            sent += 1;
            assert!(sent < 100, "no bound");
        }
        assert_eq!(p.send(&big), Err(NotSent::Backlogged));
        assert!(sent >= 64);
    }
}
