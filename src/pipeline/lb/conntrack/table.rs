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
//! with two secret random words drawn per table (foldhash's construction),
//! folded once more with a third. A sender cannot compute which tuples
//! collide without the seeds.

use super::slots::{Slots, Zeroable};

/// A table key: two words, the second never zero (zero marks a free slot).
pub(super) type Words = [u64; 2];

/// The secret words of one table's hash.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seeds {
    s0: u64,
    s1: u64,
    s2: u64,
}

/// The 128-bit product of `a` and `b`, its halves xored.
#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

impl Seeds {
    pub fn random() -> Seeds {
        Seeds {
            s0: rand::random(),
            s1: rand::random(),
            s2: rand::random(),
        }
    }

    /// Why two multiplies: after one, the low bits (the slot) of keys that
    /// differ in one field only (a subnet of clients on one port) move
    /// along a sequence set by the seeds, and some seeds put such keys in
    /// long runs of neighbouring slots. The second multiply (by a constant
    /// with well spread bits, as foldhash finishes) spreads every input bit
    /// over the low ones.
    #[inline]
    pub fn hash(&self, k: &Words) -> u64 {
        let h = folded_multiply(k[0] ^ self.s0, k[1] ^ self.s1);
        folded_multiply(h ^ self.s2, 0x9e37_79b9_7f4a_7c15)
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

/// Slots in a 64-byte cache line (the array starts on a page boundary).
const SLOTS_PER_LINE: usize = 2;

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
    /// memory. A home slot that ends its cache line has the next line asked
    /// for too: about a third of the keys sit one slot or more past their
    /// home, and for such a home that slot is on the next line (a miss the
    /// lookup would wait for in full, one at a time). Only a hint: nothing
    /// changes.
    #[inline]
    pub fn prefetch(&self, k: &Words) {
        if self.len == 0 {
            return;
        }
        let h = self.seeds.hash(k) as usize;
        let (slots, mask) = match &self.old {
            Some(o) if o.holds(h & o.mask) => (&o.slots, o.mask),
            _ => (&self.slots, self.mask),
        };
        let home = h & mask;
        const { assert!(std::mem::size_of::<Slot<V>>() * SLOTS_PER_LINE == 64) };
        if let Some(s) = slots.get(home) {
            prefetch(s);
        }
        if home % SLOTS_PER_LINE == SLOTS_PER_LINE - 1 {
            if let Some(s) = slots.get((home + 1) & mask) {
                prefetch(s);
            }
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
mod tests;
