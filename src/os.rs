//! The operating-system calls the runtime itself needs, below every other layer: counters in
//! memory shared by the processes of a tree (`runtime::balance`), registering a listening
//! socket with the event loop, giving the core away (`runtime::cpu_share`) and pinning a
//! process to a CPU (`Worker::cpu_affinity`). With
//! `process/sys.rs` (the process tree's plumbing), the only module that uses `unsafe` or `nix`.

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Counters in memory shared by the processes of a tree: a `memfd` the master creates and its
/// children inherit (like a listener), mapped by each. Only atomics live there, so processes
/// that read and write it at once need no other agreement.
pub(crate) struct SharedCounters {
    fd: OwnedFd,
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
}

impl SharedCounters {
    /// `len` zeroed counters in a new shared file.
    pub(crate) fn create(name: &str, len: usize) -> std::io::Result<SharedCounters> {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, (len.max(1) * 8) as i64)?;
        SharedCounters::map(fd)
    }

    /// Maps the counters of a file inherited from the master (as many as its size holds).
    pub(crate) fn map(fd: OwnedFd) -> std::io::Result<SharedCounters> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let size = nix::sys::stat::fstat(&fd)?.st_size as usize;
        let len = size / 8;
        let length = std::num::NonZeroUsize::new(len * 8)
            .ok_or_else(|| std::io::Error::other("an empty counter file"))?;
        // SAFETY: a fresh shared mapping of the whole file (its size read just now; nobody
        // shrinks it: only the master truncates, once, before any child exists), at an address
        // the kernel picks, so it aliases no Rust object. It stays mapped until `drop`.
        let ptr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }?;
        Ok(SharedCounters {
            fd,
            ptr: ptr.cast(),
            len,
        })
    }

    /// The counters. Other processes change them at any time, which atomics allow.
    pub(crate) fn counters(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping holds `len` page-aligned 8-byte words, zero-filled or written
        // only through `AtomicU64` (by this process or another mapping the same file), lives
        // as long as `self`, and is only ever handed out shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The file, for a child to inherit.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Another descriptor of the same file.
    #[cfg(test)]
    pub(crate) fn duplicate_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once; no reference from
        // `counters` outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len * 8) };
    }
}

impl std::fmt::Debug for SharedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCounters")
            .field("fd", &self.fd)
            .field("len", &self.len)
            .finish()
    }
}

/// A listening socket registered with the event loop for readability (a connection queued),
/// owning it.
pub(crate) fn async_listener<T: std::os::fd::AsRawFd>(
    listener: T,
) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: the standard library's listeners own their descriptor, answer the same number
    // from `as_raw_fd` for as long as they live, and here one is moved into the `AsyncFd`,
    // which owns it until it is dropped or taken back (deregistering it first).
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

/// Binds this process (every thread it has; threads started later inherit it) to the `n`-th
/// CPU (counting round) of those it may run on now, and returns that CPU's number.
pub(crate) fn pin_to_allowed_cpu(n: u32) -> std::io::Result<usize> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0))?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    let Some(&cpu) = cpus.get(n as usize % cpus.len().max(1)) else {
        return Err(std::io::Error::other("this process may run on no CPU"));
    };
    let mut only = CpuSet::new();
    only.set(cpu)?;
    // An affinity belongs to one thread: threads the program started before `run_all` are
    // pinned one by one (one that ended meanwhile is skipped).
    sched_setaffinity(Pid::from_raw(0), &only)?;
    for entry in std::fs::read_dir("/proc/self/task")?.flatten() {
        if let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) {
            let _ = sched_setaffinity(Pid::from_raw(tid), &only);
        }
    }
    Ok(cpu)
}

/// Lets another runnable process on this core run first (`sched_yield`).
pub(crate) fn yield_core() {
    let _ = nix::sched::sched_yield();
}
