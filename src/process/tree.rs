//! What a tree is started with, shared by the command line and the master: where its files
//! go (the run directory, pid file, control socket and log) and the options beyond the declared
//! workers (bus, node name, groups).

use std::path::{Path, PathBuf};

use super::sys;
use crate::bus::config::BusChoice;
use crate::error::{Error, Result};
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
    /// The paths for `choices`, the run directory made (owner-only) if missing.
    pub(crate) fn resolve(cli: &PathChoices) -> Result<Paths> {
        let run_dir = match &cli.run_dir {
            Some(d) => d.clone(),
            None => {
                let exe = std::env::current_exe().unwrap_or_default();
                // A node named explicitly has a directory of its own, so that two nodes of one
                // program on one machine never share a pid file or control socket.
                let node = cli
                    .node
                    .as_deref()
                    .map(|n| format!("-{}", crate::bus::subject_token(n)))
                    .unwrap_or_default();
                std::env::temp_dir()
                    .join(format!("oxwork-{}", sys::uid()))
                    .join(format!(
                        "{}-{:08x}{node}",
                        program_name(),
                        stable_hash(exe.as_os_str().as_encoded_bytes()) as u32
                    ))
            }
        };
        create_private_dir(&run_dir)?;
        Ok(Paths {
            pid_file: cli
                .pid_file
                .clone()
                .unwrap_or_else(|| run_dir.join("master.pid")),
            control_socket: run_dir.join("master.sock"),
            log_file: cli
                .log_file
                .clone()
                .unwrap_or_else(|| run_dir.join("oxwork.log")),
            run_dir,
        })
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create run directory {}", dir.display()), e))
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
