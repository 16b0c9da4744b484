//! CPU pinning: the server on one core, the load generator on the other, so they do not steal
//! each other's time and results repeat.

use std::process::Command;

/// Decided once, before this process pins itself: `available_parallelism` honours the
/// affinity mask, so asked after the pin it says 1 and every server would inherit the load's
/// core (as it did: until this was cached, servers and load shared core 1 and core 0 idled).
fn have_two_cpus_and_taskset() -> bool {
    *DECIDED.get_or_init(|| cores() >= 2 && Command::new("taskset").arg("-V").output().is_ok())
}

static DECIDED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// The unpinned mode: nothing is pinned (called before anything asks).
pub fn pin_nothing() {
    let _ = DECIDED.set(false);
}

/// The machine's cores, counted once, before this process pins itself (and decided with the
/// pinning, which always comes first).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The core servers run on, when pinning is possible.
pub fn server_cpu() -> Option<u32> {
    have_two_cpus_and_taskset().then_some(0)
}

/// Pins this process (the load generator) to core 1; returns whether it could.
pub fn pin_self_to_load_cpu() -> bool {
    have_two_cpus_and_taskset()
        && Command::new("taskset")
            .args(["-cp", "1", &std::process::id().to_string()])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// A command running this same binary with `args`, pinned to the server core when `pinned`
/// and pinning is possible.
pub fn self_command(args: &[String], pinned: bool) -> Command {
    let exe = std::env::current_exe().expect("own executable");
    match server_cpu().filter(|_| pinned) {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(exe).args(args);
            c
        }
        None => {
            let mut c = Command::new(exe);
            c.args(args);
            c
        }
    }
}

/// A command running this same binary with `args` on every core (this process is pinned to
/// the load core, and a child would inherit that).
pub fn self_command_on_all_cores(args: &[String]) -> Command {
    let exe = std::env::current_exe().expect("own executable");
    if have_two_cpus_and_taskset() {
        let mut c = Command::new("taskset");
        c.arg("-c")
            .arg(format!("0-{}", cores() - 1))
            .arg(exe)
            .args(args);
        c
    } else {
        let mut c = Command::new(exe);
        c.args(args);
        c
    }
}
