//! Load-balancing schedulers for service VIPs, as IPVS names them: each picks
//! the backend (task) a new flow goes to. They are pure: the state they keep
//! (a round-robin position, a Maglev table) lives in the scheduler value, and
//! the connection counts `lc` reads are passed in.
//!
//! - [`Scheduler::RoundRobin`] (`rr`, the default, as in Swarm)
//! - [`Scheduler::WeightedRoundRobin`] (`wrr`, smooth: weights 5,1,1 give a a b a c a a, not a a a a a b c)
//! - [`Scheduler::LeastConnections`] (`lc`)
//! - [`Scheduler::SourceHash`] (`sh`, the client's address picks)
//! - [`Scheduler::Maglev`] (`mh`, consistent: every host builds the same
//!   table, so a flow picks the same task everywhere, and few flows move when
//!   a task comes or goes)

pub mod conntrack;
pub mod icmp;
pub mod maglev;
pub mod nat;
pub mod stats;

use std::net::Ipv4Addr;

/// One backend a scheduler may pick: its address and weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub weight: u32,
}

/// What a scheduler knows of a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
}

/// A scheduler with its state, for one service's backends.
#[derive(Debug, Clone)]
pub enum Scheduler {
    RoundRobin { next: usize },
    WeightedRoundRobin { current: Vec<i64> },
    LeastConnections,
    SourceHash,
    Maglev(maglev::Table),
}

impl Scheduler {
    /// The scheduler named `rr`, `wrr`, `lc`, `sh` or `mh`, for `backends`.
    pub fn named(name: &str, backends: &[Backend]) -> Option<Scheduler> {
        Some(match name {
            "rr" => Scheduler::RoundRobin { next: 0 },
            "wrr" => Scheduler::WeightedRoundRobin {
                current: vec![0; backends.len()],
            },
            "lc" => Scheduler::LeastConnections,
            "sh" => Scheduler::SourceHash,
            "mh" => Scheduler::Maglev(maglev::Table::build(backends, maglev::DEFAULT_SIZE)),
            _ => return None,
        })
    }

    /// The index in `backends` of the backend for a new flow; `None` when
    /// there is none. `active[i]` is backend i's open connections (for `lc`).
    pub fn pick(&mut self, backends: &[Backend], flow: &FlowKey, active: &[u32]) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let n = backends.len();
        match self {
            Scheduler::RoundRobin { next } => {
                let i = *next % n;
                *next = (i + 1) % n;
                Some(i)
            }
            Scheduler::WeightedRoundRobin { current } => {
                // nginx's smooth weighted round robin: add each weight, take
                // the largest, subtract the total from it.
                current.resize(n, 0);
                let total: i64 = backends.iter().map(|b| i64::from(b.weight.max(1))).sum();
                let mut best = 0;
                for (i, b) in backends.iter().enumerate() {
                    current[i] += i64::from(b.weight.max(1));
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                Some(best)
            }
            Scheduler::LeastConnections => {
                // Fewest connections per unit of weight; ties go to the first.
                (0..n).min_by(|&a, &b| {
                    let ca = u64::from(active.get(a).copied().unwrap_or(0))
                        * u64::from(backends[b].weight.max(1));
                    let cb = u64::from(active.get(b).copied().unwrap_or(0))
                        * u64::from(backends[a].weight.max(1));
                    ca.cmp(&cb)
                })
            }
            Scheduler::SourceHash => {
                Some((mix(u64::from(u32::from(flow.src))) % n as u64) as usize)
            }
            Scheduler::Maglev(table) => table.lookup(flow_hash(flow)).filter(|i| *i < n),
        }
    }
}

/// A 64-bit finalizer (splitmix64): spreads any input over all bits.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The hash Maglev looks a flow up by: the same on every host.
pub fn flow_hash(f: &FlowKey) -> u64 {
    mix(u64::from(u32::from(f.src)) << 32
        | u64::from(f.src_port) << 16
        | u64::from(f.dst_port) ^ u64::from(f.protocol) << 56)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend {
                ip: Ipv4Addr::new(10, 0, 0, 10 + i as u8),
                weight: *w,
            })
            .collect()
    }

    fn flow(i: u32) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::from(0x0a00_0000 + i),
            src_port: 40000 + (i % 1000) as u16,
            dst_port: 80,
            protocol: 6,
        }
    }

    fn counts(s: &mut Scheduler, b: &[Backend], flows: u32) -> Vec<u32> {
        let mut c = vec![0; b.len()];
        for i in 0..flows {
            let k = s.pick(b, &flow(i), &c).unwrap();
            c[k] += 1;
        }
        c
    }

    #[test]
    fn rr_spreads_100_connections_over_4_tasks_as_25_each() {
        let b = backends(&[1, 1, 1, 1]);
        assert_eq!(
            counts(&mut Scheduler::named("rr", &b).unwrap(), &b, 100),
            vec![25, 25, 25, 25]
        );
    }

    #[test]
    fn wrr_follows_the_weights_smoothly() {
        let b = backends(&[5, 1, 1]);
        let mut s = Scheduler::named("wrr", &b).unwrap();
        let seq: Vec<usize> = (0..7).map(|i| s.pick(&b, &flow(i), &[]).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let b = backends(&[3, 1]);
        assert_eq!(
            counts(&mut Scheduler::named("wrr", &b).unwrap(), &b, 100),
            vec![75, 25]
        );
    }

    #[test]
    fn lc_picks_the_least_loaded_per_weight() {
        let b = backends(&[1, 1, 2]);
        let mut s = Scheduler::LeastConnections;
        assert_eq!(s.pick(&b, &flow(0), &[3, 1, 3]), Some(1));
        assert_eq!(
            s.pick(&b, &flow(0), &[3, 2, 3]),
            Some(2),
            "3/2 per weight beats 2/1"
        );
        assert_eq!(counts(&mut s, &b, 100), vec![25, 25, 50]);
    }

    #[test]
    fn sh_sends_a_client_to_the_same_task() {
        let b = backends(&[1, 1, 1]);
        let mut s = Scheduler::SourceHash;
        let f = flow(7);
        let first = s.pick(&b, &f, &[]);
        for port in 0..50 {
            assert_eq!(
                s.pick(
                    &b,
                    &FlowKey {
                        src_port: port,
                        ..f
                    },
                    &[]
                ),
                first
            );
        }
        let c = counts(&mut s, &b, 3000);
        assert!(c.iter().all(|x| (800..1200).contains(x)), "{c:?}");
    }

    #[test]
    fn no_backend_no_pick() {
        for name in ["rr", "wrr", "lc", "sh", "mh"] {
            assert_eq!(
                Scheduler::named(name, &[])
                    .unwrap()
                    .pick(&[], &flow(1), &[]),
                None,
                "{name}"
            );
        }
        assert!(Scheduler::named("random", &[]).is_none());
    }
}
