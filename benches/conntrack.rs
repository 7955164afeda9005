//! Connection tracking and schedulers: a hit and a miss (insert) at 1k and
//! 1M tracked flows, looked up in random order, and each scheduler's pick.

use criterion::{criterion_group, criterion_main, Criterion};
// The compiler's black box: criterion's (without its default features) reads
// results back byte by byte, which costs more than a hit.
use mesh::pipeline::lb::conntrack::{Conntrack, Key, Timeouts};
use mesh::pipeline::lb::{Backend, FlowKey, Scheduler};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fn key(i: u32) -> Key {
    Key {
        protocol: 6,
        client: Ipv4Addr::from(0x0a00_0000 | (i >> 16)),
        client_port: (i & 0xffff) as u16,
        vip: Ipv4Addr::new(10, 0, 0, 2),
        port: 80,
    }
}

/// A cheap permutation of 0..n (multiplication by an odd constant mod 2^k,
/// then kept below n), so lookups do not walk the table in insertion order.
fn shuffled(n: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).map(|i| i.wrapping_mul(2_654_435_761) % n).collect();
    v.dedup();
    v
}

/// The process's resident memory, from /proc/self/statm (0 if unreadable).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// An array of 32-byte slots in its own huge-page mapping, read at
/// hashed positions: the memory system's floor for a table of that size.
struct Floor {
    slots: &'static mut [[u64; 4]],
}

impl Floor {
    fn new(len: usize) -> Floor {
        const HUGE: usize = 2 << 20;
        let bytes = len * 32;
        // SAFETY: a fresh anonymous mapping (with room to start on a huge
        // page boundary), leaked for the benchmark's life; zeroed by the
        // kernel, so every [u64; 4] in it is initialised.
        let slots = unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                bytes + HUGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED, "memory for the floor array");
            let start = (base as usize).next_multiple_of(HUGE) as *mut [u64; 4];
            libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE);
            std::slice::from_raw_parts_mut(start, len)
        };
        for (i, s) in slots.iter_mut().enumerate() {
            s[0] = i as u64;
        }
        Floor { slots }
    }

    #[inline]
    fn at(&self, i: u32) -> usize {
        (u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) as usize & (self.slots.len() - 1)
    }

    #[inline]
    fn prefetch(&self, i: u32) {
        let p = &self.slots[self.at(i)];
        // SAFETY: a hint about a live reference; it reads nothing.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (p as *const [u64; 4]).cast(),
            )
        };
    }

    #[inline]
    fn read(&self, i: u32) -> u64 {
        self.slots[self.at(i)][0]
    }
}

/// Frames looked up in one batch (the dataplane takes up to
/// `io::driver::BATCH`, 64, per wake-up).
const BATCH: usize = 32;

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let backend = Ipv4Addr::new(10, 0, 0, 5);
    let mut g = c.benchmark_group("conntrack");
    for n in [1_000u32, 1_000_000] {
        let before = rss_bytes();
        // Nothing expires while the clock runs on (the expire step moves it
        // a second a call): every step looks at a full table.
        let forever = Duration::from_secs(1 << 40);
        let timeouts = Timeouts {
            tcp_syn: forever,
            tcp_established: forever,
            tcp_closing: forever,
            tcp_closed: forever,
            udp: forever,
        };
        let mut ct = Conntrack::new(2 * n as usize, timeouts);
        // The slowest insert while filling: what one packet may wait when
        // the table has to grow under it.
        // Beside it, the slowest of as many empty steps as long as an
        // insert: the machine's own pauses (a VM's vCPU is descheduled now
        // and then), which no table can do anything about.
        let (mut slowest, mut over, mut pause) = (Duration::ZERO, 0, Duration::ZERO);
        for i in 0..n {
            let t = Instant::now();
            let _ = ct.insert(key(i), backend, now);
            let took = t.elapsed();
            // The task's SYN-ACK opens the connection: the hits below are an
            // established flow's packets, as nearly all packets are.
            let _ = ct.touch(&key(i), 0x12, false, now);
            slowest = slowest.max(took);
            over += u32::from(took > Duration::from_micros(500));
            let t = Instant::now();
            while t.elapsed() < took.min(Duration::from_micros(1)) {}
            pause = pause.max(t.elapsed());
        }
        let grown = rss_bytes().saturating_sub(before);
        println!(
            "conntrack growth: the slowest of {n} inserts took {slowest:?}, {over} over 0.5 ms \
             (the machine's slowest empty step: {pause:?})"
        );
        println!(
            "conntrack memory: {n} flows take {:.1} MB of resident memory ({} bytes a flow)",
            grown as f64 / 1e6,
            grown / u64::from(n)
        );
        let order = shuffled(n);
        let mut at = 0usize;
        let keys: Vec<_> = order.iter().map(|i| key(*i)).collect();
        // The per-packet operation: find the flow and note the packet.
        g.bench_function(format!("hit, {n} flows"), |b| {
            b.iter(|| {
                at += 1;
                if at == keys.len() {
                    at = 0;
                }
                black_box(ct.touch(&keys[at], 0x10, true, now))
            })
        });
        // As the dataplane looks flows up: a batch of frames at a time, each
        // flow's slot asked for before the first lookup. Time per hit.
        g.bench_function(
            format!("hit, {n} flows, batches of {BATCH} prefetched"),
            |b| {
                b.iter_custom(|iters| {
                    let batches = iters.div_ceil(BATCH as u64);
                    let start = Instant::now();
                    for _ in 0..batches {
                        if at + BATCH > keys.len() {
                            at = 0;
                        }
                        let batch = &keys[at..at + BATCH];
                        at += BATCH;
                        for k in batch {
                            ct.prefetch(k);
                        }
                        for k in batch {
                            black_box(ct.touch(k, 0x10, true, now));
                        }
                    }
                    let hits = (batches * BATCH as u64) as f64;
                    start.elapsed().mul_f64(iters as f64 / hits)
                })
            },
        );
        // The memory's own floor, for comparison in the same run: one
        // random 32-byte read per flow from an array as big as the flow
        // table (huge pages too), in the same prefetched batches, with
        // nothing else done. A hit cannot be faster than this.
        let floor = Floor::new((2 * n as usize).next_power_of_two());
        g.bench_function(
            format!("memory floor, {n} flows, batches of {BATCH} prefetched"),
            |b| {
                b.iter_custom(|iters| {
                    let batches = iters.div_ceil(BATCH as u64);
                    let start = Instant::now();
                    for _ in 0..batches {
                        if at + BATCH > order.len() {
                            at = 0;
                        }
                        let batch = &order[at..at + BATCH];
                        at += BATCH;
                        for &i in batch {
                            floor.prefetch(i);
                        }
                        for &i in batch {
                            black_box(floor.read(i));
                        }
                    }
                    let reads = (batches * BATCH as u64) as f64;
                    start.elapsed().mul_f64(iters as f64 / reads)
                })
            },
        );
        g.bench_function(format!("sweep, {n} flows (none expired)"), |b| {
            b.iter(|| ct.sweep(now))
        });
        // What a dataplane turn pays while a pass is under way: one step.
        let mut step_at = 0;
        g.bench_function(format!("expire step, {n} flows (none expired)"), |b| {
            b.iter(|| step_at = ct.sweep_step(step_at, now))
        });
        let mut next = n;
        g.bench_function(format!("miss + insert, {n} flows"), |b| {
            b.iter(|| {
                next = next.wrapping_add(1);
                let k = key(next);
                if ct.get(&k, now).is_none() {
                    let _ = ct.insert(k, backend, now);
                }
                if ct.len() > 2 * n as usize - 10 {
                    ct.remove(&k);
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("scheduler pick");
    let backends: Vec<Backend> = (0..10u8)
        .map(|i| Backend {
            ip: Ipv4Addr::new(10, 0, 1, i),
            weight: 1 + u32::from(i % 3),
        })
        .collect();
    let active = vec![3u32; backends.len()];
    for name in ["rr", "wrr", "lc", "sh", "mh"] {
        let mut s = Scheduler::named(name, &backends).expect("known scheduler");
        let mut i = 0u32;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let f = FlowKey {
                    src: Ipv4Addr::from(0x0a00_0000 | i),
                    src_port: i as u16,
                    dst_port: 80,
                    protocol: 6,
                };
                black_box(s.pick(&backends, &f, &active))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
