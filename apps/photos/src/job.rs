//! What travels between the web processes and the thumbnail pool: a task is a JSON line (the
//! photo's id, the browser tab to tell, the file's name) and the image's bytes; a result is a
//! JSON line (dimensions, the sizes made, who made them) and the JPEGs one after another.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// A photo to process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// The browser tab (its client-routing uid) that gets the progress.
    pub tab: String,
    pub name: String,
    /// Where to fetch the image when it is too large to travel in the task (the bus's payload
    /// limit): the web node's URL of the original, with the photo's secret key. The task's
    /// body is empty then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<String>,
}

/// One size in a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeMade {
    pub size: String,
    pub width: u32,
    pub height: u32,
    /// Length of its JPEG in the result's body.
    pub len: usize,
}

/// The head of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Made {
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub sizes: Vec<SizeMade>,
    /// Which process made it: "node/pid".
    pub by: String,
    pub millis: u64,
}

/// The largest head accepted (a hostile payload cannot make the parser read far).
const MAX_HEAD: usize = 16 * 1024;

fn frame(head: &impl Serialize, body: &[&[u8]]) -> Bytes {
    let head = serde_json::to_vec(head).unwrap_or_default();
    let len: usize = body.iter().map(|b| b.len()).sum();
    let mut out = BytesMut::with_capacity(head.len() + 1 + len);
    out.put_slice(&head);
    out.put_u8(b'\n');
    for b in body {
        out.put_slice(b);
    }
    out.freeze()
}

fn unframe<T: for<'de> Deserialize<'de>>(payload: &Bytes) -> Result<(T, Bytes), String> {
    let end = payload
        .iter()
        .take(MAX_HEAD)
        .position(|b| *b == b'\n')
        .ok_or("no head line")?;
    let head = serde_json::from_slice(&payload[..end]).map_err(|e| format!("bad head: {e}"))?;
    Ok((head, payload.slice(end + 1..)))
}

/// A task's payload.
pub fn encode_job(job: &Job, image: &[u8]) -> Bytes {
    frame(job, &[image])
}

/// A task's payload read back: the job and the image's bytes.
pub fn decode_job(payload: &Bytes) -> Result<(Job, Bytes), String> {
    unframe(payload)
}

/// A result's payload.
pub fn encode_made(made: &Made, jpegs: &[&[u8]]) -> Bytes {
    frame(made, jpegs)
}

/// A result read back: its head and each size's JPEG, checked against the lengths it claims.
pub fn decode_made(payload: &Bytes) -> Result<(Made, Vec<Bytes>), String> {
    let (made, body): (Made, Bytes) = unframe(payload)?;
    let mut at = 0usize;
    let mut jpegs = Vec::with_capacity(made.sizes.len());
    for s in &made.sizes {
        let end = at
            .checked_add(s.len)
            .filter(|e| *e <= body.len())
            .ok_or("result shorter than its head says")?;
        jpegs.push(body.slice(at..end));
        at = end;
    }
    if at != body.len() {
        return Err("result longer than its head says".into());
    }
    Ok((made, jpegs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_with_any_bytes() {
        let job = Job {
            id: "a1".into(),
            tab: "t-9".into(),
            name: "café\nnew line.jpg".into(),
            fetch: None,
        };
        let image = [0u8, b'\n', 255, 10, 13];
        let (back, bytes) = decode_job(&encode_job(&job, &image)).expect("decoded");
        assert_eq!(back, job);
        assert_eq!(&bytes[..], &image);
    }

    #[test]
    fn a_result_round_trips_and_lies_about_lengths_are_caught() {
        let made = Made {
            format: "png".into(),
            width: 10,
            height: 5,
            sizes: vec![
                SizeMade {
                    size: "small".into(),
                    width: 4,
                    height: 2,
                    len: 3,
                },
                SizeMade {
                    size: "large".into(),
                    width: 10,
                    height: 5,
                    len: 2,
                },
            ],
            by: "local/1".into(),
            millis: 3,
        };
        let payload = encode_made(&made, &[b"abc", b"de"]);
        let (back, jpegs) = decode_made(&payload).expect("decoded");
        assert_eq!(back, made);
        assert_eq!(jpegs, [&b"abc"[..], &b"de"[..]]);
        let short = payload.slice(..payload.len() - 1);
        assert!(decode_made(&short).is_err());
        let mut long = payload.to_vec();
        long.push(0);
        assert!(decode_made(&Bytes::from(long)).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b""[..],
            b"\n",
            b"{}\n",
            b"no newline at all",
            &[0xFF; 40_000],
        ] {
            assert!(decode_job(&Bytes::copy_from_slice(junk)).is_err());
            assert!(decode_made(&Bytes::copy_from_slice(junk)).is_err());
        }
    }
}
