//! The open-addressing table under connection tracking: fixed-size slots in
//! one flat array, linear probing, deletion by backward shift (no
//! tombstones, so probe lengths never creep up), at most half full.
//!
//! Why not a general hash map: a hit is the per-packet operation, and at a
//! million flows every lookup is a cache miss. Here a key is two words
//! compared in place, a flow's whole entry is in the 32-byte slot next to
//! its key (two to a cache line: a hit on its home slot costs one miss, a
//! probe that runs on to the next slot one more at most), and the array
//! ([`Slots`]) is on huge pages so the miss is not also a TLB miss.
//!
//! Growing never stalls: a full-size rehash of a million flows held the
//! dataplane ~200 ms. When the table is half full it gets an array twice
//! the size, and the keys move over a little at a time ([`MIGRATE_STEP`]
//! slots per insert, more per expiry turn), whole probe runs at once, in
//! order from a free slot. So the old array is split in two at a free
//! slot: runs before the split have moved, runs after it have not, and a
//! key is looked for in the old array exactly when its home there is
//! after the split (and, if not found, in the new one: new keys always go
//! to the new array). The moves end long before the new array is half full.
//!
//! Keys come from the wire, so slots are found by a keyed hash
//! ([`Seeds`]): a folded 64x64->128 multiply of the two key words xored
//! with two secret random words drawn per table (foldhash's construction).
//! A sender cannot compute which tuples collide without the seeds.

use super::slots::{Slots, Zeroable};

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

// SAFETY: two integers and a `V` that is itself all-zero valid.
unsafe impl<V: Zeroable> Zeroable for Slot<V> {}

impl<V: Zeroable> Slot<V> {
    #[inline]
    fn is_free(&self) -> bool {
        self.key[1] == 0
    }
}

/// The smallest table made (slots).
const MIN_SLOTS: usize = 64;

/// Old slots moved to the new array per insert while the table grows. The
/// moves must end before the new array (twice the old one) is half full:
/// the old one was at most half full when it grew, so the inserts left
/// until then are about half its slots, and a little over two slots per
/// insert would do.
pub(super) const MIGRATE_STEP: usize = 8;

/// Inserts that wait for room before a table the kernel refused memory to
/// asks again.
const RETRY_GROW: u32 = 4096;

/// The array a growing table is leaving.
struct Old<V: Zeroable> {
    slots: Slots<Slot<V>>,
    mask: usize,
    /// The free slot the moves started from.
    start: usize,
    /// Slots walked from `start`; between moves the slot after them is
    /// free, and every key homed before it has moved (its slot is free now).
    done: usize,
}

impl<V: Zeroable> Old<V> {
    /// Whether a key homed at slot `home` of the old array is still there
    /// (if it is in the table at all).
    #[inline]
    fn holds(&self, home: usize) -> bool {
        (home.wrapping_sub(self.start) & self.mask) >= self.done
    }
}

pub(super) struct Table<V: Zeroable> {
    slots: Slots<Slot<V>>,
    mask: usize,
    /// Keys in both arrays.
    len: usize,
    seeds: Seeds,
    /// While growing: the array the keys are moving from.
    old: Option<Old<V>>,
    /// Inserts to wait before asking for memory again after the kernel
    /// refused it (not a system call per refused flow).
    retry_grow: u32,
    /// Tests: act as if the kernel refused every new array.
    #[cfg(test)]
    refuse_memory: bool,
}

/// The slot holding `k` in `slots`, probing from `home`.
#[inline]
fn probe<V: Zeroable>(slots: &[Slot<V>], mask: usize, home: usize, k: &Words) -> Option<usize> {
    let mut i = home;
    loop {
        let s = slots.get(i)?;
        if s.key == *k {
            return Some(i);
        }
        if s.is_free() {
            return None;
        }
        i = (i + 1) & mask;
    }
}

/// The first free slot from `home` on (the table is never full).
#[inline]
fn free_from<V: Zeroable>(slots: &[Slot<V>], mask: usize, home: usize) -> usize {
    let mut i = home;
    while slots.get(i).is_some_and(|s| !s.is_free()) {
        i = (i + 1) & mask;
    }
    i
}

/// Empties slot `i` of `slots`, moving later keys of its probe run back so
/// that every key stays reachable from its home slot. A key moves only into
/// a slot at or cyclically after `i`, and never past a free slot.
fn remove_shifting<V: Zeroable>(
    slots: &mut [Slot<V>],
    mask: usize,
    seeds: &Seeds,
    mut i: usize,
) -> Option<Slot<V>> {
    let removed = *slots.get(i).filter(|s| !s.is_free())?;
    let mut j = i;
    loop {
        j = (j + 1) & mask;
        let s = slots[j];
        if s.is_free() {
            break;
        }
        // Slot j's key may fill the hole at i unless its home lies
        // cyclically in (i, j].
        let home = seeds.hash(&s.key) as usize & mask;
        if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
            slots[i] = s;
            i = j;
        }
    }
    slots[i].key = [0, 0];
    Some(removed)
}

impl<V: Zeroable> Table<V> {
    pub fn new() -> Table<V> {
        Table {
            slots: Slots::empty(),
            mask: 0,
            len: 0,
            seeds: Seeds::random(),
            old: None,
            retry_grow: 0,
            #[cfg(test)]
            refuse_memory: false,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Slots, free or not, of both arrays while growing (sweeps walk them
    /// by index: the new array's first, then the old one's).
    pub fn slots(&self) -> usize {
        self.slots.len() + self.old.as_ref().map_or(0, |o| o.slots.len())
    }

    /// Whether keys are still moving to a grown array.
    #[cfg(test)]
    pub fn growing(&self) -> bool {
        self.old.is_some()
    }

    /// The key and value in slot `i`, if it holds one.
    #[inline]
    pub fn at(&self, i: usize) -> Option<&Slot<V>> {
        let s = match i.checked_sub(self.slots.len()) {
            None => self.slots.get(i),
            Some(j) => self.old.as_ref()?.slots.get(j),
        };
        s.filter(|s| !s.is_free())
    }

    /// The value in slot `i` (one [`Table::find`] or [`Table::insert`]
    /// returned, with nothing inserted since).
    #[inline]
    pub fn value_mut(&mut self, i: usize) -> &mut V {
        match (i.checked_sub(self.slots.len()), self.old.as_mut()) {
            (Some(j), Some(o)) => &mut o.slots[j].value,
            _ => &mut self.slots[i].value,
        }
    }

    /// The slot holding `k`.
    #[inline]
    pub fn find(&self, k: &Words) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let h = self.seeds.hash(k) as usize;
        if let Some(o) = &self.old {
            if o.holds(h & o.mask) {
                if let Some(i) = probe(&o.slots, o.mask, h & o.mask, k) {
                    return Some(self.slots.len() + i);
                }
            }
        }
        probe(&self.slots, self.mask, h & self.mask, k)
    }

    /// Starts loading the home slot of `k` into the cache, so that a
    /// lookup of `k` a little later finds it there instead of waiting for
    /// memory. Only a hint: nothing changes.
    #[inline]
    pub fn prefetch(&self, k: &Words) {
        if self.len == 0 {
            return;
        }
        let h = self.seeds.hash(k) as usize;
        let s = match &self.old {
            Some(o) if o.holds(h & o.mask) => o.slots.get(h & o.mask),
            _ => self.slots.get(h & self.mask),
        };
        if let Some(s) = s {
            prefetch(s);
        }
    }

    /// Puts `k` in (replacing its value if present); returns its slot, or
    /// `None` when the table is full because the kernel refused the memory
    /// to grow it.
    pub fn insert(&mut self, k: Words, value: V) -> Option<usize> {
        debug_assert!(k[1] != 0, "a key's second word is never zero");
        self.migrate(MIGRATE_STEP);
        // At most half full, always (else no room for a new key): the
        // moves of a grow are paced for that.
        let room = (self.len + 1) * 2 <= self.slots.len() || self.grow();
        let h = self.seeds.hash(&k) as usize;
        if let Some(o) = &mut self.old {
            if o.holds(h & o.mask) {
                if let Some(i) = probe(&o.slots, o.mask, h & o.mask, &k) {
                    o.slots[i].value = value;
                    return Some(self.slots.len() + i);
                }
            }
        }
        if let Some(i) = probe(&self.slots, self.mask, h & self.mask, &k) {
            self.slots[i].value = value;
            return Some(i);
        }
        if !room {
            return None;
        }
        let i = free_from(&self.slots, self.mask, h & self.mask);
        self.slots[i] = Slot { key: k, value };
        self.len += 1;
        Some(i)
    }

    /// Empties slot `i`, moving later keys of its probe run back (see
    /// [`remove_shifting`]). A walk by index that looks at slot `i` again
    /// after a removal misses no key of that array.
    pub fn remove_at(&mut self, i: usize) -> Option<Slot<V>> {
        let removed = match (i.checked_sub(self.slots.len()), self.old.as_mut()) {
            // The old array's split stays at a free slot: a removal shifts
            // keys back within their run, never past a free slot.
            (Some(j), Some(o)) => remove_shifting(&mut o.slots, o.mask, &self.seeds, j),
            (Some(_), None) => None,
            (None, _) => remove_shifting(&mut self.slots, self.mask, &self.seeds, i),
        }?;
        self.len -= 1;
        Some(removed)
    }

    #[cfg(test)]
    pub fn remove(&mut self, k: &Words) -> Option<V> {
        let i = self.find(k)?;
        self.remove_at(i).map(|s| s.value)
    }

    /// Moves the keys of at least `budget` old slots to the new array (then
    /// on to the end of that probe run); drops the old array when all have.
    pub fn migrate(&mut self, budget: usize) {
        let Table {
            slots,
            mask,
            seeds,
            old,
            ..
        } = self;
        let Some(o) = old else {
            return;
        };
        let n = o.slots.len();
        let mut walked = 0;
        while o.done < n {
            let i = (o.start + o.done) & o.mask;
            let s = o.slots[i];
            if s.is_free() {
                // Stop only between runs.
                if walked >= budget {
                    return;
                }
            } else {
                o.slots[i].key = [0, 0];
                let home = seeds.hash(&s.key) as usize & *mask;
                let j = free_from(slots, *mask, home);
                slots[j] = s;
            }
            o.done += 1;
            walked += 1;
        }
        *old = None;
    }

    /// Gets an array twice the size (or the first one) and starts moving
    /// the keys to it; false if the kernel has no memory for it (then the
    /// table stays as it is, half full, and new keys are refused; it asks
    /// again after [`RETRY_GROW`] more). A table still moving keys finishes
    /// first (it never does in practice: see [`MIGRATE_STEP`]).
    fn grow(&mut self) -> bool {
        if self.retry_grow > 0 {
            self.retry_grow -= 1;
            return false;
        }
        self.migrate(usize::MAX);
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        #[cfg(test)]
        let new = Slots::zeroed(n).filter(|_| !self.refuse_memory);
        #[cfg(not(test))]
        let new = Slots::zeroed(n);
        let Some(new) = new else {
            self.retry_grow = RETRY_GROW;
            tracing::warn!(
                slots = n,
                flows = self.len,
                "no memory to grow a connection table: new flows are refused until there is"
            );
            return false;
        };
        let old = std::mem::replace(&mut self.slots, new);
        let old_mask = std::mem::replace(&mut self.mask, n - 1);
        if self.len == 0 {
            return true;
        }
        // At most half full: there is a free slot to start from.
        let start = old.iter().position(Slot::is_free).unwrap_or(0);
        self.old = Some(Old {
            slots: old,
            mask: old_mask,
            start,
            done: 0,
        });
        true
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

    #[test]
    fn growing_moves_keys_a_little_at_a_time_and_loses_none() {
        let mut t: Table<u64> = Table::new();
        let mut grew_at = None;
        for i in 0..20_000 {
            t.insert(k(i), i);
            if t.growing() && grew_at.is_none() && i > 1000 {
                grew_at = Some(i);
            }
            if i % 101 == 0 {
                for j in 0..=i {
                    assert_eq!(
                        t.find(&k(j)).and_then(|s| t.at(s)).map(|s| s.value),
                        Some(j)
                    );
                }
            }
        }
        let grew_at = grew_at.expect("the table grew past 1000 keys");
        // One insert moves a few slots, not the whole table.
        t.insert(k(grew_at + 20_000), 0);
        let mut u: Table<u64> = Table::new();
        let mut inserts_while_growing = 0;
        for i in 0..5000 {
            u.insert(k(i), i);
            if u.growing() {
                inserts_while_growing += 1;
            }
        }
        assert!(
            inserts_while_growing > 100,
            "keys moved over many inserts ({inserts_while_growing})"
        );
    }

    #[test]
    fn while_growing_keys_are_updated_removed_and_added_where_they_belong() {
        let mut t: Table<u64> = Table::new();
        let mut i = 0;
        // Fill until a grow has just begun.
        while !(t.growing() && t.len() > 5000) {
            t.insert(k(i), i);
            i += 1;
        }
        let n = i;
        // (Each insert moves a few slots: few enough that the move is
        // still under way at the end.)
        for j in (0..n).step_by(8) {
            assert!(t.insert(k(j), j + 1_000_000).is_some(), "update {j}");
        }
        for j in (0..n).step_by(3) {
            assert_eq!(
                t.remove(&k(j)),
                Some(if j.is_multiple_of(8) {
                    j + 1_000_000
                } else {
                    j
                })
            );
        }
        for j in n..n + 50 {
            t.insert(k(j), j);
        }
        assert!(t.growing(), "still moving keys");
        let want = |j: u64| -> Option<u64> {
            if j < n && j.is_multiple_of(3) {
                None
            } else if j < n && j.is_multiple_of(8) {
                Some(j + 1_000_000)
            } else {
                Some(j)
            }
        };
        for j in 0..n + 50 {
            assert_eq!(
                t.find(&k(j)).and_then(|s| t.at(s)).map(|s| s.value),
                want(j),
                "key {j}"
            );
        }
        // A walk by index (the sweep's) sees both arrays' keys once each.
        let mut seen = std::collections::HashSet::new();
        for s in 0..t.slots() {
            if let Some(slot) = t.at(s) {
                assert!(seen.insert(slot.key), "a key in two slots");
            }
        }
        assert_eq!(seen.len(), t.len());
        // Moving the rest leaves every key where lookups find it.
        t.migrate(usize::MAX);
        assert!(!t.growing());
        for j in 0..n + 50 {
            assert_eq!(
                t.find(&k(j)).and_then(|s| t.at(s)).map(|s| s.value),
                want(j),
                "key {j}"
            );
        }
    }

    #[test]
    fn without_memory_to_grow_new_keys_are_refused_and_the_rest_goes_on() {
        let mut t: Table<u64> = Table::new();
        for i in 0..32 {
            assert!(t.insert(k(i), i).is_some());
        }
        t.refuse_memory = true;
        // Half full: the next new key needs a bigger array.
        assert_eq!(t.insert(k(100), 100), None);
        assert_eq!(t.len(), 32);
        assert!(t.insert(k(5), 55).is_some(), "a key there is still updated");
        assert_eq!(
            t.find(&k(5)).and_then(|s| t.at(s)).map(|s| s.value),
            Some(55)
        );
        assert_eq!(t.remove(&k(6)), Some(6));
        assert!(t.insert(k(101), 101).is_some(), "a removal makes room");
        assert_eq!(t.insert(k(102), 102), None);
        // Memory back: the table asks again after a while, not at once.
        t.refuse_memory = false;
        let mut refused = 0;
        while t.insert(k(200 + refused), 0).is_none() {
            refused += 1;
            assert!(
                refused <= u64::from(RETRY_GROW) + 1,
                "the table asks for memory again"
            );
        }
        assert!(refused > 100, "no system call per refused key ({refused})");
        for i in (0..32).filter(|&i| i != 6) {
            assert!(t.find(&k(i)).is_some(), "key {i}");
        }
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
