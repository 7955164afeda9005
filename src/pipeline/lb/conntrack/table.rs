//! The open-addressing table under connection tracking: fixed-size slots in
//! one flat array, linear probing, deletion by backward shift (no
//! tombstones, so probe lengths never creep up), at most half full or a
//! quarter full ([`Fill`]).
//!
//! Why not a general hash map: a hit is the per-packet operation, and at a
//! million flows every lookup is a cache miss. Here a key is two words
//! compared in place, a flow's whole entry is in the 32-byte slot next to
//! its key, and the array ([`Slots`]) is on huge pages so the miss is not
//! also a TLB miss.
//!
//! A key's home is a whole cache line (two slots): a lookup reads both and
//! picks the key's without a branch between them (which of the two holds
//! it is a coin toss that no predictor learns), and the batch prefetch asks
//! for that one line. A key that lies past its home line costs a second
//! memory access that nothing prefetched, a whole miss waited for in full:
//! about one key in nine at half full, one in thirty at a quarter. So the
//! flow table, looked up for every packet, is kept at most a quarter full
//! ([`Fill::Quarter`]: at a million flows it has 4M slots, 128 MB; a hit
//! costs about a quarter less than at half full). The reply index, looked
//! up for replies only, stays at most half full ([`Fill::Half`]): a
//! million flows take 192 MB in all.
//!
//! Growing never stalls: a full-size rehash of a million flows held the
//! dataplane ~200 ms. When the table is as full as it may be it gets an
//! array twice the size, and the keys move over a little at a time
//! ([`MIGRATE_STEP`] slots per insert, more per expiry turn), whole probe
//! runs at once, in order from a free slot. So the old array is split in
//! two at a free slot: runs before the split have moved, runs after it
//! have not, and a key is looked for in the old array exactly when its
//! home there is after the split (and, if not found, in the new one: new
//! keys always go to the new array). The moves end long before the new
//! array is as full as the old one was.
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
/// moves must end before the new array (twice the old one) is as full as
/// the old one was when it grew (a half or a quarter): the inserts left
/// until then are that share of the old slots, so two slots per insert
/// would do for half full and four for a quarter.
pub(super) const MIGRATE_STEP: usize = 8;

/// Inserts that wait for room before a table the kernel refused memory to
/// asks again.
const RETRY_GROW: u32 = 4096;

/// How full a table may get before it grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fill {
    /// At most half full.
    Half,
    /// At most a quarter full (see the module doc).
    Quarter,
}

/// One array of slots.
struct Array<V: Zeroable> {
    slots: Slots<Slot<V>>,
    /// Slots - 1 (a power of two).
    mask: usize,
}

impl<V: Zeroable> Array<V> {
    fn empty() -> Self {
        Array {
            slots: Slots::empty(),
            mask: 0,
        }
    }

    /// `n` free slots (a power of two), or `None` when the kernel has no
    /// memory for them.
    fn zeroed(n: usize) -> Option<Self> {
        Some(Array {
            slots: Slots::zeroed(n)?,
            mask: n - 1,
        })
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// The home slot of hash `h`: the first slot of a line.
    #[inline]
    fn home(&self, h: usize) -> usize {
        h & self.mask & !(SLOTS_PER_LINE - 1)
    }

    /// The slot holding `k`, probing from `home`.
    #[inline]
    fn probe(&self, home: usize, k: &Words) -> Option<usize> {
        let mut i = home;
        // The home line, its two slots compared without a branch between
        // them (zero where a slot holds the key); the walk goes on after it.
        if let Some([a, b]) = self.slots.get(home..home + SLOTS_PER_LINE) {
            let not_a = (a.key[0] ^ k[0]) | (a.key[1] ^ k[1]);
            let not_b = (b.key[0] ^ k[0]) | (b.key[1] ^ k[1]);
            if std::hint::select_unpredictable(not_a < not_b, not_a, not_b) == 0 {
                return Some(home + usize::from(not_b == 0));
            }
            if a.is_free() | b.is_free() {
                return None;
            }
            i = (home + SLOTS_PER_LINE) & self.mask;
        }
        loop {
            let s = self.slots.get(i)?;
            if s.key == *k {
                return Some(i);
            }
            if s.is_free() {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Starts loading the line a key homed at `home` is on.
    #[inline]
    fn prefetch(&self, home: usize) {
        const { assert!(std::mem::size_of::<Slot<V>>() * SLOTS_PER_LINE == 64) };
        if let Some(s) = self.slots.get(home) {
            prefetch(s);
        }
    }

    /// Puts `s` (homed at `home`) in the first free slot from there (the
    /// array is never full); returns that slot.
    #[inline]
    fn place(&mut self, home: usize, s: Slot<V>) -> usize {
        let mut i = home;
        while self.slots.get(i).is_some_and(|s| !s.is_free()) {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = s;
        i
    }

    /// Empties slot `i`, moving later keys of its probe run back so that
    /// every key stays reachable from its home slot. A key moves only into
    /// a slot at or cyclically after `i`, and never past a free slot.
    fn remove_shifting(&mut self, seeds: &Seeds, mut i: usize) -> Option<Slot<V>> {
        let removed = *self.slots.get(i).filter(|s| !s.is_free())?;
        let mask = self.mask;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.is_free() {
                break;
            }
            // Slot j's key may fill the hole at i unless its home lies
            // cyclically in (i, j].
            let home = self.home(seeds.hash(&s.key) as usize);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i].key = [0, 0];
        Some(removed)
    }
}

/// The array a growing table is leaving.
struct Old<V: Zeroable> {
    array: Array<V>,
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
        (home.wrapping_sub(self.start) & self.array.mask) >= self.done
    }
}

pub(super) struct Table<V: Zeroable> {
    array: Array<V>,
    /// Keys in both arrays.
    len: usize,
    seeds: Seeds,
    /// While growing: the array the keys are moving from.
    old: Option<Old<V>>,
    /// Inserts to wait before asking for memory again after the kernel
    /// refused it (not a system call per refused flow).
    retry_grow: u32,
    fill: Fill,
    /// Tests: act as if the kernel refused every new array.
    #[cfg(test)]
    refuse_memory: bool,
}

impl<V: Zeroable> Table<V> {
    pub fn new(fill: Fill) -> Table<V> {
        Table {
            array: Array::empty(),
            len: 0,
            seeds: Seeds::random(),
            old: None,
            retry_grow: 0,
            fill,
            #[cfg(test)]
            refuse_memory: false,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `keys` keys fit in the array as full as the table may be.
    #[inline]
    fn fits(&self, keys: usize) -> bool {
        match self.fill {
            Fill::Half => keys * 2 <= self.array.len(),
            Fill::Quarter => keys * 4 <= self.array.len(),
        }
    }

    /// Slots, free or not, of both arrays while growing (sweeps walk them
    /// by index: the new array's first, then the old one's).
    pub fn slots(&self) -> usize {
        self.array.len() + self.old.as_ref().map_or(0, |o| o.array.len())
    }

    /// Whether keys are still moving to a grown array.
    #[cfg(test)]
    pub fn growing(&self) -> bool {
        self.old.is_some()
    }

    /// The key and value in slot `i`, if it holds one.
    #[inline]
    pub fn at(&self, i: usize) -> Option<&Slot<V>> {
        let s = match i.checked_sub(self.array.len()) {
            None => self.array.slots.get(i),
            Some(j) => self.old.as_ref()?.array.slots.get(j),
        };
        s.filter(|s| !s.is_free())
    }

    /// The value in slot `i` (one [`Table::find`] or [`Table::insert`]
    /// returned, with nothing inserted since).
    #[inline]
    pub fn value_mut(&mut self, i: usize) -> &mut V {
        match (i.checked_sub(self.array.len()), self.old.as_mut()) {
            (Some(j), Some(o)) => &mut o.array.slots[j].value,
            _ => &mut self.array.slots[i].value,
        }
    }

    /// The old array and a key's home there, if a key hashed to `h` would
    /// still be in it (not moved yet).
    #[inline]
    fn old_home(&self, h: usize) -> Option<(&Array<V>, usize)> {
        let o = self.old.as_ref()?;
        let home = o.array.home(h);
        o.holds(home).then_some((&o.array, home))
    }

    /// The slot holding `k`.
    #[inline]
    pub fn find(&self, k: &Words) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let h = self.seeds.hash(k) as usize;
        if let Some((old, home)) = self.old_home(h) {
            if let Some(i) = old.probe(home, k) {
                return Some(self.array.len() + i);
            }
        }
        self.array.probe(self.array.home(h), k)
    }

    /// Starts loading the home line of `k` into the cache, so that a lookup
    /// of `k` a little later finds it there instead of waiting for memory.
    /// Only a hint: nothing changes.
    #[inline]
    pub fn prefetch(&self, k: &Words) {
        if self.len == 0 {
            return;
        }
        let h = self.seeds.hash(k) as usize;
        match self.old_home(h) {
            Some((old, home)) => old.prefetch(home),
            None => self.array.prefetch(self.array.home(h)),
        }
    }

    /// Puts `k` in (replacing its value if present); returns its slot, or
    /// `None` when the table is full because the kernel refused the memory
    /// to grow it.
    pub fn insert(&mut self, k: Words, value: V) -> Option<usize> {
        debug_assert!(k[1] != 0, "a key's second word is never zero");
        self.migrate(MIGRATE_STEP);
        // Never fuller than its `Fill` (else no room for a new key): the
        // moves of a grow are paced for that.
        let room = self.fits(self.len + 1) || self.grow();
        let h = self.seeds.hash(&k) as usize;
        if let Some((old, home)) = self.old_home(h) {
            if let Some(i) = old.probe(home, &k) {
                *self.value_mut(self.array.len() + i) = value;
                return Some(self.array.len() + i);
            }
        }
        let home = self.array.home(h);
        if let Some(i) = self.array.probe(home, &k) {
            self.array.slots[i].value = value;
            return Some(i);
        }
        if !room {
            return None;
        }
        let i = self.array.place(home, Slot { key: k, value });
        self.len += 1;
        Some(i)
    }

    /// Empties slot `i`, moving later keys of its probe run back (see
    /// [`Array::remove_shifting`]). A walk by index that looks at slot `i`
    /// again after a removal misses no key of that array.
    pub fn remove_at(&mut self, i: usize) -> Option<Slot<V>> {
        let removed = match (i.checked_sub(self.array.len()), self.old.as_mut()) {
            // The old array's split stays at a free slot: a removal shifts
            // keys back within their run, never past a free slot.
            (Some(j), Some(o)) => o.array.remove_shifting(&self.seeds, j),
            (Some(_), None) => None,
            (None, _) => self.array.remove_shifting(&self.seeds, i),
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
            array, seeds, old, ..
        } = self;
        let Some(o) = old else {
            return;
        };
        let n = o.array.len();
        let mut walked = 0;
        while o.done < n {
            let i = (o.start + o.done) & o.array.mask;
            let s = o.array.slots[i];
            if s.is_free() {
                // Stop only between runs.
                if walked >= budget {
                    return;
                }
            } else {
                o.array.slots[i].key = [0, 0];
                array.place(array.home(seeds.hash(&s.key) as usize), s);
            }
            o.done += 1;
            walked += 1;
        }
        *old = None;
    }

    /// Gets an array twice the size (or the first one) and starts moving
    /// the keys to it; false if the kernel has no memory for it (then the
    /// table stays as it is, as full as it may be, and new keys are
    /// refused; it asks again after [`RETRY_GROW`] more). A table still
    /// moving keys finishes first (it never does in practice: see
    /// [`MIGRATE_STEP`]).
    fn grow(&mut self) -> bool {
        if self.retry_grow > 0 {
            self.retry_grow -= 1;
            return false;
        }
        self.migrate(usize::MAX);
        let n = (self.array.len() * 2).max(MIN_SLOTS);
        #[cfg(test)]
        let new = Array::zeroed(n).filter(|_| !self.refuse_memory);
        #[cfg(not(test))]
        let new = Array::zeroed(n);
        let Some(new) = new else {
            self.retry_grow = RETRY_GROW;
            tracing::warn!(
                slots = n,
                flows = self.len,
                "no memory to grow a connection table: new flows are refused until there is"
            );
            return false;
        };
        let old = std::mem::replace(&mut self.array, new);
        if self.len == 0 {
            return true;
        }
        // At most half full: there is a free slot to start from.
        let start = old.slots.iter().position(Slot::is_free).unwrap_or(0);
        self.old = Some(Old {
            array: old,
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
