//! Connection tracking for VIP and ingress traffic: one entry per flow, made
//! at its first packet, remembering which task the scheduler chose, so every
//! later packet (and every reply) of the flow is translated the same way.
//!
//! The table is the dataplane thread's own (no lock), an open-addressing
//! array of 32-byte slots ([`table`]): a hit reads one cache line, keys are
//! found by a hash keyed with secret random words per table (a sender
//! cannot compute which ports collide), and a reply finds its flow through a
//! second index of the same kind (reply tuple -> VIP and port). It is
//! bounded: when full, new flows are refused and counted while existing ones
//! go on. It grows by doubling, a handful of times in its life, moving its
//! keys to the new array a few at a time (so growing never stalls the
//! dataplane), and never shrinks.
//!
//! TCP entries follow the flags (SYN, established, FIN, RST) with timeouts per
//! state. An idle established connection is kept for a long time by default
//! (a day; Swarm's IPVS drops it after 900 s without a word); a packet of a
//! flow whose entry is gone is answered with a RST by the caller, so the peer
//! learns at once instead of hanging. Expired entries are swept a slice at a
//! time ([`Conntrack::expire`]), so a big table never stalls the dataplane.

mod expiry;
mod slots;
mod table;

use crate::wire::l4::tcp_flags::{ACK, FIN, RST, SYN};
use expiry::Pass;
use slots::Zeroable;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use table::{Fill, Table, Words};

/// A flow as the client sent it: protocol, client, VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub protocol: u8,
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub vip: Ipv4Addr,
    pub port: u16,
}

/// A reply as the task sends it: protocol, task, client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyKey {
    pub protocol: u8,
    pub backend: Ipv4Addr,
    pub port: u16,
    pub client: Ipv4Addr,
    pub client_port: u16,
}

/// Set in every key's second word, so that zero marks a free slot.
const USED: u64 = 1 << 63;

/// Packs a tuple into table words (every field, so equal words are equal tuples).
#[inline]
fn words(protocol: u8, a: Ipv4Addr, a_port: u16, b: Ipv4Addr, b_port: u16) -> Words {
    [
        u64::from(u32::from(a)) << 32 | u64::from(u32::from(b)),
        USED | u64::from(protocol) << 32 | u64::from(a_port) << 16 | u64::from(b_port),
    ]
}

/// The protocol in a key's words.
#[inline]
fn protocol_of(w: &Words) -> u8 {
    (w[1] >> 32) as u8
}

impl Key {
    #[inline]
    fn words(&self) -> Words {
        words(
            self.protocol,
            self.client,
            self.client_port,
            self.vip,
            self.port,
        )
    }

    fn from_words(w: &Words) -> Key {
        Key {
            protocol: protocol_of(w),
            client: Ipv4Addr::from((w[0] >> 32) as u32),
            client_port: (w[1] >> 16) as u16,
            vip: Ipv4Addr::from(w[0] as u32),
            port: w[1] as u16,
        }
    }
}

impl ReplyKey {
    #[inline]
    fn words(&self) -> Words {
        words(
            self.protocol,
            self.backend,
            self.port,
            self.client,
            self.client_port,
        )
    }
}

/// Where a TCP connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum TcpState {
    #[default]
    SynSent,
    Established,
    /// One side sent FIN.
    Closing,
    /// Both sides sent FIN, or a RST went by: gone soon.
    Closed,
}

/// One tracked flow, as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub backend: Ipv4Addr,
    /// The task's port: the flow's own for a VIP, the target for a published port.
    pub backend_port: u16,
    pub state: TcpState,
}

const FIN_FROM_CLIENT: u8 = 1;
const FIN_FROM_BACKEND: u8 = 2;

/// A flow's slot value: 16 bytes beside its 16-byte key.
#[derive(Debug, Clone, Copy, Default)]
struct Tracked {
    /// Milliseconds since the table's epoch.
    last_seen: u64,
    backend: u32,
    backend_port: u16,
    state: TcpState,
    fins: u8,
}

// SAFETY: integers, and a fieldless `repr(u8)` enum whose 0 is `SynSent`.
unsafe impl Zeroable for Tracked {}

impl Tracked {
    fn entry(&self) -> Entry {
        Entry {
            backend: Ipv4Addr::from(self.backend),
            backend_port: self.backend_port,
            state: self.state,
        }
    }

    fn reply_words(&self, k: &Key) -> Words {
        words(
            k.protocol,
            Ipv4Addr::from(self.backend),
            self.backend_port,
            k.client,
            k.client_port,
        )
    }
}

/// Timeouts per state; configurable on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_closed: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_closing: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(300),
        }
    }
}

/// Timeouts in milliseconds, by `TcpState as usize`, then UDP (and others).
type TimeoutsMs = [u64; 5];

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Timeouts {
    fn millis(&self) -> TimeoutsMs {
        [
            millis(self.tcp_syn),
            millis(self.tcp_established),
            millis(self.tcp_closing),
            millis(self.tcp_closed),
            millis(self.udp),
        ]
    }
}

#[inline]
fn expired(t: &TimeoutsMs, protocol: u8, v: &Tracked, now: u64) -> bool {
    let i = if protocol == crate::wire::ipv4::protocol::TCP {
        v.state as usize
    } else {
        4
    };
    now.saturating_sub(v.last_seen) > t[i]
}

/// Why a new flow was not tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Full,
}

/// The table.
pub struct Conntrack {
    flows: Table<Tracked>,
    /// Reply tuple -> the client flow's VIP and port (`vip << 16 | port`);
    /// `None` for a table whose replies are never looked up.
    replies: Option<Table<u64>>,
    /// Open (not Closed) flows per task, kept as entries change, so that
    /// least-connections reads a count instead of scanning the table. A task
    /// belongs to one service, so per task is per VIP and task.
    open: HashMap<Ipv4Addr, u32>,
    max: usize,
    timeouts: TimeoutsMs,
    /// Time zero of the entries' `last_seen`.
    epoch: Instant,
    /// The last instant converted, and its milliseconds.
    last_now: Instant,
    last_ms: u64,
    /// The sweep in progress, if one is.
    pass: Option<Pass>,
    last_pass: Instant,
}

impl Conntrack {
    pub fn new(max: usize, timeouts: Timeouts) -> Conntrack {
        Self::make(max, timeouts, true)
    }

    /// A table whose flows are only ever looked up by their key (no reply
    /// index: half the memory). [`Conntrack::reply`] and
    /// [`Conntrack::touch_reply`] find nothing in it.
    pub fn keyed_only(max: usize, timeouts: Timeouts) -> Conntrack {
        Self::make(max, timeouts, false)
    }

    fn make(max: usize, timeouts: Timeouts, replies: bool) -> Conntrack {
        let now = Instant::now();
        // Callers may pass instants taken a moment before the table was made.
        let epoch = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        Conntrack {
            flows: Table::new(Fill::Quarter),
            replies: replies.then(|| Table::new(Fill::Half)),
            // Room for this many tasks from the start: a flow to a task
            // seen for the first time does not allocate on the packet path.
            open: HashMap::with_capacity(1024),
            max,
            timeouts: timeouts.millis(),
            epoch,
            last_now: epoch,
            last_ms: 0,
            pass: None,
            last_pass: now,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.len() == 0
    }

    /// `now` in milliseconds since the epoch. The dataplane passes one
    /// `now` for a whole batch, so the last conversion is kept.
    #[inline]
    fn ms(&mut self, now: Instant) -> u64 {
        if now != self.last_now {
            let d = now.saturating_duration_since(self.epoch);
            self.last_now = now;
            self.last_ms = d
                .as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(d.subsec_millis()));
        }
        self.last_ms
    }

    /// Starts loading the slot of flow `k` into the cache. The dataplane
    /// calls it for every frame of a batch before it looks any of them up,
    /// so the memory waits of a big table overlap instead of adding up.
    #[inline]
    pub fn prefetch(&self, k: &Key) {
        self.flows.prefetch(&k.words());
    }

    /// Starts loading the index slot of reply `r` (see [`Conntrack::prefetch`]).
    #[inline]
    pub fn prefetch_reply(&self, r: &ReplyKey) {
        if let Some(replies) = &self.replies {
            replies.prefetch(&r.words());
        }
    }

    /// The live entry of a flow, if any (an expired one is removed).
    pub fn get(&mut self, k: &Key, now: Instant) -> Option<Entry> {
        let i = self.flows.find(&k.words())?;
        let v = self.flows.at(i)?.value;
        let now = self.ms(now);
        if expired(&self.timeouts, k.protocol, &v, now) {
            self.remove_slot(i);
            return None;
        }
        Some(v.entry())
    }

    /// The client flow of a reply tuple.
    fn client_key(&self, r: &ReplyKey) -> Option<Key> {
        let replies = self.replies.as_ref()?;
        let vip_port = replies.at(replies.find(&r.words())?)?.value;
        Some(Key {
            protocol: r.protocol,
            client: r.client,
            client_port: r.client_port,
            vip: Ipv4Addr::from((vip_port >> 16) as u32),
            port: vip_port as u16,
        })
    }

    /// The client flow a reply belongs to.
    pub fn reply(&mut self, r: &ReplyKey, now: Instant) -> Option<(Key, Entry)> {
        let k = self.client_key(r)?;
        self.get(&k, now).map(|e| (k, e))
    }

    /// Tracks a new flow to `backend` on the flow's own port (no packet
    /// of it noted yet).
    pub fn insert(&mut self, k: Key, backend: Ipv4Addr, now: Instant) -> Result<Entry, Refusal> {
        let now = self.ms(now);
        let i = self.insert_slot(k, backend, k.port, now)?;
        Ok(self.flows.value_mut(i).entry())
    }

    /// Tracks a new flow to `backend`:`backend_port` from its first packet
    /// (TCP `flags`, from the client), in one lookup; a flow that had an
    /// entry gets a new one.
    pub fn track(
        &mut self,
        k: Key,
        backend: Ipv4Addr,
        backend_port: u16,
        flags: u8,
        now: Instant,
    ) -> Result<Entry, Refusal> {
        let now = self.ms(now);
        let i = self.insert_slot(k, backend, backend_port, now)?;
        // A TCP flow first seen in the middle (a return path learned again
        // after its entry expired) is an open connection already.
        if k.protocol == crate::wire::ipv4::protocol::TCP && flags & (SYN | FIN | RST) == 0 {
            let v = self.flows.value_mut(i);
            let was = *v;
            v.state = TcpState::Established;
            let now_v = *v;
            recount(&mut self.open, &was, &now_v);
            return Ok(now_v.entry());
        }
        Ok(self.note(i, k.protocol, flags, true, now).entry())
    }

    /// Puts a fresh entry for `k` in the flow table and the reply index;
    /// returns its slot.
    fn insert_slot(
        &mut self,
        k: Key,
        backend: Ipv4Addr,
        backend_port: u16,
        now: u64,
    ) -> Result<usize, Refusal> {
        let w = k.words();
        if let Some(i) = self.flows.find(&w) {
            self.remove_slot(i);
        } else if self.flows.len() >= self.max {
            return Err(Refusal::Full);
        }
        let v = Tracked {
            last_seen: now,
            backend: u32::from(backend),
            backend_port,
            state: TcpState::SynSent,
            fins: 0,
        };
        // None: the kernel refused the memory to grow the table (logged).
        let i = self.flows.insert(w, v).ok_or(Refusal::Full)?;
        if let Some(replies) = &mut self.replies {
            if replies.insert(v.reply_words(&k), vip_port(&k)).is_none() {
                self.flows.remove_at(i);
                return Err(Refusal::Full);
            }
        }
        count(&mut self.open, &v, true);
        Ok(i)
    }

    pub fn remove(&mut self, k: &Key) {
        if let Some(i) = self.flows.find(&k.words()) {
            self.remove_slot(i);
        }
    }

    /// Removes the flow in slot `i` of the flow table, its reply index and
    /// its open count.
    fn remove_slot(&mut self, i: usize) {
        let Some(s) = self.flows.remove_at(i) else {
            return;
        };
        let k = Key::from_words(&s.key);
        if let Some(replies) = &mut self.replies {
            // Two flows may share a reply tuple (one client port to two
            // VIPs that picked the same task); the index names the later
            // one, and stays while that one lives.
            if let Some(r) = replies.find(&s.value.reply_words(&k)) {
                if replies.at(r).is_some_and(|e| e.value == vip_port(&k)) {
                    replies.remove_at(r);
                }
            }
        }
        count(&mut self.open, &s.value, false);
    }

    /// Notes a packet of the flow (TCP `flags`, from the client or the task).
    pub fn update(&mut self, k: &Key, flags: u8, from_client: bool, now: Instant) {
        if let Some(i) = self.flows.find(&k.words()) {
            let now = self.ms(now);
            self.note(i, k.protocol, flags, from_client, now);
        }
    }

    /// The live entry of a flow, noting this packet of it, in one lookup
    /// (the per-packet path); an expired entry is removed and `None` returned.
    #[inline]
    pub fn touch(&mut self, k: &Key, flags: u8, from_client: bool, now: Instant) -> Option<Entry> {
        let i = self.flows.find(&k.words())?;
        let now = self.ms(now);
        let timeouts = &self.timeouts;
        let v = self.flows.value_mut(i);
        if expired(timeouts, k.protocol, v, now) {
            self.remove_slot(i);
            return None;
        }
        // Most packets: an established flow's, with no flag that moves its
        // state (or any packet of an established UDP flow). Only the time
        // changes.
        if v.state == TcpState::Established
            && (k.protocol != crate::wire::ipv4::protocol::TCP || flags & (SYN | FIN | RST) == 0)
        {
            v.last_seen = now;
            return Some(v.entry());
        }
        Some(self.note(i, k.protocol, flags, from_client, now).entry())
    }

    /// Notes a packet in the entry in slot `i` and moves the open count if
    /// it crossed Closed; returns the entry as it is now.
    #[inline]
    fn note(&mut self, i: usize, protocol: u8, flags: u8, from_client: bool, now: u64) -> Tracked {
        let slot = self.flows.value_mut(i);
        let was = *slot;
        // Worked on in registers and only the fields a packet changes
        // stored (a whole-slot store of a value assembled on the stack
        // stalls on reading back its just-written bytes).
        let mut v = was;
        advance(&mut v, protocol, flags, from_client, now);
        slot.last_seen = v.last_seen;
        slot.state = v.state;
        slot.fins = v.fins;
        recount(&mut self.open, &was, &v);
        v
    }

    /// The client flow a reply belongs to, noting the reply (see [`Conntrack::touch`]).
    #[inline]
    pub fn touch_reply(&mut self, r: &ReplyKey, flags: u8, now: Instant) -> Option<(Key, Entry)> {
        let k = self.client_key(r)?;
        self.touch(&k, flags, false, now).map(|e| (k, e))
    }

    /// Open flows to `backend`, for least-connections (one lookup).
    pub fn active_to(&self, backend: Ipv4Addr) -> u32 {
        self.open.get(&backend).copied().unwrap_or(0)
    }

    /// Every entry, for tests that compare the table with a model.
    #[cfg(test)]
    fn entries(&self) -> Vec<(Key, Entry)> {
        (0..self.flows.slots())
            .filter_map(|i| self.flows.at(i))
            .map(|s| (Key::from_words(&s.key), s.value.entry()))
            .collect()
    }
}

/// A flow's VIP and port as the reply index holds them.
fn vip_port(k: &Key) -> u64 {
    u64::from(u32::from(k.vip)) << 16 | u64::from(k.port)
}

/// Moves an entry's state on for a packet with TCP `flags`.
#[inline]
fn advance(e: &mut Tracked, protocol: u8, flags: u8, from_client: bool, now: u64) {
    e.last_seen = now;
    if protocol != crate::wire::ipv4::protocol::TCP {
        e.state = TcpState::Established;
        return;
    }
    if flags & RST != 0 {
        e.state = TcpState::Closed;
        return;
    }
    // A client reusing its port after a close opens a new connection: it
    // starts over (else it would stay Closed and expire in seconds). So
    // after a half close (one FIN seen: a client that vanished, or a FIN
    // that went another way), or the new connection would stay Closing.
    if from_client
        && flags & (SYN | ACK) == SYN
        && matches!(e.state, TcpState::Closed | TcpState::Closing)
    {
        e.fins = 0;
        e.state = TcpState::SynSent;
        return;
    }
    if flags & FIN != 0 {
        e.fins |= if from_client {
            FIN_FROM_CLIENT
        } else {
            FIN_FROM_BACKEND
        };
    }
    e.state = match (e.state, e.fins) {
        (_, 3) => TcpState::Closed,
        (TcpState::Closed, _) => TcpState::Closed,
        (_, 1 | 2) => TcpState::Closing,
        // Only the task's SYN-ACK opens the connection: a client's bare ACK
        // after its SYN (which any host can send, from as many ports as it
        // likes) would otherwise hold the entry for the established
        // timeout, a day, and fill the table.
        (TcpState::SynSent, _) if !from_client && flags & (SYN | ACK) == SYN | ACK => {
            TcpState::Established
        }
        (s, _) => s,
    };
}

/// Adds (or takes away) `e` to its task's open count, if it is open.
fn count(open: &mut HashMap<Ipv4Addr, u32>, e: &Tracked, add: bool) {
    if e.state == TcpState::Closed {
        return;
    }
    let backend = Ipv4Addr::from(e.backend);
    if add {
        *open.entry(backend).or_insert(0) += 1;
    } else if let Some(n) = open.get_mut(&backend) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            open.remove(&backend);
        }
    }
}

/// Moves the open count when an entry's state crosses Closed.
#[inline]
fn recount(open: &mut HashMap<Ipv4Addr, u32>, was: &Tracked, now: &Tracked) {
    match (was.state == TcpState::Closed, now.state == TcpState::Closed) {
        (false, true) => count(open, was, false),
        (true, false) => count(open, now, true),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
