//! What a tree is started with, shared by the command line and the master: where its files
//! go (the run directory, pid file, control socket and log) and the options beyond the declared
//! workers (bus, node name, groups).

use std::path::{Path, PathBuf};

use super::sys;
use crate::bus::config::BusChoice;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::worker::WorkerConfig;

/// Where a running master keeps its files.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) run_dir: PathBuf,
    pub(crate) pid_file: PathBuf,
    pub(crate) control_socket: PathBuf,
    pub(crate) log_file: PathBuf,
}

pub(crate) fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "oxwork".into())
}

/// FNV-1a: a stable, dependency-free hash, so a program's default run directory is the same
/// in every run and every build.
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the command line says about where the files go (each `None`: the default).
#[derive(Debug, Clone, Default)]
pub(crate) struct PathChoices {
    pub(crate) run_dir: Option<PathBuf>,
    pub(crate) node: Option<String>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) log_file: Option<PathBuf>,
}

impl Paths {
    /// The paths for `choices`: the run directory made private (0700) if missing and checked
    /// if present (see [`private_dir`]). Without `--run-dir` the default is
    /// `$XDG_RUNTIME_DIR/oxwork/PROGRAM-HASH[-NODE]` where that directory is the user's own, else
    /// `TMPDIR/oxwork-UID/PROGRAM-HASH[-NODE]`; a master already running from either place is
    /// found there, so `stop` works from a shell whose environment differs from `start`'s.
    pub(crate) fn resolve(cli: &PathChoices) -> Result<Paths> {
        let candidates: Vec<PathBuf> = match &cli.run_dir {
            Some(d) => vec![d.clone()],
            None => {
                let exe = std::env::current_exe().unwrap_or_default();
                // A node named explicitly has a directory of its own, so that two nodes of one
                // program on one machine never share a pid file or control socket.
                let node = cli
                    .node
                    .as_deref()
                    .map(|n| format!("-{}", crate::bus::subject_token(n)))
                    .unwrap_or_default();
                let leaf = format!(
                    "{}-{:08x}{node}",
                    program_name(),
                    stable_hash(exe.as_os_str().as_encoded_bytes()) as u32
                );
                default_bases().into_iter().map(|b| b.join(&leaf)).collect()
            }
        };
        let paths = |run_dir: &Path| Paths {
            pid_file: cli
                .pid_file
                .clone()
                .unwrap_or_else(|| run_dir.join("master.pid")),
            control_socket: run_dir.join("master.sock"),
            log_file: cli
                .log_file
                .clone()
                .unwrap_or_else(|| run_dir.join("oxwork.log")),
            run_dir: run_dir.to_path_buf(),
        };
        let running = candidates.iter().find(|dir| {
            check_private_dir(dir).is_ok() && sys::pid_file_locked(&paths(dir).pid_file)
        });
        let chosen = running.unwrap_or(&candidates[0]);
        if cli.run_dir.is_none() {
            // The per-user base is checked too: whoever owns it could rename ours away.
            if let Some(base) = chosen.parent() {
                private_dir(base)?;
            }
        }
        private_dir(chosen)?;
        Ok(paths(chosen))
    }
}

/// Where default run directories live, best first: under `$XDG_RUNTIME_DIR` when it is set and
/// the user's own private directory (systemd makes it per user, 0700, on a tmpfs), then a
/// per-user directory under the shared temporary directory.
fn default_bases() -> Vec<PathBuf> {
    let shared = std::env::temp_dir().join(format!("oxwork-{}", sys::uid()));
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() && check_private_dir(&xdg).is_ok() => {
            vec![xdg.join("oxwork"), shared]
        }
        _ => vec![shared],
    }
}

/// Makes `dir` (mode 0700) or, when it exists, checks that nobody else can plant files in it:
/// it must be a real directory (not a symbolic link), owned by this user, with no permission
/// for group or others. A directory that fails is refused with one line saying how to fix
/// it, never used: another local user who created it first could otherwise point the pid file
/// or the log at a file only this user may write. Missing parents of a `--run-dir` are made
/// with the usual permissions.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::io(format!("cannot create run directory {}", dir.display()), e)
            })?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_private_dir(dir),
        Err(e) => Err(Error::io(
            format!("cannot create run directory {}", dir.display()),
            e,
        )),
    }
}

/// The checks of [`private_dir`] on an existing directory.
fn check_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let refuse = |why: String| {
        Err(Error::new(
            ErrorKind::Config,
            format!("refusing run directory {}: {why}", dir.display()),
        ))
    };
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("cannot inspect run directory {}", dir.display()), e))?;
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link; remove it or give --run-dir".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    if meta.uid() != sys::uid() {
        return refuse(format!(
            "it is owned by uid {}, not by this user (uid {}); another user may have planted it: \
             remove it or give --run-dir",
            meta.uid(),
            sys::uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return refuse(format!(
            "its mode is {mode:04o}, open to other users; make it private with chmod 700 {}",
            dir.display()
        ));
    }
    Ok(())
}

/// What the command line chose for this tree beyond the declared workers.
#[derive(Debug, Clone)]
pub(crate) struct TreeOptions {
    /// The bus, parsed.
    pub(crate) bus: BusChoice,
    /// The bus as given (handed to every process through `OXWORK_BUS`).
    pub(crate) bus_spec: String,
    /// This tree's node name.
    pub(crate) node: String,
    /// Run only these worker groups (empty: all).
    pub(crate) groups: Vec<String>,
    /// Where the master serves Prometheus metrics (`start --metrics ADDR`).
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

impl TreeOptions {
    /// Whether this node runs worker group `c`.
    pub(crate) fn runs(&self, c: &WorkerConfig) -> bool {
        self.groups.is_empty() || self.groups.contains(&c.name)
    }

    /// On NATS, connects once to prove the bus usable (with JetStream when this node runs a
    /// task pool); one clear error otherwise.
    pub(crate) fn check_bus(&self, configs: &[WorkerConfig]) -> Result<()> {
        match &self.bus {
            BusChoice::Hub => Ok(()),
            BusChoice::Nats(settings) => {
                let pools = configs.iter().any(|c| self.runs(c) && c.is_pool);
                super::cluster::check_nats(settings, pools)
            }
        }
    }
}
