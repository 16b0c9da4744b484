//! CPU time, system calls and memory of server processes, read from `/proc`.

/// Linux reports utime/stime in USER_HZ, which is 100 on every architecture.
const TICKS_PER_SEC: f64 = 100.0;

/// Cumulative counters of a set of processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub user_secs: f64,
    pub sys_secs: f64,
}

impl std::ops::Sub for Sample {
    type Output = Sample;
    fn sub(self, o: Sample) -> Sample {
        Sample {
            user_secs: self.user_secs - o.user_secs,
            sys_secs: self.sys_secs - o.sys_secs,
        }
    }
}

pub fn sample(pids: &[u32]) -> Sample {
    let mut s = Sample::default();
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(close) = stat.rfind(')') {
                let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
                // Fields 14 and 15 of stat(5); index 11 and 12 after the command name.
                let tick = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                s.user_secs += tick(11) / TICKS_PER_SEC;
                s.sys_secs += tick(12) / TICKS_PER_SEC;
            }
        }
    }
    s
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Current resident memory, summed, in bytes.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter().map(|p| status_kb(*p, "VmRSS:") * 1024).sum()
}

/// Peak resident memory, summed, in bytes.
pub fn peak_rss_bytes(pids: &[u32]) -> u64 {
    pids.iter().map(|p| status_kb(*p, "VmHWM:") * 1024).sum()
}

/// Counts every system call the given processes make, with `perf stat` on the
/// `raw_syscalls:sys_enter` tracepoint, for as long as it runs. `None` where perf is missing
/// or not permitted.
pub struct SyscallCounter {
    child: std::process::Child,
}

impl SyscallCounter {
    pub fn start(pids: &[u32]) -> Option<SyscallCounter> {
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let child = std::process::Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter",
                "-p",
                &list.join(","),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        // perf needs a moment to attach before the window it measures begins.
        std::thread::sleep(std::time::Duration::from_millis(100));
        Some(SyscallCounter { child })
    }

    pub fn finish(self) -> Option<u64> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).ok()?;
        let out = self.child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        text.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    }
}

fn rollup_kb(pid: u32, keys: &[&str]) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map(|s| {
            s.lines()
                .filter(|l| keys.iter().any(|k| l.starts_with(k)))
                .filter_map(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Proportional set size, summed, in bytes: shared pages (the program's code, shared with the
/// master and sibling processes) counted once across the processes sharing them.
pub fn pss_bytes(pids: &[u32]) -> u64 {
    pids.iter().map(|p| rollup_kb(*p, &["Pss:"]) * 1024).sum()
}

/// Memory no other process shares, summed, in bytes.
pub fn private_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| rollup_kb(*p, &["Private_Clean:", "Private_Dirty:"]) * 1024)
        .sum()
}
