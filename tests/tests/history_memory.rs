//! What the embedded broker's history really holds in memory, against the bytes it counts
//! toward `limits.history_max_bytes` and `history_tenant_max_bytes`: a counting allocator
//! sees every live byte of this test process, each allocation rounded up to its jemalloc size
//! class (the server binary's allocator). The budgets must bound real memory: tiny payloads
//! must not hold many times what is counted.
//!
//! One test only, so nothing else allocates beside it. `cargo test -p quiver-tests --test
//! history_memory -- --nocapture` prints the measurements.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use quiver_proto::{Position, RoomName, TenantId};
use quiver_server::broker::memory::MemoryBroker;
use quiver_server::broker::Broker;
use quiver_server::config::NamespaceConfig;
use quiver_server::hub::{Hub, RoomKey};
use quiver_server::Config;

struct Counting;

/// Live bytes, in size classes.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// jemalloc's size class of an allocation: 8, then multiples of 16 up to 128, then four
/// classes per doubling.
fn class(size: usize) -> usize {
    if size <= 8 {
        return 8;
    }
    if size <= 128 {
        return size.next_multiple_of(16);
    }
    // 2^k < size <= 2^(k+1): steps of 2^(k-2).
    let k = usize::BITS - 1 - (size - 1).leading_zeros();
    size.next_multiple_of(1 << (k - 2))
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(class(layout.size()), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(class(layout.size()), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(class(layout.size()), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(class(layout.size()), Ordering::Relaxed);
            LIVE.fetch_add(class(new_size), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TENANT_MAX: u64 = 8 * 1024 * 1024;
const GLOBAL_MAX: u64 = 16 * 1024 * 1024;

fn broker(budgets: bool) -> MemoryBroker {
    let mut config = Config::default();
    config.namespaces.push(NamespaceConfig {
        name: "chat".into(),
        history_size: 1_000_000,
        history_ttl: Duration::from_secs(3600),
        ..Default::default()
    });
    if budgets {
        config.limits.history_tenant_max_bytes = TENANT_MAX;
        config.limits.history_max_bytes = GLOBAL_MAX;
    } else {
        config.limits.history_tenant_max_bytes = u64::MAX / 2;
        config.limits.history_max_bytes = u64::MAX / 2;
    }
    // Outside a runtime: no sweeper task.
    MemoryBroker::new(Arc::new(Hub::default()), Arc::new(config))
}

fn key(room: &str) -> RoomKey {
    RoomKey {
        tenant: TenantId::parse("acme").unwrap(),
        room: RoomName::parse(room).unwrap(),
    }
}

fn publish(b: &MemoryBroker, room: &str, payload: Bytes) -> Position {
    b.publish(key(room), payload)
        .now_or_never()
        .expect("the memory broker answers at once")
        .expect("published")
        .expect("a history room")
}

/// Replays the room's whole history (and drops it): every kept payload is cloned once. A
/// resume reads nothing at `Subscribe`: its pages are read here as a stream would take them.
fn replay(b: &MemoryBroker, room: &str, epoch: u64) -> usize {
    let since = Position { epoch, offset: 0 };
    let recovered = b
        .recover(key(room), Some(since))
        .now_or_never()
        .expect("at once")
        .expect("recovered");
    let mut replayed = recovered.replay.expect("all kept").len();
    if let Some(mut rest) = recovered.rest {
        while rest.remaining() > 0 {
            let page = rest.next_page().now_or_never().expect("at once");
            replayed += page.expect("kept").len();
        }
    }
    replayed
}

struct Measured {
    name: &'static str,
    publications: usize,
    /// What the allocator holds more after the publications than before.
    live: usize,
    /// What the broker counts toward the budgets.
    counted: u64,
}

fn measure(
    name: &'static str,
    budgets: bool,
    run: impl FnOnce(&MemoryBroker) -> usize,
) -> Measured {
    let b = broker(budgets);
    let before = LIVE.load(Ordering::Relaxed);
    let publications = run(&b);
    let live = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let counted = b.history_bytes();
    drop(b);
    Measured {
        name,
        publications,
        live,
        counted,
    }
}

#[test]
fn history_budgets_bound_what_history_really_holds() {
    let one = || Bytes::from_static(b"x");
    let n = 100_000;
    let results = [
        measure("1-byte, 100 rooms", false, |b| {
            for i in 0..n {
                publish(b, &format!("chat.r{}", i % 100), Bytes::from(vec![i as u8]));
            }
            n
        }),
        measure("1-byte broadcast, 100 rooms", false, |b| {
            for _ in 0..n / 100 {
                let payload = Bytes::from(vec![b'x']);
                for r in 0..100 {
                    publish(b, &format!("chat.r{r}"), payload.clone());
                }
            }
            n
        }),
        measure("1-byte, a room each", false, |b| {
            for i in 0..n {
                publish(b, &format!("chat.d{i}"), one());
            }
            n
        }),
        measure("1-byte, 100 rooms of 129, replayed", false, |b| {
            // Rings just grown (2 slots per entry), payloads shared once cloned: the most an
            // entry holds while rooms grow.
            // Each room's epoch, from its first publication.
            let mut epochs = Vec::new();
            for i in 0..100 * 129 {
                let p = publish(b, &format!("chat.r{}", i % 100), Bytes::from(vec![i as u8]));
                if i < 100 {
                    epochs.push(p.epoch);
                }
            }
            for (r, epoch) in epochs.into_iter().enumerate() {
                assert_eq!(replay(b, &format!("chat.r{r}"), epoch), 129);
            }
            100 * 129
        }),
        measure("1-byte sliced from 8 KiB, 100 rooms", false, |b| {
            // What an HTTP body is: a slice of the connection's read buffer.
            for i in 0..n / 10 {
                let buffer = Bytes::from(vec![0u8; 8192]);
                publish(b, &format!("chat.r{}", i % 100), buffer.slice(0..1));
            }
            n / 10
        }),
        measure("1 KiB, 100 rooms", false, |b| {
            for i in 0..n / 10 {
                publish(
                    b,
                    &format!("chat.r{}", i % 100),
                    Bytes::from(vec![7u8; 1024]),
                );
            }
            n / 10
        }),
        measure("1-byte, 100 rooms, over the budget", true, |b| {
            for i in 0..3 * n {
                publish(b, &format!("chat.r{}", i % 100), one());
            }
            3 * n
        }),
        measure("1-byte, a room each, over the budget", true, |b| {
            for i in 0..3 * n {
                publish(b, &format!("chat.d{i}"), one());
            }
            3 * n
        }),
    ];
    for m in &results {
        eprintln!(
            "{:<40} {:>7} publications: allocated {:>10} B ({:>5.0} each), counted {:>10} B ({:>5.0} each), allocated/counted {:.2}",
            m.name,
            m.publications,
            m.live,
            m.live as f64 / m.publications as f64,
            m.counted,
            m.counted as f64 / m.publications as f64,
            m.live as f64 / m.counted as f64,
        );
    }
    for m in &results {
        // What is counted bounds what is held, within allocator noise.
        assert!(
            m.live as f64 <= 1.1 * m.counted as f64,
            "{}: {} bytes held, {} counted",
            m.name,
            m.live,
            m.counted
        );
    }
    // Over the budget, the count stays within it, and so (by the above) does memory.
    for m in &results[6..] {
        assert!(m.counted <= TENANT_MAX, "{}: {}", m.name, m.counted);
    }
}
