//! Expiry: idle flows leave the table a slice at a time, so that a big
//! table never stalls the dataplane (a whole pass over a million flows
//! takes ~11 ms).

use super::{expired, protocol_of, Conntrack};
use std::time::{Duration, Instant};

/// Slots a sweep step looks at (8k slots: 256 KB of the table, tens of
/// microseconds).
pub(super) const SWEEP_STEP: usize = 8192;

/// Slots a sweep step looks at while the table is full (refusing new
/// flows): eight steps, a few hundred microseconds.
pub(super) const FULL_STEP: usize = 8 * SWEEP_STEP;

/// Old slots a growing table moves to its new array per turn (random
/// writes, so fewer than a sweep step looks at: tens of microseconds).
const MIGRATE_PER_TURN: usize = 1024;

/// Where a sweep of the table stands.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pass {
    /// The next slot to look at.
    next: usize,
    /// The table's slots when the pass began: if it grew since, its layout
    /// changed and the pass starts over.
    slots: usize,
    started: Instant,
}

impl Pass {
    fn start(slots: usize, now: Instant) -> Pass {
        Pass {
            next: 0,
            slots,
            started: now,
        }
    }
}

impl Conntrack {
    /// Expires idle flows, a slice at a time: called on every turn of the
    /// dataplane, it starts a pass over the table at most once a second and
    /// moves it on by [`SWEEP_STEP`] slots per call, or further if the pass
    /// has fallen behind one table a second (an idle dataplane turns once a
    /// second: then the rest of the pass goes at once, nothing waits on
    /// it). So a busy dataplane pays tens of microseconds per turn whatever
    /// the table's size (a whole pass over a million flows at once stalled
    /// it ~30 ms). Meanwhile lookups drop the expired entries they meet. A
    /// full table is swept eight times as fast ([`FULL_STEP`] slots a
    /// turn), so that expired flows do not keep new ones out for long,
    /// while no turn stalls (a full table swept whole at once held the
    /// dataplane ~11 ms at a million flows).
    pub fn expire(&mut self, now: Instant) {
        // A growing table moves some keys on every turn too, so that the
        // old array goes even when few new flows come.
        self.flows.migrate(MIGRATE_PER_TURN);
        if let Some(replies) = &mut self.replies {
            replies.migrate(MIGRATE_PER_TURN);
        }
        let slots = self.flows.slots();
        let due = now.saturating_duration_since(self.last_pass) >= Duration::from_secs(1);
        let pass = match self.pass {
            Some(p) if p.slots == slots => p,
            // The table grew: keys moved, start over.
            Some(_) => Pass::start(slots, now),
            None if self.flows.len() > 0 && due => {
                self.last_pass = now;
                Pass::start(slots, now)
            }
            None => return,
        };
        let elapsed = now.saturating_duration_since(pass.started).as_secs_f64();
        let behind = ((slots as f64 * elapsed) as usize).saturating_sub(pass.next);
        let step = if self.flows.len() >= self.max {
            FULL_STEP
        } else {
            SWEEP_STEP
        };
        let next = self.sweep_from(pass.next, step.max(behind), now);
        self.pass = (next < slots).then_some(Pass { next, ..pass });
    }

    /// Removes every expired entry at once (a whole pass).
    pub fn sweep(&mut self, now: Instant) {
        self.sweep_from(0, usize::MAX, now);
        self.pass = None;
    }

    /// One step of a pass as [`Conntrack::expire`] takes it ([`SWEEP_STEP`]
    /// slots from `at`); returns where the next starts (0 after the end).
    /// For the benchmark of what a dataplane turn pays during a pass.
    #[doc(hidden)]
    pub fn sweep_step(&mut self, at: usize, now: Instant) -> usize {
        let next = self.sweep_from(at, SWEEP_STEP, now);
        if next < self.flows.slots() {
            next
        } else {
            0
        }
    }

    /// Looks at up to `step` slots from `at`, removing expired entries;
    /// returns the next slot to look at. Removal moves later entries back
    /// into the slot just emptied, so it is looked at again.
    fn sweep_from(&mut self, mut at: usize, step: usize, now: Instant) -> usize {
        let now = self.ms(now);
        let end = self.flows.slots().min(at.saturating_add(step));
        while at < end {
            match self.flows.at(at) {
                Some(s) if expired(&self.timeouts, protocol_of(&s.key), &s.value, now) => {
                    self.remove_slot(at);
                }
                _ => at += 1,
            }
        }
        at
    }
}
