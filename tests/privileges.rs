//! Dropping privileges: a master started as root binds the port and runs its worker processes
//! as the user a group names, with that user's group and no other; the bus still works (the
//! hub then listens in the abstract namespace and checks who connects).

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use support::*;

/// The `Uid:`, `Gid:` and `Groups:` lines of a process's status.
fn credentials(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (line("Uid:"), line("Gid:"), line("Groups:"))
}

#[test]
fn worker_processes_run_as_the_named_user_and_still_reach_the_hub() {
    let me = std::fs::metadata("/proc/self").expect("self").uid();
    assert_eq!(
        me, 0,
        "this test starts a server as root to drop to `nobody`: run `cargo test` as root (as \
         `bash .ci/run` does), or in a container"
    );
    // The program where `nobody` may run it: a world-readable copy.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = dir.path().join("echo");
    std::fs::copy(example_bin("echo"), &exe).expect("copy");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = free_port();
    let s = Server::start_program(
        exe,
        &[],
        &[
            ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
            ("ECHO_COUNT", "2".to_string()),
            ("ECHO_USER", "nobody".to_string()),
        ],
        2,
    )
    .with_port(port);
    let nobody = "65534 65534 65534 65534";
    for pid in s.group_pids("echo") {
        let (uid, gid, groups) = credentials(pid);
        assert_eq!(uid, nobody, "process {pid}");
        assert_eq!(gid.split(' ').count(), 4, "process {pid}: {gid}");
        assert!(
            !gid.starts_with("0 "),
            "process {pid} kept root's group: {gid}"
        );
        assert!(
            groups.is_empty() || !groups.split(' ').any(|g| g == "0"),
            "{groups}"
        );
    }
    assert_eq!(credentials(s.master_pid()).0, "0 0 0 0");
    // It serves, and the bus (client routing through the hub) answers.
    let mut c = LineClient::connect(port).expect("connect");
    assert_eq!(c.ask("hello").expect("echo"), "hello");
    assert_eq!(c.ask("bind:alice").expect("bind"), "ok");
    assert!(
        eventually(Duration::from_secs(10), || c
            .ask("uid-online:alice")
            .is_ok_and(|a| a == "true")),
        "uid-online through the hub: {:?}\n{}",
        c.ask("uid-online:alice"),
        s.stderr()
    );
    // Any other local user is turned away by the hub, whatever it sends.
    let hub = s.status()["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["worker"] == "hub")
        .and_then(|p| p["listen"].as_str().map(str::to_string))
        .expect("the hub's row");
    let name = hub.strip_prefix("unix://@").expect("an abstract address");
    let probe = std::process::Command::new("setpriv")
        .args([
            "--reuid=48213",
            "--regid=48213",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(format!(
            "import socket\n\
             s = socket.socket(socket.AF_UNIX); s.settimeout(5)\n\
             s.connect('\\0{name}')\n\
             try:\n    s.sendall(b'x' * 64); print('closed' if s.recv(64) == b'' else 'answered')\n\
             except (ConnectionResetError, BrokenPipeError):\n    print('closed')\n"
        ))
        .output()
        .expect("setpriv (util-linux) and /usr/bin/python3");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        "closed",
        "a stranger's connection to the hub: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    // ... turned away by the credential check itself, before a byte is read.
    assert!(
        eventually(Duration::from_secs(5), || s
            .stderr()
            .contains("refused a process of uid Some(48213)")),
        "{}",
        s.stderr()
    );
}
