//! Later fragments that come before their first (see [`super`]): a few
//! are kept a moment, in buffers allocated once, and sent the first's way
//! when it comes.
//!
//! Which to keep when every buffer is taken: the one that waited longest
//! gives way. Fragments a path reorders follow their first within
//! microseconds, so a flood of fragments whose first never comes (from one
//! container, or from anywhere through the host) shortens everyone's wait
//! but cannot shut the others out.

use super::{apply, Id, Way};
use crate::pipeline::{Input, Packet, Verdict, HEADROOM};
use std::time::{Duration, Instant};

/// Later fragments kept while they wait for their first.
pub const PARK_SLOTS: usize = 16;
/// How long a later fragment waits for its first.
pub const PARK_LIFETIME: Duration = Duration::from_millis(200);
/// The longest fragment kept (as read, headers and all); longer ones are
/// judged on their own only. An underlay of 9000-byte jumbo frames would
/// send longer ones; 1500-byte MTUs give at most ~1550.
const PARK_LEN: usize = 2048;

/// A later fragment kept until its first comes.
struct Parked {
    /// Whose fragment this is (`None`: the slot is free).
    id: Option<Id>,
    until: Instant,
    /// Set once its first came: where it goes now (its headers are made).
    released: Option<Verdict>,
    /// What it became on its own, if it went anywhere.
    went: Option<Way>,
    /// The frame at `start..end`, with [`HEADROOM`] in front for headers.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

pub(super) struct Early {
    slots: Box<[Parked]>,
    /// Slots taken (waiting or released): a first fragment looks no
    /// further when none are.
    taken: usize,
    /// Some slot is released (checked once per batch).
    any_released: bool,
}

impl Default for Early {
    fn default() -> Self {
        Early {
            slots: (0..PARK_SLOTS)
                .map(|_| Parked {
                    id: None,
                    until: Instant::now(),
                    released: None,
                    went: None,
                    buf: vec![0; HEADROOM + PARK_LEN].into_boxed_slice(),
                    start: 0,
                    end: 0,
                })
                .collect(),
            taken: 0,
            any_released: false,
        }
    }
}

impl Early {
    fn free(&mut self, i: usize) {
        let p = &mut self.slots[i];
        p.released = None;
        if p.id.take().is_some() {
            self.taken -= 1;
        }
    }

    /// Keeps a copy of the later fragment `id` in `pkt` (as read, before
    /// anything is made of it): the slot it is in, or `None` when it is
    /// too long or every slot holds a fragment released and not yet sent.
    pub fn park(&mut self, id: Id, pkt: &Packet<'_>, now: Instant) -> Option<usize> {
        let frame = pkt.bytes();
        if frame.len() > PARK_LEN {
            return None;
        }
        let i = match self.slots.iter().position(|p| p.id.is_none()) {
            Some(i) => {
                self.taken += 1;
                i
            }
            None => {
                self.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.released.is_none())
                    .min_by_key(|(_, p)| p.until)?
                    .0
            }
        };
        let p = &mut self.slots[i];
        p.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        (p.id, p.until, p.released, p.went) = (Some(id), now + PARK_LIFETIME, None, None);
        (p.start, p.end) = (HEADROOM, HEADROOM + frame.len());
        Some(i)
    }

    /// Notes what the fragment kept in slot `i` became on its own: if its
    /// first becomes the same, it went right and is not sent again.
    pub fn went(&mut self, i: usize, way: Option<Way>) {
        if let Some(p) = self.slots.get_mut(i) {
            p.went = way;
        }
    }

    /// The first fragment of `id` became `way`: the later fragments of `id`
    /// that wait are made the same, to be sent after it. Returns how many.
    pub fn release(&mut self, id: &Id, way: Way, now: Instant) -> usize {
        if self.taken == 0 {
            return 0;
        }
        let mut n = 0;
        for i in 0..self.slots.len() {
            let p = &mut self.slots[i];
            if p.id != Some(*id) || p.released.is_some() {
                continue;
            }
            // Too late, or it went on its own the way its first went.
            if now >= p.until || p.went == Some(way) {
                self.free(i);
                continue;
            }
            let mut pkt = Packet::new(&mut p.buf, p.start, p.end - p.start);
            match apply(way, *id, &mut pkt) {
                Ok(v) => {
                    (p.start, p.end, p.released) = (pkt.start, pkt.end, Some(v));
                    n += 1;
                }
                Err(_) => self.free(i),
            }
        }
        self.any_released |= n > 0;
        n
    }

    #[inline]
    pub fn has_released(&self) -> bool {
        self.any_released
    }

    /// Hands each released fragment to `send` (where it goes, its bytes),
    /// then frees its slot.
    pub fn released(&mut self, mut send: impl FnMut(Verdict, &[u8])) {
        if !std::mem::take(&mut self.any_released) {
            return;
        }
        for i in 0..self.slots.len() {
            let p = &self.slots[i];
            if let Some(v) = p.released {
                send(v, &p.buf[p.start..p.end]);
                self.free(i);
            }
        }
    }

    /// Forgets the fragments port `port` sent that wait. (Released ones
    /// are sent at the end of the batch that released them, before the
    /// dataplane takes a command such as a port's removal.)
    pub fn forget_port(&mut self, port: crate::tables::PortId) {
        for i in 0..self.slots.len() {
            if self.slots[i]
                .id
                .is_some_and(|id| id.input == Input::Tap(port))
            {
                self.free(i);
            }
        }
    }
}
