//! The process tree: the command line, the master that supervises, the worker processes it
//! starts by re-executing the program, and the control messages between them.
//!
//! Architecture invariant: only the master spawns processes, and only `sys` talks to the
//! operating system about processes, signals and descriptors.

pub(crate) mod cli;
mod cluster;
pub(crate) mod control;
pub(crate) mod handoff;
pub(crate) mod hub_main;
mod master;
pub(crate) mod status;
mod sys;
pub(crate) mod tree;
pub(crate) mod tree_status;
pub(crate) mod worker_main;

/// Environment variables by which the master tells a re-executed program what it is.
pub(crate) mod env {
    /// `worker` in a worker process, `daemon` in a daemonised master.
    pub(crate) const ROLE: &str = "OXWORK_ROLE";
    pub(crate) const GROUP: &str = "OXWORK_GROUP";
    pub(crate) const ID: &str = "OXWORK_ID";
    pub(crate) const MASTER_PID: &str = "OXWORK_MASTER_PID";
    pub(crate) const CONTROL_FD: &str = "OXWORK_CONTROL_FD";
    pub(crate) const LISTEN_FD: &str = "OXWORK_LISTEN_FD";
    /// The group's board of connection counts (`runtime::balance`), when it shares a socket.
    pub(crate) const BOARD_FD: &str = "OXWORK_BOARD_FD";
    /// The worker's end of its hand-off channel (connections moving on reload).
    pub(crate) const HANDOFF_FD: &str = "OXWORK_HANDOFF_FD";
    /// Where this process's connection ids start (each process of a slot has its own range).
    pub(crate) const CONN_BASE: &str = "OXWORK_CONN_BASE";
    /// The hub's socket path (`@name`: in the abstract namespace).
    pub(crate) const HUB: &str = "OXWORK_HUB";
    /// The users whose processes the hub lets in, when it listens in the abstract namespace.
    pub(crate) const HUB_UIDS: &str = "OXWORK_HUB_UIDS";
    /// This tree's node name (default: the host name).
    pub(crate) const NODE: &str = "OXWORK_NODE";
}

/// The inherited control socket as a non-blocking tokio stream.
pub(crate) fn control_stream(
    fd: std::os::fd::OwnedFd,
) -> crate::error::Result<tokio::net::UnixStream> {
    let std_control = std::os::unix::net::UnixStream::from(fd);
    std_control
        .set_nonblocking(true)
        .map_err(|e| crate::error::Error::io("control socket", e))?;
    tokio::net::UnixStream::from_std(std_control)
        .map_err(|e| crate::error::Error::io("control socket", e))
}
