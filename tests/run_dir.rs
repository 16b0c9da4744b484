//! The run directory (pid file, control socket, daemon log) cannot be planted by another local
//! user: a directory or file that is not this user's own and private is refused with one line,
//! and nothing is written through it.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

/// A uid that no test machine gives a real account: the "other local user".
const NEIGHBOUR: u32 = 48_213;

/// `echo` with the environment that decides where its files go set explicitly.
fn echo_command(args: &[&str], tmpdir: &Path, run_dir: Option<&Path>) -> Command {
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(args)
        .env("TMPDIR", tmpdir)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("OXWORK_PID_FILE")
        .env_remove("OXWORK_LOG_FILE")
        .env("ECHO_LISTEN", format!("text://127.0.0.1:{}", free_port()))
        .env("ECHO_COUNT", "1")
        .stdin(std::process::Stdio::null());
    match run_dir {
        Some(d) => cmd.env("OXWORK_RUN_DIR", d),
        None => cmd.env_remove("OXWORK_RUN_DIR"),
    };
    cmd
}

/// Stops a daemon this test started, whatever the test's outcome.
struct Daemon {
    tmpdir: PathBuf,
    run_dir: Option<PathBuf>,
    pid_file: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = echo_command(&["stop"], &self.tmpdir, self.run_dir.as_deref()).output();
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|p| alive(*p))
        {
            kill9(pid);
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn refused(out: &Output, says: &str) {
    assert!(!out.status.success(), "started anyway: {}", stderr(out));
    let err = stderr(out);
    assert!(err.contains(says), "expected {says:?} in: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "the refusal is one line: {err}"
    );
}

/// A file only its owner (this user) may write, standing for a root-only file.
fn victim(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, "precious\n").expect("victim");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn untouched(path: &Path) {
    assert_eq!(
        std::fs::read_to_string(path).expect("victim"),
        "precious\n",
        "{} was written through a planted link",
        path.display()
    );
}

#[test]
fn a_run_dir_open_to_other_users_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("shared");
    std::fs::create_dir(&run).expect("mkdir");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = echo_command(&["start", "-d"], tmp.path(), Some(&run))
        .output()
        .expect("start");
    refused(&out, "chmod 700");
    assert!(!run.join("master.pid").exists() && !run.join("oxwork.log").exists());
}

#[test]
fn a_missing_run_dir_is_made_private() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("made").join("here");
    let _daemon = Daemon {
        tmpdir: tmp.path().into(),
        run_dir: Some(run.clone()),
        pid_file: run.join("master.pid"),
    };
    let out = echo_command(&["start", "-d"], tmp.path(), Some(&run))
        .output()
        .expect("start");
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(&run).expect("run dir").mode() & 0o777;
    assert_eq!(mode, 0o700);
    for file in ["master.pid", "oxwork.log", "master.sock"] {
        let mode = std::fs::symlink_metadata(run.join(file))
            .expect(file)
            .mode()
            & 0o077;
        assert_eq!(mode, 0, "{file} is open to other users");
    }
}

#[test]
fn a_pid_file_planted_as_a_symlink_is_refused_and_its_target_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let target = victim(tmp.path(), "shadow");
    std::os::unix::fs::symlink(&target, run.join("master.pid")).expect("symlink");
    // In the foreground too: the master itself opens the pid file.
    for args in [&["start", "-d"][..], &["start"]] {
        let out = echo_command(args, tmp.path(), Some(&run))
            .output()
            .expect("start");
        refused(&out, "symbolic link");
        untouched(&target);
    }
}

#[test]
fn a_log_file_planted_as_a_symlink_or_hard_link_is_refused_and_its_target_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let target = victim(tmp.path(), "authorized_keys");
    std::os::unix::fs::symlink(&target, run.join("oxwork.log")).expect("symlink");
    let out = echo_command(&["start", "-d"], tmp.path(), Some(&run))
        .output()
        .expect("start");
    refused(&out, "symbolic link");
    untouched(&target);
    std::fs::remove_file(run.join("oxwork.log")).expect("rm");
    std::fs::hard_link(&target, run.join("oxwork.log")).expect("hard link");
    let out = echo_command(&["start", "-d"], tmp.path(), Some(&run))
        .output()
        .expect("start");
    refused(&out, "2 links");
    untouched(&target);
}

#[test]
fn the_default_run_dir_is_under_xdg_runtime_dir_where_the_user_has_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let xdg = private_tempdir();
    let start = echo_command(&["start", "-d"], tmp.path(), None)
        .env("XDG_RUNTIME_DIR", xdg.path())
        .output()
        .expect("start");
    let oxwork = xdg.path().join("oxwork");
    let pid_file = std::fs::read_dir(&oxwork)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("master.pid"))
        .unwrap_or_default();
    let _daemon = Daemon {
        tmpdir: tmp.path().into(),
        run_dir: pid_file.parent().map(Path::to_path_buf),
        pid_file: pid_file.clone(),
    };
    assert!(start.status.success(), "{}", stderr(&start));
    assert!(pid_file.exists(), "no run directory under XDG_RUNTIME_DIR");
    assert_eq!(
        std::fs::metadata(&oxwork).expect("base").mode() & 0o777,
        0o700
    );
    assert!(
        !tmp.path().join(format!("oxwork-{}", euid())).exists(),
        "the shared temporary directory was used although XDG_RUNTIME_DIR was usable"
    );
    // `status` from a shell with the same environment finds it.
    let status = echo_command(&["status", "--json"], tmp.path(), None)
        .env("XDG_RUNTIME_DIR", xdg.path())
        .output()
        .expect("status");
    assert!(status.status.success(), "{}", stderr(&status));
}

/// The default run directory's name for the `echo` example: program name and an FNV-1a hash of
/// its path, as the library names it (so the test plants exactly where a start would write).
fn default_leaf() -> String {
    let exe = std::fs::canonicalize(example_bin("echo")).expect("echo");
    let hash = exe
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("echo-{:08x}", hash as u32)
}

/// `start -d` with the default run directory under `tmp` (`oxwork-UID/...`), the guard that
/// stops it, and its run directory.
fn start_default_daemon(tmp: &Path) -> (Output, PathBuf, Daemon) {
    let start = echo_command(&["start", "-d"], tmp, None)
        .output()
        .expect("start");
    let run = std::fs::read_dir(tmp.join(format!("oxwork-{}", euid())))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path())
        .unwrap_or_default();
    let daemon = Daemon {
        tmpdir: tmp.into(),
        run_dir: None,
        pid_file: run.join("master.pid"),
    };
    (start, run, daemon)
}

#[test]
fn a_master_started_without_xdg_runtime_dir_is_found_from_a_shell_that_has_it() {
    // A service manager often starts without XDG_RUNTIME_DIR; the operator's login shell has it.
    let tmp = tempfile::tempdir().expect("tmp");
    let xdg = private_tempdir();
    let (start, run, _daemon) = start_default_daemon(tmp.path());
    assert!(start.status.success(), "{}", stderr(&start));
    let stop = echo_command(&["stop"], tmp.path(), None)
        .env("XDG_RUNTIME_DIR", xdg.path())
        .output()
        .expect("stop");
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(!run.join("master.pid").exists(), "the master did not stop");
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// Runs `script` with `sh` as the neighbour (another local user). Acting as another user needs
/// root and `setpriv`: without them the test fails saying so, it never passes unrun.
fn as_neighbour(script: &str) -> Output {
    assert_eq!(
        euid(),
        0,
        "this test acts as a second local user and needs root: run `cargo test` as root (as \
         `bash .ci/run` does), or in a container"
    );
    Command::new("setpriv")
        .args([
            &format!("--reuid={NEIGHBOUR}"),
            &format!("--regid={NEIGHBOUR}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "setpriv is needed to act as a second user ({e}): `apt-get install util-linux` \
                 (`bash .ci/run` installs it)"
            )
        })
}

#[test]
fn another_users_squatted_default_run_dir_is_refused_and_nothing_is_written() {
    // A shared temporary directory like /tmp: world-writable and sticky.
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let secrets = tempfile::tempdir().expect("secrets");
    let pid_target = victim(secrets.path(), "shadow");
    let log_target = victim(secrets.path(), "crontab");
    let squat = tmp.path().join(format!("oxwork-{}", euid()));
    let leaf = default_leaf();
    let planted = as_neighbour(&format!(
        "set -e; umask 0; mkdir -m 0777 '{squat}' '{squat}/{leaf}'; \
         ln -s '{pid}' '{squat}/{leaf}/master.pid'; ln -s '{log}' '{squat}/{leaf}/oxwork.log'",
        squat = squat.display(),
        pid = pid_target.display(),
        log = log_target.display(),
    ));
    assert!(planted.status.success(), "{}", stderr(&planted));
    let out = echo_command(&["start", "-d"], tmp.path(), None)
        .output()
        .expect("start");
    refused(&out, &format!("owned by uid {NEIGHBOUR}"));
    untouched(&pid_target);
    untouched(&log_target);
    let listing: Vec<_> = std::fs::read_dir(&squat)
        .expect("squat")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(
        listing,
        [leaf.as_str()],
        "files were made in the squatted directory"
    );
}

#[test]
fn another_user_cannot_rename_or_fill_the_default_run_dir() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let base = tmp.path().join(format!("oxwork-{}", euid()));
    let (start, run, _daemon) = start_default_daemon(tmp.path());
    assert!(start.status.success(), "{}", stderr(&start));
    let attack = as_neighbour(&format!(
        "mv '{base}' '{tmp}/stolen' 2>/dev/null && echo renamed; \
         touch '{run}/x' 2>/dev/null && echo planted; \
         ln -s /etc/passwd '{run}/oxwork.log.1' 2>/dev/null && echo linked; true",
        base = base.display(),
        tmp = tmp.path().display(),
        run = run.display(),
    ));
    assert_eq!(String::from_utf8_lossy(&attack.stdout), "");
    for dir in [&base, &run] {
        assert_eq!(std::fs::metadata(dir).expect("dir").mode() & 0o777, 0o700);
    }
    let status = echo_command(&["status"], tmp.path(), None)
        .output()
        .expect("status");
    assert!(status.status.success(), "{}", stderr(&status));
}
