//! The operating-system plumbing of the process tree, and the only module that uses `unsafe`
//! or `nix`.
//!
//! Contract:
//! - Children are spawned from the master's one main thread, so `PR_SET_PDEATHSIG` (which fires
//!   when the *thread* that forked exits) fires exactly when the master dies; a child re-checks
//!   `getppid()` at start in case the master died before the flag was set.
//! - Each child is put in its own process group, so a terminal's Ctrl-C reaches only the master,
//!   which then orchestrates the stop.
//! - Descriptors a child must inherit (its control socket, its group's listener) are named
//!   explicitly; their close-on-exec flag is cleared in the child between fork and exec, with
//!   no `dup2`, so no descriptor is ever renumbered. Every other descriptor stays close-on-exec.
//! - The pid file is locked (`flock`) for the master's whole life, so a stale pid file never
//!   makes `stop` signal an unrelated process.

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, ErrorKind, Result};

/// What to start, and what it inherits.
pub(crate) struct SpawnSpec<'a> {
    pub(crate) exe: &'a Path,
    /// What `ps` shows as the process's name (its `argv[0]`); the program's path when `None`.
    pub(crate) title: Option<String>,
    pub(crate) args: &'a [OsString],
    pub(crate) env: Vec<(String, String)>,
    pub(crate) inherit_fds: Vec<RawFd>,
    pub(crate) stdio_to: Option<&'a File>,
    /// A daemon master: a new session, no controlling terminal, no death signal.
    pub(crate) daemon: bool,
    /// Run as this user and group (uid, gid), with no supplementary groups.
    pub(crate) identity: Option<(u32, u32)>,
}

/// The uid and gid `user` and `group` name (a group alone keeps this process's user; a user
/// alone brings its own primary group); `None` when neither is given. Switching to another
/// user needs root: without it, an error.
pub(crate) fn identity(user: Option<&str>, group: Option<&str>) -> Result<Option<(u32, u32)>> {
    use nix::unistd::{Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let lookup = |e: nix::Error, what: &str| Error::new(ErrorKind::Config, format!("{what}: {e}"));
    let (uid, mut gid) = match user {
        Some(name) => {
            let u = User::from_name(name)
                .map_err(|e| lookup(e, &format!("user {name:?}")))?
                .ok_or_else(|| Error::new(ErrorKind::Config, format!("no user {name:?}")))?;
            (u.uid.as_raw(), u.gid.as_raw())
        }
        None => (Uid::current().as_raw(), Gid::current().as_raw()),
    };
    if let Some(name) = group {
        gid = Group::from_name(name)
            .map_err(|e| lookup(e, &format!("group {name:?}")))?
            .ok_or_else(|| Error::new(ErrorKind::Config, format!("no group {name:?}")))?
            .gid
            .as_raw();
    }
    let me = Uid::current();
    if !me.is_root() && (uid != me.as_raw() || gid != Gid::current().as_raw()) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "running processes as user {} / group {} needs root (this is uid {me})",
                user.unwrap_or("(this user)"),
                group.unwrap_or("(its group)")
            ),
        ));
    }
    Ok(Some((uid, gid)))
}

/// Builds the command for a child process as the contract above describes; spawn it with std
/// (the CLI starting a daemon) or tokio (the master starting workers).
pub(crate) fn command(spec: SpawnSpec<'_>) -> std::io::Result<std::process::Command> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(spec.exe);
    if let Some(title) = &spec.title {
        cmd.arg0(title);
    }
    cmd.args(spec.args).envs(spec.env);
    if let Some(f) = spec.stdio_to {
        cmd.stdin(std::process::Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f.try_clone()?);
    }
    if !spec.daemon {
        cmd.process_group(0);
    }
    let fds = spec.inherit_fds;
    let daemon = spec.daemon;
    let identity = spec
        .identity
        .map(|(u, g)| (nix::unistd::Uid::from_raw(u), nix::unistd::Gid::from_raw(g)));
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (setgroups, setgid, setuid, prctl, setsid, fcntl); it allocates nothing (`fds`
    // and the identity were built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            // The user first: a change of credentials clears the death signal set below.
            if let Some((uid, gid)) = identity {
                nix::unistd::setgroups(&[gid])?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
            }
            if daemon {
                nix::unistd::setsid()?;
            } else {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            }
            for &fd in &fds {
                // SAFETY: `fd` is open in the parent, so it is open in the forked child.
                let borrowed = BorrowedFd::borrow_raw(fd);
                fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Takes ownership of a descriptor number that the master passed in the environment, and
/// marks it close-on-exec again so it does not leak into the worker's own children.
pub(crate) fn inherited_fd(var: &str) -> Result<Option<OwnedFd>> {
    let Ok(text) = std::env::var(var) else {
        return Ok(None);
    };
    let fd: RawFd = text.parse().map_err(|_| {
        Error::new(
            ErrorKind::Control,
            format!("{var}={text:?} is not a descriptor"),
        )
    })?;
    // SAFETY: probing with F_GETFD is harmless on any number; it tells whether `fd` is open.
    let probe = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(probe, FcntlArg::F_GETFD)
        .map_err(|e| Error::new(ErrorKind::Control, format!("{var}={fd} is not open: {e}")))?;
    fcntl(probe, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| Error::new(ErrorKind::Control, format!("{var}={fd}: {e}")))?;
    // SAFETY: the master opened this descriptor for this process alone and named it in `var`;
    // nothing else in this process knows the number, so taking ownership is sound.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Exits at once if the master that started this worker is gone (its death signal may have
/// been armed too late).
pub(crate) fn exit_if_orphaned(master_pid: u32) {
    if nix::unistd::getppid().as_raw() as u32 != master_pid {
        eprintln!("oxwork: master {master_pid} is gone; worker exiting");
        std::process::exit(1);
    }
}

/// Sends `sig` to `pid`; false if there is no such process.
pub(crate) fn signal(pid: u32, sig: Signal) -> bool {
    kill(Pid::from_raw(pid as i32), sig).is_ok()
}

/// Kills `pid` outright (`SIGKILL`); false if there is no such process of ours.
pub(crate) fn kill_now(pid: u32) -> bool {
    signal(pid, Signal::SIGKILL)
}

/// The name of signal number `number` (`SIGTERM`), or `?`.
pub(crate) fn signal_name(number: i32) -> &'static str {
    Signal::try_from(number).map(|s| s.as_str()).unwrap_or("?")
}

/// Raises this process's open-file limit to its hard limit (inherited by the workers), since a
/// server holds one descriptor per connection and the usual soft limit of 1024 is far too low.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            tracing::debug!("could not raise the open-file limit from {soft} to {hard}");
        }
    }
}

/// Makes glibc's malloc serve large blocks (128 KiB and more: grown send and read buffers, a
/// spilled upload's chunk) with their own mappings, given back to the system when freed. By
/// default glibc raises that threshold each time such a block is freed, after which large
/// buffers come from the heap and a burst of slow clients leaves the process its peak size
/// after they have gone. Fixing the threshold keeps memory following the connections.
pub(crate) fn give_large_blocks_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a tunable of the allocator; it is called at the start of
        // the process, before its threads and event loop, with a documented parameter and a
        // valid value.
        let set = unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024) };
        if set != 1 {
            tracing::debug!("could not fix malloc's mmap threshold");
        }
    }
}

/// Tells systemd the service's state (`READY=1`, `RELOADING=1`, `STOPPING=1`; see
/// sd_notify(3)) when it started this process with `Type=notify`, that is when
/// `NOTIFY_SOCKET` names its socket (a path, or `@name` in the abstract namespace). The main
/// pid goes with it, so a master started by `start -d` (a child of the command systemd ran) is
/// the one systemd follows (the unit then needs `NotifyAccess=all`).
pub(crate) fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let address = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&target),
    };
    let message = format!("{state}\nMAINPID={}", std::process::id());
    let sent = address
        .and_then(|a| UnixDatagram::unbound().and_then(|s| s.send_to_addr(message.as_bytes(), &a)));
    if let Err(e) = sent {
        tracing::warn!("cannot tell systemd {state:?} at {target}: {e}");
    }
}

/// This machine's host name, the default node name.
pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The effective user id: who owns what this process creates (the run directory, the pid file).
pub(crate) fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The pid file, locked for as long as this value lives.
#[derive(Debug)]
pub(crate) struct PidLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl PidLock {
    /// Locks `path` and writes our pid into it, or reports the running master's pid.
    pub(crate) fn acquire(path: &Path) -> Result<PidLock> {
        let mut file = open_private_file(path, FileUse::Rewrite, "pid file")?;
        // `pid_file_locked` (a `status` asking whether a master runs) holds a shared lock for
        // an instant: a start that meets one tries again, a running master holds it for good.
        let mut tries = 0;
        let locked = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if tries < 20 => {
                    tries += 1;
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other,
            }
        };
        let mut lock = match locked {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = read_pid(path)
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into());
                return Err(Error::new(
                    ErrorKind::AlreadyRunning,
                    format!(
                        "already running (master pid {pid}, pid file {})",
                        path.display()
                    ),
                ));
            }
            Err((_, e)) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("cannot lock pid file {}: {e}", path.display()),
                ))
            }
        };
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            f.flush()
        };
        write(&mut lock).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        Ok(PidLock {
            _lock: lock,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How a file of the tree is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileUse {
    /// Read and rewritten in place (the pid file).
    Rewrite,
    /// Appended to (the daemon's log).
    Append,
}

/// Opens a file the tree writes (pid file, daemon log), made with mode 0600 when new
/// (`O_EXCL`), and never through a symbolic link (`O_NOFOLLOW`); an existing file must be a
/// regular file of this user with no other name (a hard link planted by someone who may not
/// write its target). Anything else is a one-line error and nothing is written.
pub(crate) fn open_private_file(path: &Path, how: FileUse, what: &str) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .mode(0o600);
    match how {
        FileUse::Rewrite => options.write(true),
        FileUse::Append => options.append(true),
    };
    let cannot = |e: std::io::Error| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            symlink_refused(path, what)
        } else {
            Error::io(format!("cannot open {what} {}", path.display()), e)
        }
    };
    let file = match options.clone().create_new(true).open(path) {
        Ok(file) => return Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            options.open(path).map_err(cannot)?
        }
        Err(e) => return Err(cannot(e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot inspect {what} {}", path.display()), e))?;
    check_own_file(path, &meta, what)?;
    Ok(file)
}

/// The checks of [`open_private_file`] without opening: for the command line, which must refuse
/// a planted pid file before it starts a daemon that would only say so in its log.
pub(crate) fn check_private_file(path: &Path, what: &str) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("cannot inspect {what} {}", path.display()),
            e,
        )),
        Ok(meta) if meta.file_type().is_symlink() => Err(symlink_refused(path, what)),
        Ok(meta) => check_own_file(path, &meta, what),
    }
}

fn symlink_refused(path: &Path, what: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "refusing {what} {}: it is a symbolic link (remove it)",
            path.display()
        ),
    )
}

fn check_own_file(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if meta.is_file() && meta.uid() == uid() && meta.nlink() == 1 {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Config,
        format!(
            "refusing {what} {}: not a regular file of this user with one name \
             (owner uid {}, {} links); remove it",
            path.display(),
            meta.uid(),
            meta.nlink()
        ),
    ))
}

/// True if some process holds the lock on `path` (a master is running).
pub(crate) fn pid_file_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// The pid recorded in a pid file.
pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Raw descriptor of anything that has one (for the spawn list).
pub(crate) fn raw(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}

/// A connected pair of Unix `SOCK_SEQPACKET` sockets (non-blocking, close-on-exec): message
/// boundaries are kept, and a message may carry a descriptor (the hand-off channel).
pub(crate) fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(std::io::Error::from)
}

/// Sends one message, with `fd` attached (`SCM_RIGHTS`) if given. Never blocks: a full socket
/// is `WouldBlock`.
pub(crate) fn send_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(bytes)];
    let fds = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = fds
        .as_ref()
        .map(|f| vec![ControlMessage::ScmRights(f)])
        .unwrap_or_default();
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    if sent != bytes.len() {
        return Err(std::io::Error::other("hand-off message sent in part"));
    }
    Ok(())
}

/// Receives one message into `buf`, with the descriptor it carried. A message that did not
/// fit, or that carried more than one descriptor, is refused (and what came is closed).
pub(crate) fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            for raw in received {
                // SAFETY: the kernel just installed `raw` in this process for this message;
                // nothing else knows the number, so taking ownership is sound.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    if truncated || fds.len() > 1 {
        return Err(std::io::Error::other(
            "hand-off message too large or with several descriptors",
        ));
    }
    Ok((msg.bytes, fds.pop()))
}

/// `fd` registered with the event loop (tokio's `AsyncFd`), owning it.
pub(crate) fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` is open for as long as it lives, always answers the same number from
    // `as_raw_fd`, and here it is moved into the `AsyncFd`, which owns it until it is dropped;
    // nothing else holds the number, so it cannot be closed or reused behind the registration.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
