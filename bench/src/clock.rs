//! Timestamps that mean the same thing in every process on the machine.
//!
//! Publisher and subscribers usually live in one generator process, but the head-of-line test may
//! run them in different processes (and network namespaces): `CLOCK_MONOTONIC` is machine-wide,
//! so a timestamp written by one process can be compared by another.

/// Nanoseconds on the machine's monotonic clock.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
