//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): a
//! lookup table of prime size M filled by the backends in turn, each taking
//! the next free slot of its own permutation of 0..M. Every host builds the
//! same table from the same backends, so a flow maps to the same backend
//! everywhere, and when a backend comes or goes only about 1/N of the table
//! (and so of the flows) moves.

use super::{mix, Backend};

/// The table size used in the datapath: a prime well above 100 x backends.
pub const DEFAULT_SIZE: usize = 65_537;

/// A Maglev lookup table: slot -> backend index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    slots: Vec<u32>,
}

/// The (offset, skip) of a backend's permutation, from its address alone, so
/// the order of the backend list does not change the table.
fn permutation(b: &Backend, m: usize) -> (usize, usize) {
    let key = u64::from(u32::from(b.ip));
    let h1 = mix(key ^ 0x6d61_676c_6576_0001);
    let h2 = mix(key ^ 0x6d61_676c_6576_0002);
    let offset = (h1 % m as u64) as usize;
    let skip = (h2 % (m as u64 - 1)) as usize + 1;
    (offset, skip)
}

impl Table {
    /// Builds the table of size `m` (a prime) for `backends` (paper, pseudocode 1).
    /// Backends are sorted by address first, so every host agrees.
    pub fn build(backends: &[Backend], m: usize) -> Table {
        let n = backends.len();
        if n == 0 || m < 2 {
            return Table { slots: Vec::new() };
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| backends[i].ip);
        let perms: Vec<(usize, usize)> = order
            .iter()
            .map(|&i| permutation(&backends[i], m))
            .collect();
        let mut next = vec![0usize; n];
        let mut slots = vec![u32::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (k, &(offset, skip)) in perms.iter().enumerate() {
                let mut c = (offset + next[k] * skip) % m;
                while slots[c] != u32::MAX {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                slots[c] = order[k] as u32;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Table { slots }
    }

    /// The backend index for a flow hash.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        Some(self.slots[(hash % self.slots.len() as u64) as usize] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn backends(n: u8) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                ip: Ipv4Addr::new(10, 0, 1, 10 + i),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn the_papers_small_example_shape() {
        // The paper's figure uses M = 7 with 3 backends: each backend gets
        // its turn in order, taking the next free slot of its permutation,
        // so the shares differ by at most one slot.
        let t = Table::build(&backends(3), 7);
        let mut share = [0; 3];
        for s in &t.slots {
            share[*s as usize] += 1;
        }
        assert_eq!(share.iter().sum::<i32>(), 7);
        assert!(share.iter().all(|s| (2..=3).contains(s)), "{share:?}");
    }

    #[test]
    fn every_host_builds_the_same_table_whatever_the_order() {
        let b = backends(5);
        let mut r = b.clone();
        r.reverse();
        let (t1, t2) = (Table::build(&b, 251), Table::build(&r, 251));
        for h in 0..251u64 {
            assert_eq!(b[t1.lookup(h).unwrap()].ip, r[t2.lookup(h).unwrap()].ip);
        }
    }

    #[test]
    fn shares_are_even_and_few_flows_move_when_a_backend_leaves() {
        let m = DEFAULT_SIZE;
        let b = backends(5);
        let before = Table::build(&b, m);
        let mut share = [0usize; 5];
        for s in &before.slots {
            share[*s as usize] += 1;
        }
        assert!(
            share.iter().all(|s| s.abs_diff(m / 5) <= m / 100),
            "{share:?}"
        );
        // Remove backend 2: only its slots (about 1/5) should change owner.
        let mut fewer = b.clone();
        fewer.remove(2);
        let after = Table::build(&fewer, m);
        let moved = (0..m)
            .filter(|&s| {
                let was = b[before.slots[s] as usize].ip;
                let now = fewer[after.slots[s] as usize].ip;
                was != now && was != b[2].ip
            })
            .count();
        assert!(
            moved < m / 50,
            "{moved} of {m} slots of remaining backends moved"
        );
    }
}
