//! Allocations per request: every process of this binary (the harness and each server role it
//! is started in) counts its heap allocations, and a server publishes its count to a file the
//! harness reads before and after the measured window.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable naming the directory servers publish their counts in.
pub const DIR_ENV: &str = "OXBENCH_ALLOCATIONS_DIR";

/// How often a server writes its count (the window's edges are this exact).
const PUBLISH_EVERY: Duration = Duration::from_millis(10);

/// The system allocator, counting calls that allocate (`alloc`, `alloc_zeroed`, `realloc`).
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the counter is an atomic
// that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The harness's directory for the counts (made once, removed at exit with the harness).
pub fn dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<Option<tempfile::TempDir>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().ok())
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_else(std::env::temp_dir)
}

/// In a server process: a thread writes this process's count to the harness's directory
/// every `PUBLISH_EVERY` (once per process; later calls do nothing).
pub fn publish_from_this_process() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    STARTED.call_once(|| {
        let path = std::path::Path::new(&dir).join(std::process::id().to_string());
        let _ = std::thread::Builder::new()
            .name("allocations".into())
            .spawn(move || loop {
                let _ = std::fs::write(&path, ALLOCATIONS.load(Ordering::Relaxed).to_string());
                std::thread::sleep(PUBLISH_EVERY);
            });
    });
}

/// The allocations `pids` have published so far, summed (`None` when one has not published).
pub fn published(pids: &[u32]) -> Option<u64> {
    let dir = dir();
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(dir.join(pid.to_string()))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        })
        .sum()
}
