//! The hub's framing: every frame is a 4-byte big-endian length, a one-byte operation, then the
//! operation's fields. I/O-free and total: any input gives a frame, "need more", or an error.
//!
//! Field encodings: `str` = u16 length + UTF-8; `opt` = u8 0/1 + str; `bytes` = u32 length +
//! bytes; `headers` = u16 count + (str, str) pairs. See docs/wire.md.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) use crate::bus::transport::{KvOp, KvResult};
use crate::bus::Headers;

/// Largest frame accepted by default: the payload limit plus room for subject and headers.
pub(crate) const FRAME_OVERHEAD: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    Hello {
        name: String,
    },
    Sub {
        sid: u32,
        subject: String,
        queue: Option<String>,
    },
    Unsub {
        sid: u32,
    },
    Pub {
        subject: String,
        reply: Option<String>,
        headers: Headers,
        payload: Bytes,
    },
    Msg {
        sid: u32,
        subject: String,
        reply: Option<String>,
        headers: Headers,
        payload: Bytes,
    },
    Ping,
    Pong,
    Err {
        message: String,
    },
    Kv {
        req: u32,
        op: KvOp,
    },
    KvReply {
        req: u32,
        result: KvResult,
    },
    PoolJoin {
        pool: String,
        concurrency: u32,
        max_queue: u32,
    },
    Submit {
        pool: String,
        reply: Option<String>,
        max_retries: u8,
        payload: Bytes,
    },
    /// A task for a member; `reply` is the submitter's, so that a result finished after the
    /// hub went away can still reach it directly.
    Task {
        pool: String,
        task: u64,
        attempt: u8,
        reply: Option<String>,
        payload: Bytes,
    },
    /// A task's result; `reply` repeats the task's, so that a result still queued when the
    /// hub went away can be sent to its submitter directly once a new hub is up.
    TaskDone {
        task: u64,
        ok: bool,
        reply: Option<String>,
        payload: Bytes,
    },
}

mod op {
    pub(super) const HELLO: u8 = 1;
    pub(super) const SUB: u8 = 2;
    pub(super) const UNSUB: u8 = 3;
    pub(super) const PUB: u8 = 4;
    pub(super) const MSG: u8 = 5;
    pub(super) const PING: u8 = 6;
    pub(super) const PONG: u8 = 7;
    pub(super) const ERR: u8 = 8;
    pub(super) const KV: u8 = 9;
    pub(super) const KV_REPLY: u8 = 10;
    pub(super) const POOL_JOIN: u8 = 11;
    pub(super) const SUBMIT: u8 = 12;
    pub(super) const TASK: u8 = 13;
    pub(super) const TASK_DONE: u8 = 14;
}

/// Why bytes could not be read as a frame. The connection that sent them is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(why: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(why.into()))
}

/// A cursor over one frame's fields: strings are borrowed from the frame (checked as UTF-8,
/// not copied) and byte fields are slices of it.
struct Reader<'a> {
    frame: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(frame: &'a Bytes) -> Reader<'a> {
        Reader { frame, at: 0 }
    }
    fn remaining(&self) -> usize {
        self.frame.len() - self.at
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return err(format!("truncated frame: {what}"));
        }
        let frame: &'a [u8] = self.frame;
        let taken = &frame[self.at..self.at + n];
        self.at += n;
        Ok(taken)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1, "u8")?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.array("u16").map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.array("u32").map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.array("u64").map(u64::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, WireError> {
        self.array("i64").map(i64::from_be_bytes)
    }
    fn str(&mut self) -> Result<&'a str, WireError> {
        let n = self.u16()? as usize;
        let b = self.take(n, "string")?;
        std::str::from_utf8(b).map_err(|_| WireError("string is not UTF-8".into()))
    }
    fn string(&mut self) -> Result<String, WireError> {
        self.str().map(str::to_owned)
    }
    fn opt(&mut self) -> Result<Option<&'a str>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            f => err(format!("bad option flag {f}")),
        }
    }
    fn opt_string(&mut self) -> Result<Option<String>, WireError> {
        Ok(self.opt()?.map(str::to_owned))
    }
    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let n = self.u32()? as usize;
        let start = self.at;
        self.take(n, "bytes")?;
        Ok(self.frame.slice(start..start + n))
    }
    fn opt_bytes(&mut self) -> Result<Option<Bytes>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.bytes().map(Some),
            f => err(format!("bad option flag {f}")),
        }
    }
    fn headers(&mut self) -> Result<Headers, WireError> {
        let n = self.u16()? as usize;
        let mut h = Headers::default();
        for _ in 0..n {
            let k = self.string()?;
            let v = self.string()?;
            h.push(k, v);
        }
        Ok(h)
    }
    /// Every field read: nothing may follow.
    fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => err(format!("{n} stray bytes after the frame's fields")),
        }
    }
}

/// A field too long for its length prefix: the frame is refused, never cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLongForFrame {
    pub(crate) size: usize,
    pub(crate) limit: usize,
}

fn fits<T: TryFrom<usize>>(size: usize, limit: usize) -> Result<T, TooLongForFrame> {
    T::try_from(size).map_err(|_| TooLongForFrame { size, limit })
}

fn put_str(dst: &mut BytesMut, s: &str) -> Result<(), TooLongForFrame> {
    dst.put_u16(fits(s.len(), u16::MAX as usize)?);
    dst.put_slice(s.as_bytes());
    Ok(())
}

fn put_opt(dst: &mut BytesMut, s: &Option<String>) -> Result<(), TooLongForFrame> {
    put_opt_str(dst, s.as_deref())
}

fn put_bytes(dst: &mut BytesMut, b: &[u8]) -> Result<(), TooLongForFrame> {
    dst.put_u32(fits(b.len(), u32::MAX as usize)?);
    dst.put_slice(b);
    Ok(())
}

fn put_headers(dst: &mut BytesMut, h: &Headers) -> Result<(), TooLongForFrame> {
    let pairs = h.pairs();
    dst.put_u16(fits(pairs.len(), u16::MAX as usize)?);
    for (k, v) in pairs {
        put_str(dst, k)?;
        put_str(dst, v)?;
    }
    Ok(())
}

/// A message to deliver, borrowed from the one published: the hub encodes one per recipient
/// without copying subject, reply, headers or payload into a `Frame` first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsgRef<'a> {
    pub(crate) sid: u32,
    pub(crate) subject: &'a str,
    pub(crate) reply: Option<&'a str>,
    pub(crate) headers: &'a Headers,
    pub(crate) payload: &'a [u8],
}

/// A task to hand to a pool's process, borrowed from the pool's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskRef<'a> {
    pub(crate) pool: &'a str,
    pub(crate) task: u64,
    pub(crate) attempt: u8,
    pub(crate) reply: Option<&'a str>,
    pub(crate) payload: &'a [u8],
}

/// A task to submit, borrowed from the submitter's kept copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubmitRef<'a> {
    pub(crate) pool: &'a str,
    pub(crate) reply: Option<&'a str>,
    pub(crate) max_retries: u8,
    pub(crate) payload: &'a [u8],
}

fn put_submit(dst: &mut BytesMut, t: &SubmitRef<'_>) -> Result<(), TooLongForFrame> {
    dst.put_u8(op::SUBMIT);
    put_str(dst, t.pool)?;
    put_opt_str(dst, t.reply)?;
    dst.put_u8(t.max_retries);
    put_bytes(dst, t.payload)
}

/// Appends the wire form of a `Submit` frame made of `t`'s parts, as [`encode`] would.
pub(crate) fn encode_submit(t: &SubmitRef<'_>, dst: &mut BytesMut) -> Result<(), TooLongForFrame> {
    framed(dst, |dst| put_submit(dst, t))
}

fn put_task(dst: &mut BytesMut, t: &TaskRef<'_>) -> Result<(), TooLongForFrame> {
    dst.put_u8(op::TASK);
    put_str(dst, t.pool)?;
    dst.put_u64(t.task);
    dst.put_u8(t.attempt);
    put_opt_str(dst, t.reply)?;
    put_bytes(dst, t.payload)
}

/// Appends the wire form of a `Task` frame made of `t`'s parts, as [`encode`] would.
pub(crate) fn encode_task(t: &TaskRef<'_>, dst: &mut BytesMut) -> Result<(), TooLongForFrame> {
    framed(dst, |dst| put_task(dst, t))
}

fn put_opt_str(dst: &mut BytesMut, s: Option<&str>) -> Result<(), TooLongForFrame> {
    match s {
        None => {
            dst.put_u8(0);
            Ok(())
        }
        Some(s) => {
            dst.put_u8(1);
            put_str(dst, s)
        }
    }
}

/// Writes a frame's length prefix around what `fields` writes; on failure `dst` is left as
/// it was.
fn framed(
    dst: &mut BytesMut,
    fields: impl FnOnce(&mut BytesMut) -> Result<(), TooLongForFrame>,
) -> Result<(), TooLongForFrame> {
    let start = dst.len();
    dst.put_u32(0);
    let written = fields(dst).and_then(|()| fits::<u32>(dst.len() - start - 4, u32::MAX as usize));
    match written {
        Ok(n) => {
            dst[start..start + 4].copy_from_slice(&n.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

fn put_msg(dst: &mut BytesMut, m: &MsgRef<'_>) -> Result<(), TooLongForFrame> {
    dst.put_u8(op::MSG);
    dst.put_u32(m.sid);
    put_str(dst, m.subject)?;
    put_opt_str(dst, m.reply)?;
    put_headers(dst, m.headers)?;
    put_bytes(dst, m.payload)
}

/// Appends the wire form of a `Msg` frame made of `m`'s parts, as [`encode`] would.
pub(crate) fn encode_msg(m: &MsgRef<'_>, dst: &mut BytesMut) -> Result<(), TooLongForFrame> {
    framed(dst, |dst| put_msg(dst, m))
}

/// Appends the wire form of `frame` to `dst`; a frame whose strings or sizes do not fit the
/// format is refused and leaves `dst` as it was.
pub(crate) fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), TooLongForFrame> {
    framed(dst, |dst| encode_fields(frame, dst))
}

fn encode_fields(frame: &Frame, dst: &mut BytesMut) -> Result<(), TooLongForFrame> {
    match frame {
        Frame::Hello { name } => {
            dst.put_u8(op::HELLO);
            put_str(dst, name)?;
        }
        Frame::Sub {
            sid,
            subject,
            queue,
        } => {
            dst.put_u8(op::SUB);
            dst.put_u32(*sid);
            put_str(dst, subject)?;
            put_opt(dst, queue)?;
        }
        Frame::Unsub { sid } => {
            dst.put_u8(op::UNSUB);
            dst.put_u32(*sid);
        }
        Frame::Pub {
            subject,
            reply,
            headers,
            payload,
        } => {
            dst.put_u8(op::PUB);
            put_str(dst, subject)?;
            put_opt(dst, reply)?;
            put_headers(dst, headers)?;
            put_bytes(dst, payload)?;
        }
        Frame::Msg {
            sid,
            subject,
            reply,
            headers,
            payload,
        } => put_msg(
            dst,
            &MsgRef {
                sid: *sid,
                subject,
                reply: reply.as_deref(),
                headers,
                payload,
            },
        )?,
        Frame::Ping => dst.put_u8(op::PING),
        Frame::Pong => dst.put_u8(op::PONG),
        Frame::Err { message } => {
            dst.put_u8(op::ERR);
            put_str(dst, message)?;
        }
        Frame::Kv { req, op: kv } => {
            dst.put_u8(op::KV);
            dst.put_u32(*req);
            match kv {
                KvOp::Get { key } => {
                    dst.put_u8(0);
                    put_str(dst, key)?;
                }
                KvOp::Set { key, value, ttl_ms } => {
                    dst.put_u8(1);
                    put_str(dst, key)?;
                    put_bytes(dst, value)?;
                    dst.put_u64(*ttl_ms);
                }
                KvOp::Cas {
                    key,
                    expected,
                    value,
                    ttl_ms,
                } => {
                    dst.put_u8(2);
                    put_str(dst, key)?;
                    match expected {
                        None => dst.put_u8(0),
                        Some(e) => {
                            dst.put_u8(1);
                            put_bytes(dst, e)?;
                        }
                    }
                    put_bytes(dst, value)?;
                    dst.put_u64(*ttl_ms);
                }
                KvOp::Incr { key, by, ttl_ms } => {
                    dst.put_u8(3);
                    put_str(dst, key)?;
                    dst.put_i64(*by);
                    dst.put_u64(*ttl_ms);
                }
                KvOp::Delete { key } => {
                    dst.put_u8(4);
                    put_str(dst, key)?;
                }
            }
        }
        Frame::KvReply { req, result } => {
            dst.put_u8(op::KV_REPLY);
            dst.put_u32(*req);
            match result {
                KvResult::Value(None) => dst.put_u8(0),
                KvResult::Value(Some(v)) => {
                    dst.put_u8(1);
                    put_bytes(dst, v)?;
                }
                KvResult::Done(b) => {
                    dst.put_u8(2);
                    dst.put_u8(u8::from(*b));
                }
                KvResult::Number(n) => {
                    dst.put_u8(3);
                    dst.put_i64(*n);
                }
                KvResult::Error(e) => {
                    dst.put_u8(4);
                    put_str(dst, e)?;
                }
            }
        }
        Frame::PoolJoin {
            pool,
            concurrency,
            max_queue,
        } => {
            dst.put_u8(op::POOL_JOIN);
            put_str(dst, pool)?;
            dst.put_u32(*concurrency);
            dst.put_u32(*max_queue);
        }
        Frame::Submit {
            pool,
            reply,
            max_retries,
            payload,
        } => put_submit(
            dst,
            &SubmitRef {
                pool,
                reply: reply.as_deref(),
                max_retries: *max_retries,
                payload,
            },
        )?,
        Frame::Task {
            pool,
            task,
            attempt,
            reply,
            payload,
        } => {
            put_task(
                dst,
                &TaskRef {
                    pool,
                    task: *task,
                    attempt: *attempt,
                    reply: reply.as_deref(),
                    payload,
                },
            )?;
        }
        Frame::TaskDone {
            task,
            ok,
            reply,
            payload,
        } => {
            dst.put_u8(op::TASK_DONE);
            dst.put_u64(*task);
            dst.put_u8(u8::from(*ok));
            put_opt(dst, reply)?;
            put_bytes(dst, payload)?;
        }
    }
    Ok(())
}

/// Cuts the next frame off `buf`: `Ok(None)` means more bytes are needed.
pub(crate) fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, WireError> {
    match cut_frame(buf, max_frame)? {
        Some(frame) => parse(&frame).map(Some),
        None => Ok(None),
    }
}

/// Cuts the next frame's fields (without its length prefix) off `buf`, for [`parse`] or
/// [`parse_inbound`]: `Ok(None)` means more bytes are needed.
pub(crate) fn cut_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Bytes>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return err("empty frame");
    }
    if len > max_frame {
        return err(format!(
            "frame of {len} bytes exceeds the limit of {max_frame}"
        ));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// What the hub reads most, borrowed from the frame's bytes: no subject, pool name or reply
/// is copied on the way in. Everything else comes as an owned [`Frame`].
#[derive(Debug, PartialEq)]
pub(crate) enum Inbound<'a> {
    Pub {
        subject: &'a str,
        reply: Option<&'a str>,
        headers: Headers,
        payload: Bytes,
    },
    Submit {
        pool: &'a str,
        reply: Option<&'a str>,
        max_retries: u8,
        payload: Bytes,
    },
    /// A task's result; the reply subject it repeats is for a result that outlives the hub
    /// (the hub itself does not need it).
    TaskDone {
        task: u64,
        ok: bool,
        reply: Option<&'a str>,
        payload: Bytes,
    },
    Other(Frame),
}

impl Inbound<'_> {
    /// The same frame, owned.
    fn into_frame(self) -> Frame {
        match self {
            Inbound::Pub {
                subject,
                reply,
                headers,
                payload,
            } => Frame::Pub {
                subject: subject.to_owned(),
                reply: reply.map(str::to_owned),
                headers,
                payload,
            },
            Inbound::Submit {
                pool,
                reply,
                max_retries,
                payload,
            } => Frame::Submit {
                pool: pool.to_owned(),
                reply: reply.map(str::to_owned),
                max_retries,
                payload,
            },
            Inbound::TaskDone {
                task,
                ok,
                reply,
                payload,
            } => Frame::TaskDone {
                task,
                ok,
                reply: reply.map(str::to_owned),
                payload,
            },
            Inbound::Other(frame) => frame,
        }
    }
}

/// Reads the fields [`cut_frame`] cut, borrowing where the hub can.
pub(crate) fn parse_inbound(frame: &Bytes) -> Result<Inbound<'_>, WireError> {
    let mut r = Reader::new(frame);
    let inbound = match r.u8()? {
        op::PUB => Inbound::Pub {
            subject: r.str()?,
            reply: r.opt()?,
            headers: r.headers()?,
            payload: r.bytes()?,
        },
        op::SUBMIT => Inbound::Submit {
            pool: r.str()?,
            reply: r.opt()?,
            max_retries: r.u8()?,
            payload: r.bytes()?,
        },
        op::TASK_DONE => Inbound::TaskDone {
            task: r.u64()?,
            ok: r.u8()? != 0,
            reply: r.opt()?,
            payload: r.bytes()?,
        },
        other => Inbound::Other(parse_other(other, &mut r)?),
    };
    r.finish()?;
    Ok(inbound)
}

/// Reads the fields [`cut_frame`] cut into an owned frame.
pub(crate) fn parse(frame: &Bytes) -> Result<Frame, WireError> {
    parse_inbound(frame).map(Inbound::into_frame)
}

/// The fields of the frames [`parse_inbound`] does not borrow, after their operation byte.
fn parse_other(code: u8, r: &mut Reader<'_>) -> Result<Frame, WireError> {
    let frame = match code {
        op::HELLO => Frame::Hello { name: r.string()? },
        op::SUB => Frame::Sub {
            sid: r.u32()?,
            subject: r.string()?,
            queue: r.opt_string()?,
        },
        op::UNSUB => Frame::Unsub { sid: r.u32()? },
        op::MSG => Frame::Msg {
            sid: r.u32()?,
            subject: r.string()?,
            reply: r.opt_string()?,
            headers: r.headers()?,
            payload: r.bytes()?,
        },
        op::PING => Frame::Ping,
        op::PONG => Frame::Pong,
        op::ERR => Frame::Err {
            message: r.string()?,
        },
        op::KV => {
            let req = r.u32()?;
            let kv = match r.u8()? {
                0 => KvOp::Get { key: r.string()? },
                1 => KvOp::Set {
                    key: r.string()?,
                    value: r.bytes()?,
                    ttl_ms: r.u64()?,
                },
                2 => KvOp::Cas {
                    key: r.string()?,
                    expected: r.opt_bytes()?,
                    value: r.bytes()?,
                    ttl_ms: r.u64()?,
                },
                3 => KvOp::Incr {
                    key: r.string()?,
                    by: r.i64()?,
                    ttl_ms: r.u64()?,
                },
                4 => KvOp::Delete { key: r.string()? },
                k => return err(format!("unknown shared-state operation {k}")),
            };
            Frame::Kv { req, op: kv }
        }
        op::KV_REPLY => {
            let req = r.u32()?;
            let result = match r.u8()? {
                0 => KvResult::Value(None),
                1 => KvResult::Value(Some(r.bytes()?)),
                2 => KvResult::Done(r.u8()? != 0),
                3 => KvResult::Number(r.i64()?),
                4 => KvResult::Error(r.string()?),
                k => return err(format!("unknown shared-state result {k}")),
            };
            Frame::KvReply { req, result }
        }
        op::POOL_JOIN => Frame::PoolJoin {
            pool: r.string()?,
            concurrency: r.u32()?,
            max_queue: r.u32()?,
        },
        op::TASK => Frame::Task {
            pool: r.string()?,
            task: r.u64()?,
            attempt: r.u8()?,
            reply: r.opt_string()?,
            payload: r.bytes()?,
        },
        other => return err(format!("unknown operation {other}")),
    };
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let mut buf = BytesMut::new();
        encode(&f, &mut buf).expect("encodable");
        let back = decode(&mut buf, 1 << 20).expect("valid").expect("complete");
        assert_eq!(back, f);
        assert!(buf.is_empty());
    }

    fn cut_one(f: &Frame) -> Bytes {
        let mut buf = BytesMut::new();
        encode(f, &mut buf).expect("encodable");
        let frame = cut_frame(&mut buf, 1 << 20)
            .expect("valid")
            .expect("complete");
        assert!(buf.is_empty());
        frame
    }

    #[test]
    fn the_hubs_busiest_frames_are_read_borrowed_and_agree_with_the_owned_ones() {
        let publish = Frame::Pub {
            subject: "a.b".into(),
            reply: Some("_INBOX.x.1".into()),
            headers: Headers::default().with("k", "v"),
            payload: Bytes::from_static(b"p"),
        };
        let frame = cut_one(&publish);
        assert_eq!(
            parse_inbound(&frame),
            Ok(Inbound::Pub {
                subject: "a.b",
                reply: Some("_INBOX.x.1"),
                headers: Headers::default().with("k", "v"),
                payload: Bytes::from_static(b"p"),
            })
        );
        let submit = Frame::Submit {
            pool: "thumbs".into(),
            reply: None,
            max_retries: 3,
            payload: Bytes::from_static(b"img"),
        };
        let frame = cut_one(&submit);
        assert_eq!(
            parse_inbound(&frame),
            Ok(Inbound::Submit {
                pool: "thumbs",
                reply: None,
                max_retries: 3,
                payload: Bytes::from_static(b"img"),
            })
        );
        let done = Frame::TaskDone {
            task: 9,
            ok: false,
            reply: Some("r".into()),
            payload: Bytes::from_static(b"why"),
        };
        let frame = cut_one(&done);
        assert_eq!(
            parse_inbound(&frame),
            Ok(Inbound::TaskDone {
                task: 9,
                ok: false,
                reply: Some("r"),
                payload: Bytes::from_static(b"why"),
            })
        );
        let frame = cut_one(&Frame::Unsub { sid: 4 });
        assert_eq!(
            parse_inbound(&frame),
            Ok(Inbound::Other(Frame::Unsub { sid: 4 }))
        );
    }

    #[test]
    fn a_borrowed_read_refuses_what_the_owned_one_refuses() {
        let mut frame = BytesMut::from(
            &cut_one(&Frame::Submit {
                pool: "p".into(),
                reply: None,
                max_retries: 0,
                payload: Bytes::new(),
            })[..],
        );
        frame.extend_from_slice(b"x");
        let with_stray = frame.clone().freeze();
        assert!(parse_inbound(&with_stray).is_err());
        assert!(parse(&with_stray).is_err());
        let truncated = frame.freeze().slice(..4);
        assert!(parse_inbound(&truncated).is_err());
        let bad_utf8 = Bytes::from_static(&[op::PUB, 0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse_inbound(&bad_utf8),
            Err(WireError("string is not UTF-8".into()))
        );
    }

    #[test]
    fn a_string_too_long_for_its_prefix_is_refused_and_nothing_is_written() {
        let mut buf = BytesMut::from(&b"kept"[..]);
        let long = "k".repeat(u16::MAX as usize + 1);
        let refused = encode(
            &Frame::Kv {
                req: 1,
                op: KvOp::Get { key: long.clone() },
            },
            &mut buf,
        );
        assert_eq!(
            refused,
            Err(TooLongForFrame {
                size: long.len(),
                limit: u16::MAX as usize
            })
        );
        assert_eq!(&buf[..], b"kept");
        let headers = Headers::default().with("h", &long);
        let refused = encode(
            &Frame::Pub {
                subject: "s".into(),
                reply: None,
                headers,
                payload: Bytes::new(),
            },
            &mut buf,
        );
        assert!(refused.is_err());
        assert_eq!(&buf[..], b"kept");
    }

    #[test]
    fn a_delivery_encoded_from_borrowed_parts_is_the_msg_frame() {
        let headers = Headers::default().with("k", "v");
        let payload = Bytes::from_static(b"payload");
        for reply in [None, Some("_INBOX.1")] {
            let mut from_parts = BytesMut::from(&b"x"[..]);
            encode_msg(
                &MsgRef {
                    sid: 7,
                    subject: "a.b",
                    reply,
                    headers: &headers,
                    payload: &payload,
                },
                &mut from_parts,
            )
            .expect("fits");
            let mut from_frame = BytesMut::from(&b"x"[..]);
            let frame = Frame::Msg {
                sid: 7,
                subject: "a.b".into(),
                reply: reply.map(str::to_string),
                headers: headers.clone(),
                payload: payload.clone(),
            };
            encode(&frame, &mut from_frame).expect("fits");
            assert_eq!(from_parts, from_frame);
        }
        let mut kept = BytesMut::from(&b"kept"[..]);
        let long = "s".repeat(u16::MAX as usize + 1);
        let refused = encode_msg(
            &MsgRef {
                sid: 1,
                subject: &long,
                reply: None,
                headers: &headers,
                payload: &payload,
            },
            &mut kept,
        );
        assert!(refused.is_err());
        assert_eq!(&kept[..], b"kept");
    }

    #[test]
    fn a_task_encoded_from_borrowed_parts_is_the_task_frame() {
        let payload = Bytes::from_static(b"work");
        for reply in [None, Some("_INBOX.9")] {
            let mut from_parts = BytesMut::new();
            let parts = TaskRef {
                pool: "thumbs",
                task: 42,
                attempt: 2,
                reply,
                payload: &payload,
            };
            encode_task(&parts, &mut from_parts).expect("fits");
            let mut from_frame = BytesMut::new();
            let frame = Frame::Task {
                pool: "thumbs".into(),
                task: 42,
                attempt: 2,
                reply: reply.map(str::to_string),
                payload: payload.clone(),
            };
            encode(&frame, &mut from_frame).expect("fits");
            assert_eq!(from_parts, from_frame);
        }
    }

    #[test]
    fn every_frame_round_trips() {
        let mut h = Headers::default();
        h.push("a".into(), "b".into());
        for f in [
            Frame::Hello { name: "w".into() },
            Frame::Sub {
                sid: 7,
                subject: "a.*".into(),
                queue: Some("q".into()),
            },
            Frame::Unsub { sid: 7 },
            Frame::Pub {
                subject: "a.b".into(),
                reply: Some("r".into()),
                headers: h.clone(),
                payload: Bytes::from_static(b"x"),
            },
            Frame::Msg {
                sid: 1,
                subject: "a.b".into(),
                reply: None,
                headers: h,
                payload: Bytes::new(),
            },
            Frame::Ping,
            Frame::Pong,
            Frame::Err {
                message: "no".into(),
            },
            Frame::Kv {
                req: 1,
                op: KvOp::Cas {
                    key: "k".into(),
                    expected: None,
                    value: Bytes::from_static(b"v"),
                    ttl_ms: 5,
                },
            },
            Frame::Kv {
                req: 2,
                op: KvOp::Incr {
                    key: "k".into(),
                    by: -3,
                    ttl_ms: 0,
                },
            },
            Frame::KvReply {
                req: 1,
                result: KvResult::Number(-2),
            },
            Frame::KvReply {
                req: 1,
                result: KvResult::Value(Some(Bytes::from_static(b"v"))),
            },
            Frame::PoolJoin {
                pool: "p".into(),
                concurrency: 4,
                max_queue: 10,
            },
            Frame::Submit {
                pool: "p".into(),
                reply: None,
                max_retries: 3,
                payload: Bytes::from_static(b"t"),
            },
            Frame::Task {
                pool: "p".into(),
                task: 9,
                attempt: 1,
                reply: Some("_INBOX.a.1".into()),
                payload: Bytes::new(),
            },
            Frame::TaskDone {
                task: 9,
                ok: true,
                reply: None,
                payload: Bytes::from_static(b"r"),
            },
        ] {
            round_trip(f);
        }
    }

    #[test]
    fn split_into_single_bytes_needs_more_until_complete() {
        let mut whole = BytesMut::new();
        encode(
            &Frame::Pub {
                subject: "s".into(),
                reply: None,
                headers: Headers::default(),
                payload: Bytes::from_static(b"hello"),
            },
            &mut whole,
        )
        .expect("encodable");
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let r = decode(&mut buf, 1024).expect("valid");
            assert_eq!(r.is_some(), i == whole.len() - 1);
        }
    }

    #[test]
    fn oversized_frames_are_refused_on_the_header() {
        let mut buf = BytesMut::from(&[0u8, 1, 0, 0][..]);
        assert!(decode(&mut buf, 1024).is_err());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let mut v = Vec::with_capacity(len + 4);
            v.extend_from_slice(&(len as u32).to_be_bytes());
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                v.push((seed >> 16) as u8);
            }
            let mut buf = BytesMut::from(&v[..]);
            let _ = decode(&mut buf, 1 << 20);
        }
    }

    #[test]
    fn truncated_fields_inside_a_complete_frame_are_errors() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, op::SUB, 0, 0][..]);
        assert!(decode(&mut buf, 1024).is_err());
    }
}
