//! Messages between the CLI and the master, and between the master and its workers: one JSON
//! object per line over Unix stream sockets. Low volume, human-debuggable, and bounded.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime::stats::ConnectionRow;
use crate::runtime::stats::Snapshot;

/// The longest control line accepted (a `connections` listing of a busy process is large).
pub(crate) const MAX_LINE: usize = 64 * 1024 * 1024;

/// What the master tells a worker process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    Status {
        req: u64,
    },
    Connections {
        req: u64,
    },
    /// Stop accepting (taking what is queued), end the connections without an error (for up
    /// to `timeout_ms` while they finish, if `graceful`), then exit. `restart`: the server
    /// comes back at once, which a WebSocket's close code tells its clients.
    Stop {
        graceful: bool,
        timeout_ms: u64,
        restart: bool,
    },
    /// Being replaced (reload or recycling): call `on_worker_reload`, stop accepting, then
    /// finish as `graceful` says and exit.
    Retire {
        graceful: bool,
        timeout_ms: u64,
    },
    /// A reload for a group that is not reloadable: only `on_worker_reload`.
    ReloadNotice,
    /// The answer to [`FromWorker::AskStatus`]: the report `status --json` prints.
    TreeStatus {
        req: u64,
        report: serde_json::Value,
    },
}

/// What a worker process tells the master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum FromWorker {
    /// Started and accepting.
    Ready,
    Status {
        req: u64,
        stats: Snapshot,
    },
    Connections {
        req: u64,
        rows: Vec<ConnectionRow>,
    },
    /// Past `max_requests` or `max_memory_mb`: asks to be replaced.
    Recycle {
        reason: String,
    },
    /// The hub is unreachable and this process needs it: start it (if it is not starting).
    NeedHub,
    /// Asks for the tree's status (`oxwork::status()` in this process).
    AskStatus {
        req: u64,
    },
    /// The hub's answer to `Status`.
    HubStatus {
        req: u64,
        stats: crate::bus::HubStats,
    },
}

/// A command from the CLI to the master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Answered once the initial processes are up.
    Ping,
    Stop {
        graceful: bool,
        /// The first half of `restart`: clients hear "restarting", not "going away".
        #[serde(default)]
        restart: bool,
        /// Overrides each group's `graceful_timeout` for this command.
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
    Reload {
        graceful: bool,
        /// Overrides each group's `graceful_timeout` for this command.
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
    Status,
    Connections,
    /// Every node on the bus.
    Cluster,
}

/// The master's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Response {
    Ok {
        master_pid: u32,
        message: String,
    },
    Status(Box<crate::process::status::StatusReport>),
    Connections {
        rows: Vec<crate::process::status::ConnectionListing>,
    },
    Cluster {
        nodes: Vec<crate::process::cluster::NodeInfo>,
    },
    Error {
        message: String,
    },
}

/// Writes one message as a line.
pub(crate) async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

/// Reads one message; `Ok(None)` at end of stream. A line that is too long or not a valid
/// message is an error, which ends that control connection.
/// Control messages queued for one process (either way) before more are refused: commands
/// and answers are few and small, so a full queue means the other side stopped reading. The
/// master then drops the message (its question times out; a stop is backed by the kill
/// timer), and a worker drops the answer (the master's question times out).
pub(crate) const CONTROL_QUEUE: usize = 256;

pub(crate) async fn read_msg<R: AsyncBufRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<T>> {
    line.clear();
    let n = read_bounded_line(r, line).await?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(line.len());
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "control message too long",
            ));
        }
        line.extend_from_slice(&available[..take]);
        r.consume(take);
        if done {
            return Ok(line.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[test]
    fn round_trip_and_garbage() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut buf = Vec::new();
            write_msg(
                &mut buf,
                &Request::Stop {
                    graceful: true,
                    restart: false,
                    timeout_secs: None,
                },
            )
            .await
            .expect("write");
            buf.extend_from_slice(b"not json\n");
            let mut r = BufReader::new(&buf[..]);
            let mut line = Vec::new();
            let first: Option<Request> = read_msg(&mut r, &mut line).await.expect("valid");
            assert!(matches!(first, Some(Request::Stop { graceful: true, .. })));
            let second: std::io::Result<Option<Request>> = read_msg(&mut r, &mut line).await;
            assert!(second.is_err());
        });
    }
}
