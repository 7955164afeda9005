//! The open-addressing table under connection tracking: fixed-size slots in
//! one flat array, linear probing, deletion by backward shift (no
//! tombstones, so probe lengths never creep up), at most half full.
//!
//! Why not a general hash map: a hit is the per-packet operation, and at a
//! million flows every lookup is a cache miss. Here a key is two words
//! compared in place, a flow's whole entry is in the 32-byte slot next to
//! its key (two to a cache line: a hit on its home slot costs one miss, a
//! probe that runs on to the next slot one more at most), and a big array asks the kernel for huge pages so the miss is not
//! also a TLB miss.
//!
//! Keys come from the wire, so slots are found by a keyed hash
//! ([`Seeds`]): a folded 64x64->128 multiply of the two key words xored
//! with two secret random words drawn per table (foldhash's construction).
//! A sender cannot compute which tuples collide without the seeds.

/// A table key: two words, the second never zero (zero marks a free slot).
pub(super) type Words = [u64; 2];

/// The secret words of one table's hash.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seeds {
    s0: u64,
    s1: u64,
}

impl Seeds {
    pub fn random() -> Seeds {
        Seeds {
            s0: rand::random(),
            s1: rand::random(),
        }
    }

    #[inline]
    pub fn hash(&self, k: &Words) -> u64 {
        let r = u128::from(k[0] ^ self.s0) * u128::from(k[1] ^ self.s1);
        (r as u64) ^ ((r >> 64) as u64)
    }
}

/// One slot: a key and its value, aligned so that a slot never straddles
/// two cache lines (32 bytes for the flow table's entries).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct Slot<V> {
    pub key: Words,
    pub value: V,
}

/// The smallest table made (slots).
const MIN_SLOTS: usize = 64;

pub(super) struct Table<V: Copy + Default> {
    slots: Vec<Slot<V>>,
    mask: usize,
    len: usize,
    seeds: Seeds,
}

impl<V: Copy + Default> Table<V> {
    pub fn new() -> Table<V> {
        Table {
            slots: Vec::new(),
            mask: 0,
            len: 0,
            seeds: Seeds::random(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Slots, free or not (sweeps walk them by index).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The key and value in slot `i`, if it holds one.
    #[inline]
    pub fn at(&self, i: usize) -> Option<&Slot<V>> {
        self.slots.get(i).filter(|s| s.key[1] != 0)
    }

    #[inline]
    pub fn value_mut(&mut self, i: usize) -> &mut V {
        &mut self.slots[i].value
    }

    #[inline]
    fn home(&self, k: &Words) -> usize {
        self.seeds.hash(k) as usize & self.mask
    }

    /// The slot holding `k`.
    #[inline]
    pub fn find(&self, k: &Words) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.home(k);
        loop {
            let s = &self.slots[i];
            if s.key == *k {
                return Some(i);
            }
            if s.key[1] == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Starts loading the home slot of `k` into the cache, so that a
    /// lookup of `k` a little later finds it there instead of waiting for
    /// memory. Only a hint: nothing changes.
    #[inline]
    pub fn prefetch(&self, k: &Words) {
        if self.len == 0 {
            return;
        }
        if let Some(s) = self.slots.get(self.home(k)) {
            prefetch(s);
        }
    }

    /// Puts `k` in (replacing its value if present); returns its slot.
    pub fn insert(&mut self, k: Words, value: V) -> usize {
        debug_assert!(k[1] != 0, "a key's second word is never zero");
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mut i = self.home(&k);
        loop {
            let s = &mut self.slots[i];
            if s.key == k {
                s.value = value;
                return i;
            }
            if s.key[1] == 0 {
                *s = Slot { key: k, value };
                self.len += 1;
                return i;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Empties slot `i`, moving later keys of its probe run back so that
    /// every key stays reachable from its home slot. A key moves only into
    /// a slot at or cyclically after `i`, so a walk by index that looks at
    /// slot `i` again after a removal misses no key.
    pub fn remove_at(&mut self, mut i: usize) -> Option<Slot<V>> {
        let removed = *self.at(i)?;
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let s = self.slots[j];
            if s.key[1] == 0 {
                break;
            }
            // Slot j's key may fill the hole at i unless its home lies
            // cyclically in (i, j].
            let home = self.home(&s.key);
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(i) & self.mask) {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i] = Slot {
            key: [0, 0],
            value: V::default(),
        };
        Some(removed)
    }

    #[cfg(test)]
    pub fn remove(&mut self, k: &Words) -> Option<V> {
        let i = self.find(k)?;
        self.remove_at(i).map(|s| s.value)
    }

    /// Doubles the slots (or makes the first ones) and puts every key back.
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, free_slots(n));
        self.mask = n - 1;
        self.len = 0;
        for s in old.into_iter().filter(|s| s.key[1] != 0) {
            self.insert(s.key, s.value);
        }
    }
}

#[inline]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint to the cache; it reads nothing and never
    // faults, and `p` is a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `n` free slots. A big array is offered to the kernel for transparent
/// huge pages (2 MB pages: 64 of them cover a million flows, where 4 KB
/// pages would make each random lookup a TLB miss too); a kernel that
/// refuses keeps normal pages.
fn free_slots<V: Copy + Default>(n: usize) -> Vec<Slot<V>> {
    // Advice first, then the writes that fault the pages in: pages already
    // there stay small.
    let mut v = Vec::with_capacity(n);
    const HUGE: usize = 2 << 20;
    let bytes = n * std::mem::size_of::<Slot<V>>();
    if bytes >= 2 * HUGE {
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + bytes) & !(HUGE - 1);
        if end > start {
            // SAFETY: advice on a range inside our own allocation; it
            // changes how pages are backed, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v.resize(
        n,
        Slot {
            key: [0, 0],
            value: V::default(),
        },
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u64) -> Words {
        [i, 1 << 63 | i]
    }

    #[test]
    fn the_hash_is_keyed_per_table() {
        let (a, b) = (Seeds::random(), Seeds::random());
        assert_eq!(a.hash(&k(1)), a.hash(&k(1)));
        assert_ne!(a.hash(&k(1)), b.hash(&k(1)), "another table, another hash");
        assert_ne!(a.hash(&k(1)), a.hash(&k(2)));
    }

    #[test]
    fn slots_are_a_cache_line_half() {
        assert_eq!(std::mem::size_of::<Slot<[u64; 2]>>(), 32);
        assert_eq!(std::mem::align_of::<Slot<u32>>(), 32);
    }

    #[test]
    fn keys_are_found_after_growth_and_removals() {
        let mut t: Table<u64> = Table::new();
        for i in 0..1000 {
            t.insert(k(i), i * 2);
        }
        assert_eq!(t.len(), 1000);
        assert!(t.slots() >= 2000, "at most half full");
        for i in (0..1000).step_by(3) {
            assert_eq!(t.remove(&k(i)), Some(i * 2));
        }
        for i in 0..1000 {
            let found = t.find(&k(i)).and_then(|s| t.at(s)).map(|s| s.value);
            assert_eq!(found, (i % 3 != 0).then_some(i * 2), "key {i}");
        }
        assert_eq!(t.remove(&k(0)), None);
        assert_eq!(t.find(&k(5000)), None);
    }

    proptest::proptest! {
        /// Whatever the inserts and removals (growing and shrinking a
        /// small table, so probe runs meet and wrap), the table holds what
        /// a model map holds.
        #[test]
        fn matches_a_map(ops in proptest::collection::vec((proptest::bool::ANY, 0u64..200), 1..400)) {
            let mut t: Table<u64> = Table::new();
            let mut model = std::collections::HashMap::new();
            for (n, (add, key)) in ops.into_iter().enumerate() {
                if add {
                    t.insert(k(key), n as u64);
                    model.insert(key, n as u64);
                } else {
                    proptest::prop_assert_eq!(t.remove(&k(key)), model.remove(&key));
                }
                proptest::prop_assert_eq!(t.len(), model.len());
            }
            for key in 0..200 {
                let found = t.find(&k(key)).and_then(|s| t.at(s)).map(|s| s.value);
                proptest::prop_assert_eq!(found, model.get(&key).copied());
            }
        }

        /// A walk by index that looks at a slot again after removing from
        /// it sees every key (the sweep's walk).
        #[test]
        fn a_walk_with_removals_sees_every_key(keys in proptest::collection::hash_set(0u64..10_000, 1..300), drop_mod in 1u64..5) {
            let mut t: Table<u64> = Table::new();
            for &key in &keys {
                t.insert(k(key), key);
            }
            let mut seen = std::collections::HashSet::new();
            let mut i = 0;
            while i < t.slots() {
                if let Some(v) = t.at(i).map(|s| s.value) {
                    seen.insert(v);
                    if v % drop_mod == 0 {
                        t.remove_at(i);
                        continue;
                    }
                }
                i += 1;
            }
            proptest::prop_assert_eq!(&seen, &keys);
            for &key in &keys {
                proptest::prop_assert_eq!(t.find(&k(key)).is_some(), key % drop_mod != 0);
            }
        }
    }
}
