//! CPU pinning: the server on one core, the load generator on the other, so they do not steal
//! each other's time and results repeat.

use std::process::Command;

fn have_two_cpus_and_taskset() -> bool {
    std::thread::available_parallelism()
        .map(|n| n.get() >= 2)
        .unwrap_or(false)
        && Command::new("taskset").arg("-V").output().is_ok()
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
