//! Connection tracking for VIP traffic: one entry per flow, made at its first
//! packet on the client's host, remembering which task the scheduler chose,
//! so every later packet (and every reply) of the flow is translated the same
//! way.
//!
//! The table is the dataplane thread's own (no lock). It is keyed by 5-tuples
//! that come from the wire, so its hash is keyed with two secret random words
//! per table ([`FlowHash`]): a sender cannot compute which ports collide. It
//! is bounded: when full, new flows are refused and counted while existing
//! ones go on.
//!
//! TCP entries follow the flags (SYN, established, FIN, RST) with timeouts per
//! state. An idle established connection is kept for a long time by default
//! (a day; Swarm's IPVS drops it after 900 s without a word); a packet of a
//! flow whose entry is gone is answered with a RST by the caller, so the peer
//! learns at once instead of hanging.

use crate::wire::l4::tcp_flags::{ACK, FIN, RST, SYN};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The hash of the conntrack tables: a folded 64x64->128 multiply keyed
/// with two random words drawn per table (the construction of foldhash and
/// of aHash's portable path). A 5-tuple is hashed as two words, so a lookup
/// costs two multiplies instead of SipHash's rounds over 13 bytes. The keys
/// never leave the process, so a sender who picks addresses and ports from
/// the wire cannot compute collisions offline. This is weaker than SipHash's
/// guarantee (foldhash claims only minimal flooding resistance); what bounds
/// the damage of a flood is the table's size limit.
#[derive(Debug, Clone, Copy)]
pub struct FlowHash {
    k0: u64,
    k1: u64,
}

impl FlowHash {
    /// Fresh secret keys.
    pub fn random() -> FlowHash {
        FlowHash {
            k0: rand::random(),
            k1: rand::random::<u64>() | 1,
        }
    }
}

impl BuildHasher for FlowHash {
    type Hasher = FlowHasher;
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher {
            h: self.k0,
            k: self.k1,
        }
    }
}

/// See [`FlowHash`].
pub struct FlowHasher {
    h: u64,
    k: u64,
}

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

impl Hasher for FlowHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.h = folded_multiply(self.h ^ v, self.k);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
}

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

/// Two words for the hash: every field, packed (consistent with `Eq`).
fn words(protocol: u8, a: Ipv4Addr, a_port: u16, b: Ipv4Addr, b_port: u16) -> (u64, u64) {
    (
        u64::from(u32::from(a)) << 32 | u64::from(u32::from(b)),
        u64::from(protocol) << 32 | u64::from(a_port) << 16 | u64::from(b_port),
    )
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (x, y) = words(
            self.protocol,
            self.client,
            self.client_port,
            self.vip,
            self.port,
        );
        state.write_u64(x);
        state.write_u64(y);
    }
}

impl Hash for ReplyKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (x, y) = words(
            self.protocol,
            self.backend,
            self.port,
            self.client,
            self.client_port,
        );
        state.write_u64(x);
        state.write_u64(y);
    }
}

/// Where a TCP connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    SynSent,
    Established,
    /// One side sent FIN.
    Closing,
    /// Both sides sent FIN, or a RST went by: gone soon.
    Closed,
}

/// One tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub backend: Ipv4Addr,
    /// The task's port: the flow's own for a VIP, the target for a published port.
    pub backend_port: u16,
    pub state: TcpState,
    pub last_seen: Instant,
    fin_from_client: bool,
    fin_from_backend: bool,
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

/// Why a new flow was not tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Full,
}

/// The table.
pub struct Conntrack {
    flows: HashMap<Key, Entry, FlowHash>,
    replies: HashMap<ReplyKey, Key, FlowHash>,
    /// Open (not Closed) flows per task, kept as entries change, so that
    /// least-connections reads a count instead of scanning the table. A task
    /// belongs to one service, so per task is per VIP and task.
    open: HashMap<Ipv4Addr, u32, FlowHash>,
    max: usize,
    pub timeouts: Timeouts,
}

impl Conntrack {
    pub fn new(max: usize, timeouts: Timeouts) -> Conntrack {
        Conntrack {
            flows: HashMap::with_hasher(FlowHash::random()),
            replies: HashMap::with_hasher(FlowHash::random()),
            open: HashMap::with_hasher(FlowHash::random()),
            max,
            timeouts,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn timeout(&self, e: &Entry, protocol: u8) -> Duration {
        Self::timeout_of(&self.timeouts, e, protocol)
    }

    fn timeout_of(t: &Timeouts, e: &Entry, protocol: u8) -> Duration {
        if protocol != crate::wire::ipv4::protocol::TCP {
            return t.udp;
        }
        match e.state {
            TcpState::SynSent => t.tcp_syn,
            TcpState::Established => t.tcp_established,
            TcpState::Closing => t.tcp_closing,
            TcpState::Closed => t.tcp_closed,
        }
    }

    fn reply_key(k: &Key, e: &Entry) -> ReplyKey {
        ReplyKey {
            protocol: k.protocol,
            backend: e.backend,
            port: e.backend_port,
            client: k.client,
            client_port: k.client_port,
        }
    }

    /// The live entry of a flow, if any (an expired one is removed).
    pub fn get(&mut self, k: &Key, now: Instant) -> Option<Entry> {
        let e = *self.flows.get(k)?;
        if now.saturating_duration_since(e.last_seen) > self.timeout(&e, k.protocol) {
            self.remove(k);
            return None;
        }
        Some(e)
    }

    /// The client flow a reply belongs to.
    pub fn reply(&mut self, r: &ReplyKey, now: Instant) -> Option<(Key, Entry)> {
        let k = *self.replies.get(r)?;
        self.get(&k, now).map(|e| (k, e))
    }

    /// Tracks a new flow to `backend` on the flow's own port.
    pub fn insert(&mut self, k: Key, backend: Ipv4Addr, now: Instant) -> Result<Entry, Refusal> {
        self.insert_to(k, backend, k.port, now)
    }

    /// Tracks a new flow to `backend`:`backend_port`.
    pub fn insert_to(
        &mut self,
        k: Key,
        backend: Ipv4Addr,
        backend_port: u16,
        now: Instant,
    ) -> Result<Entry, Refusal> {
        if self.flows.len() >= self.max && !self.flows.contains_key(&k) {
            return Err(Refusal::Full);
        }
        let e = Entry {
            backend,
            backend_port,
            state: TcpState::SynSent,
            last_seen: now,
            fin_from_client: false,
            fin_from_backend: false,
        };
        if let Some(old) = self.flows.insert(k, e) {
            self.replies.remove(&Self::reply_key(&k, &old));
            count(&mut self.open, &old, false);
        }
        self.replies.insert(Self::reply_key(&k, &e), k);
        count(&mut self.open, &e, true);
        Ok(e)
    }

    pub fn remove(&mut self, k: &Key) {
        if let Some(e) = self.flows.remove(k) {
            self.replies.remove(&Self::reply_key(k, &e));
            count(&mut self.open, &e, false);
        }
    }

    /// Notes a packet of the flow (TCP `flags`, from the client or the task).
    pub fn update(&mut self, k: &Key, flags: u8, from_client: bool, now: Instant) {
        if let Some(e) = self.flows.get_mut(k) {
            let was = *e;
            Self::advance(e, k.protocol, flags, from_client, now);
            recount(&mut self.open, &was, e);
        }
    }

    /// The live entry of a flow, noting this packet of it, in one lookup
    /// (the per-packet path); an expired entry is removed and `None` returned.
    pub fn touch(&mut self, k: &Key, flags: u8, from_client: bool, now: Instant) -> Option<Entry> {
        let timeouts = self.timeouts;
        let e = self.flows.get_mut(k)?;
        if now.saturating_duration_since(e.last_seen) > Self::timeout_of(&timeouts, e, k.protocol) {
            self.remove(k);
            return None;
        }
        let was = *e;
        Self::advance(e, k.protocol, flags, from_client, now);
        recount(&mut self.open, &was, e);
        Some(*e)
    }

    /// The client flow a reply belongs to, noting the reply (see [`Conntrack::touch`]).
    pub fn touch_reply(&mut self, r: &ReplyKey, flags: u8, now: Instant) -> Option<(Key, Entry)> {
        let k = *self.replies.get(r)?;
        self.touch(&k, flags, false, now).map(|e| (k, e))
    }

    /// Moves an entry's state on for a packet with TCP `flags`.
    fn advance(e: &mut Entry, protocol: u8, flags: u8, from_client: bool, now: Instant) {
        e.last_seen = now;
        if protocol != crate::wire::ipv4::protocol::TCP {
            e.state = TcpState::Established;
            return;
        }
        if flags & RST != 0 {
            e.state = TcpState::Closed;
            return;
        }
        // A client reusing its port after a close opens a new connection:
        // it starts over (else it would stay Closed and expire in seconds).
        if from_client && flags & (SYN | ACK) == SYN && e.state == TcpState::Closed {
            e.fin_from_client = false;
            e.fin_from_backend = false;
            e.state = TcpState::SynSent;
            return;
        }
        if flags & FIN != 0 {
            if from_client {
                e.fin_from_client = true;
            } else {
                e.fin_from_backend = true;
            }
        }
        e.state = match (e.state, e.fin_from_client && e.fin_from_backend) {
            (_, true) => TcpState::Closed,
            (TcpState::Closed, _) => TcpState::Closed,
            _ if e.fin_from_client || e.fin_from_backend => TcpState::Closing,
            (TcpState::SynSent, _) if !from_client && flags & (SYN | ACK) == SYN | ACK => {
                TcpState::Established
            }
            (TcpState::SynSent, _) if from_client && flags & ACK != 0 && flags & SYN == 0 => {
                TcpState::Established
            }
            (s, _) => s,
        };
    }

    /// Open flows to `backend`, for least-connections (one lookup).
    pub fn active_to(&self, backend: Ipv4Addr) -> u32 {
        self.open.get(&backend).copied().unwrap_or(0)
    }

    /// Whether a sweep is due, `since` after the last one. A sweep is a full
    /// pass over the table (about 10 ns a flow), so a big table is swept
    /// less often: once a second up to 50k flows, then once per 50k flows'
    /// worth of seconds (1M flows: every 20 s). Meanwhile lookups drop the
    /// expired entries they meet, and a full table is swept within a second
    /// so that expired flows do not keep new ones out.
    pub fn sweep_due(&self, since: Duration) -> bool {
        let len = self.flows.len();
        if len == 0 || since < Duration::from_secs(1) {
            return false;
        }
        len >= self.max || since >= Duration::from_secs((len / 50_000).max(1) as u64)
    }

    /// Removes expired entries. A full pass: see [`Conntrack::sweep_due`].
    pub fn sweep(&mut self, now: Instant) {
        let timeouts = self.timeouts;
        let (replies, open) = (&mut self.replies, &mut self.open);
        self.flows.retain(|k, e| {
            let t = Self::timeout_of(&timeouts, e, k.protocol);
            let keep = now.saturating_duration_since(e.last_seen) <= t;
            if !keep {
                replies.remove(&Self::reply_key(k, e));
                count(open, e, false);
            }
            keep
        });
    }
}

/// Adds (or takes away) `e` to its task's open count, if it is open.
fn count(open: &mut HashMap<Ipv4Addr, u32, FlowHash>, e: &Entry, add: bool) {
    if e.state == TcpState::Closed {
        return;
    }
    if add {
        *open.entry(e.backend).or_insert(0) += 1;
    } else if let Some(n) = open.get_mut(&e.backend) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            open.remove(&e.backend);
        }
    }
}

/// Moves the open count when an entry's state crosses Closed.
fn recount(open: &mut HashMap<Ipv4Addr, u32, FlowHash>, was: &Entry, now: &Entry) {
    match (was.state == TcpState::Closed, now.state == TcpState::Closed) {
        (false, true) => count(open, was, false),
        (true, false) => count(open, now, true),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::protocol::{TCP, UDP};

    fn key(port: u16) -> Key {
        Key {
            protocol: TCP,
            client: Ipv4Addr::new(10, 0, 0, 9),
            client_port: port,
            vip: Ipv4Addr::new(10, 0, 0, 2),
            port: 80,
        }
    }
    const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

    #[test]
    fn the_hash_is_keyed_per_table() {
        let hash = |h: &FlowHash| h.hash_one(key(1));
        let (a, b) = (FlowHash::random(), FlowHash::random());
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b), "another table, another key");
        assert_ne!(a.hash_one(key(1)), a.hash_one(key(2)));
    }

    #[test]
    fn a_flow_and_its_replies_find_the_same_entry() {
        let mut ct = Conntrack::new(10, Timeouts::default());
        let now = Instant::now();
        ct.insert(key(1000), TASK, now).unwrap();
        let r = ReplyKey {
            protocol: TCP,
            backend: TASK,
            port: 80,
            client: Ipv4Addr::new(10, 0, 0, 9),
            client_port: 1000,
        };
        assert_eq!(
            ct.reply(&r, now).map(|(k, e)| (k, e.backend)),
            Some((key(1000), TASK))
        );
        ct.remove(&key(1000));
        assert!(ct.reply(&r, now).is_none() && ct.is_empty());
    }

    #[test]
    fn tcp_states_follow_the_flags() {
        let mut ct = Conntrack::new(10, Timeouts::default());
        let now = Instant::now();
        let k = key(1);
        ct.insert(k, TASK, now).unwrap();
        ct.update(&k, SYN, true, now);
        assert_eq!(ct.get(&k, now).unwrap().state, TcpState::SynSent);
        ct.update(&k, SYN | ACK, false, now);
        assert_eq!(ct.get(&k, now).unwrap().state, TcpState::Established);
        ct.update(&k, FIN | ACK, true, now);
        assert_eq!(ct.get(&k, now).unwrap().state, TcpState::Closing);
        ct.update(&k, FIN | ACK, false, now);
        assert_eq!(ct.get(&k, now).unwrap().state, TcpState::Closed);
        let k2 = key(2);
        ct.insert(k2, TASK, now).unwrap();
        ct.update(&k2, RST, false, now);
        assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::Closed);
        // The client's next SYN on the same ports is a new connection.
        ct.update(&k2, SYN, true, now);
        assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::SynSent);
        ct.update(&k2, SYN | ACK, false, now);
        assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::Established);
    }

    #[test]
    fn idle_established_connections_live_long_and_then_expire() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(10, t);
        let now = Instant::now();
        let k = key(1);
        ct.insert(k, TASK, now).unwrap();
        ct.update(&k, SYN | ACK, false, now);
        assert!(
            ct.get(&k, now + Duration::from_secs(3600)).is_some(),
            "an hour idle is not the end (IPVS: 900 s)"
        );
        assert!(ct
            .get(&k, now + t.tcp_established + Duration::from_secs(1))
            .is_none());
        let u = Key {
            protocol: UDP,
            ..key(5)
        };
        ct.insert(u, TASK, now).unwrap();
        ct.sweep(now + t.udp + Duration::from_secs(1));
        assert!(ct.is_empty());
    }

    #[test]
    fn big_tables_are_swept_less_often_unless_full() {
        let mut ct = Conntrack::new(200_000, Timeouts::default());
        let s = Duration::from_secs;
        assert!(!ct.sweep_due(s(100)), "nothing to sweep");
        ct.insert(key(1), TASK, Instant::now()).unwrap();
        assert!(!ct.sweep_due(Duration::from_millis(900)));
        assert!(ct.sweep_due(s(1)));
        let now = Instant::now();
        for i in 0..150_000u32 {
            let k = Key {
                client: Ipv4Addr::from(i),
                ..key(1)
            };
            ct.insert(k, TASK, now).unwrap();
        }
        assert!(
            !ct.sweep_due(s(2)) && ct.sweep_due(s(3)),
            "150k flows: every 3 s"
        );
        let mut full = Conntrack::new(1, Timeouts::default());
        full.insert(key(1), TASK, now).unwrap();
        assert!(full.sweep_due(s(1)));
    }

    #[test]
    fn a_full_table_refuses_new_flows_and_keeps_old_ones() {
        let mut ct = Conntrack::new(2, Timeouts::default());
        let now = Instant::now();
        ct.insert(key(1), TASK, now).unwrap();
        ct.insert(key(2), TASK, now).unwrap();
        assert_eq!(ct.insert(key(3), TASK, now), Err(Refusal::Full));
        assert!(ct.get(&key(1), now).is_some());
        assert_eq!(ct.active_to(TASK), 2);
    }

    proptest::proptest! {
        /// The open counts least-connections reads match a count over the
        /// table, whatever happens to the entries.
        #[test]
        fn open_counts_match_a_scan(ops in proptest::collection::vec((0u8..5, 0u16..8, 0u8..3, 0u8..64), 1..200)) {
            let mut ct = Conntrack::new(6, Timeouts { tcp_closed: Duration::from_secs(1), ..Timeouts::default() });
            let t0 = Instant::now();
            let mut now = t0;
            for (op, port, task, flags) in ops {
                let backend = Ipv4Addr::new(10, 0, 1, task);
                let k = key(port);
                match op {
                    0 => { let _ = ct.insert(k, backend, now); }
                    1 => ct.update(&k, flags, flags % 2 == 0, now),
                    2 => { let _ = ct.touch(&k, flags, flags % 2 == 1, now); }
                    3 => ct.remove(&k),
                    _ => { now += Duration::from_secs(u64::from(flags % 20)); ct.sweep(now); }
                }
                for task in 0..3 {
                    let b = Ipv4Addr::new(10, 0, 1, task);
                    let scan = ct.flows.values().filter(|e| e.backend == b && e.state != TcpState::Closed).count() as u32;
                    proptest::prop_assert_eq!(ct.active_to(b), scan);
                }
            }
        }
    }
}
