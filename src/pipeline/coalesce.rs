//! Step 4b: receive coalescing (software GRO). Consecutive in-order TCP
//! segments of one flow going to the same container are joined into one
//! super-frame, written to the TAP once with a virtio-net header that says
//! "TCPv4 GSO, this MSS, checksum partial": the container's stack then handles
//! 64 KB at a time instead of 45 frames, as wireguard-go does for its TUN.
//!
//! Nothing is copied but headers: a run keeps the first segment's headers and
//! a list of [`Part`]s, where each payload lies in the caller's receive
//! buffers, and the sink writes them out with one scatter-gather write. The
//! caller keeps those buffers untouched until [`Coalescer::flush`].
//!
//! Only plain data segments are joined (ACK, with PSH allowed to end a run);
//! SYN, FIN, RST, URG, ECN flags, IP options, fragments, a changed ACK number,
//! window or TCP options, a gap or a retransmission all end the run, and such
//! frames pass on their own after whatever was pending for that container, so
//! the order within a flow never changes.

use super::offload::{pseudo_header_sum, tcp_layout, TcpLayout};
use crate::tables::PortId;
use crate::wire::virtio::{self, VnetHeader};
use crate::wire::{be16, be32, checksum_fold, ethernet, ipv4, l4};

/// The largest frame a run may grow to: an IPv4 packet of 64 KB behind Ethernet.
pub const MAX_FRAME: usize = ethernet::HEADER_LEN + 65535;
/// Headers kept per run: Ethernet, IPv4 without options, TCP with options.
const MAX_HEADER: usize = ethernet::HEADER_LEN + 20 + 60;
/// Payload pieces per run.
pub const MAX_PARTS: usize = 64;

/// Bytes in one of the caller's buffers: buffer index, offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Part {
    pub buf: u32,
    pub start: u32,
    pub len: u32,
}

/// Where finished frames go: the port, the virtio-net header, the headers,
/// then the payload pieces in order.
pub trait Sink {
    fn deliver(&mut self, port: PortId, vnet: &VnetHeader, head: &[u8], parts: &[Part]);
}

impl<F: FnMut(PortId, &VnetHeader, &[u8], &[Part])> Sink for F {
    fn deliver(&mut self, port: PortId, vnet: &VnetHeader, head: &[u8], parts: &[Part]) {
        self(port, vnet, head, parts)
    }
}

struct Slot {
    active: bool,
    port: PortId,
    head: [u8; MAX_HEADER],
    layout: TcpLayout,
    parts: [Part; MAX_PARTS],
    nparts: usize,
    frame_len: usize,
    mss: usize,
    next_seq: u32,
    closed: bool,
    partial: bool,
    age: u64,
}

/// Runs being built, one per flow and container, a fixed number at a time.
pub struct Coalescer {
    slots: Vec<Slot>,
    clock: u64,
    /// The slot the last segment joined or started: the next one is most
    /// likely of the same connection, so it is tried first.
    last: usize,
}

impl Coalescer {
    /// A coalescer with `slots` runs at most (allocated now, once).
    pub fn new(slots: usize) -> Coalescer {
        let empty = TcpLayout {
            ip: 0,
            ip_len: 0,
            tcp: 0,
            tcp_len: 0,
            payload: 0,
            end: 0,
        };
        let slot = || Slot {
            active: false,
            port: 0,
            head: [0; MAX_HEADER],
            layout: empty,
            parts: [Part::default(); MAX_PARTS],
            nparts: 0,
            frame_len: 0,
            mss: 0,
            next_seq: 0,
            closed: false,
            partial: false,
            age: 0,
        };
        Coalescer {
            slots: (0..slots.max(1)).map(|_| slot()).collect(),
            clock: 0,
            last: 0,
        }
    }

    /// Offers `frame`, bound for `port`, which lies at `at` in the caller's
    /// buffers (`at.len` is ignored). `partial`: its checksum is the
    /// pseudo-header sum only. Returns true if it joined or started a run;
    /// false if the caller must write it itself, after this call has flushed
    /// what was pending for that port, so order is kept.
    #[inline]
    pub fn offer(
        &mut self,
        port: PortId,
        frame: &[u8],
        at: Part,
        partial: bool,
        sink: &mut impl Sink,
    ) -> bool {
        self.clock += 1;
        // Most often, from another agent, the next segment of the run the
        // last one joined: that much is inlined into the caller's loop.
        if partial && self.extend(self.last, port, frame, at) {
            return true;
        }
        self.offer_rest(port, frame, at, partial, sink)
    }

    /// The rest of [`Coalescer::offer`] (the clock has moved on).
    #[inline(never)]
    fn offer_rest(
        &mut self,
        port: PortId,
        frame: &[u8],
        at: Part,
        partial: bool,
        sink: &mut impl Sink,
    ) -> bool {
        // A run leaves with a fresh partial checksum that the container's
        // kernel takes on trust, so a segment that came with its checksum
        // complete (from a plain VTEP, whose outer UDP checksum is often
        // zero) is checked first, as the kernel's own GRO does; a damaged
        // one goes alone, as it came, for the container to drop.
        if !partial && !tcp_checksum_ok(frame) {
            self.flush_port(port, sink);
            return false;
        }
        if !partial && self.extend(self.last, port, frame, at) {
            return true;
        }
        let Some(l) = coalescable(frame) else {
            self.flush_port(port, sink);
            return false;
        };
        // One run per connection: a segment that cannot join its connection's
        // run ends it, so the run never overtakes what comes after it.
        let mine = |s: &Slot| s.active && s.port == port && same_connection(s, frame, &l);
        if let Some(i) = self.slots.iter().position(mine) {
            if self.extend(i, port, frame, at) {
                return true;
            }
            self.flush_slot(i, sink);
        }
        let i = match self.slots.iter().position(|s| !s.active) {
            Some(i) => i,
            None => {
                let oldest = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.age)
                    .map_or(0, |(i, _)| i);
                self.flush_slot(oldest, sink);
                oldest
            }
        };
        let payload_len = l.end - l.payload;
        let s = &mut self.slots[i];
        s.head[..l.payload].copy_from_slice(&frame[..l.payload]);
        s.active = true;
        s.port = port;
        s.layout = l;
        s.parts[0] = Part {
            buf: at.buf,
            start: at.start + l.payload as u32,
            len: payload_len as u32,
        };
        s.nparts = 1;
        s.frame_len = l.end;
        s.mss = payload_len;
        s.next_seq = be32(frame, l.tcp + 4).wrapping_add(payload_len as u32);
        s.closed = frame[l.tcp + 13] & l4::tcp_flags::PSH != 0;
        s.partial = partial;
        s.age = self.clock;
        self.last = i;
        true
    }

    /// Joins `frame` to run `i` if it is that run's next segment: same
    /// headers but for what changes from segment to segment ([`same_headers`]),
    /// a sound IPv4 length and no fragment, the expected sequence number, at
    /// most one MSS of payload, and room in the run. Such a frame is
    /// [`coalescable`] with the run's layout, so this holds whether or not
    /// that was checked first.
    #[inline(always)]
    fn extend(&mut self, i: usize, port: PortId, frame: &[u8], at: Part) -> bool {
        let Some(s) = self.slots.get_mut(i) else {
            return false;
        };
        let l = s.layout;
        if !s.active || s.closed || s.port != port || frame.len() <= l.payload {
            return false;
        }
        if !same_headers(&s.head, frame, l.payload) {
            return false;
        }
        let end = l.ip + usize::from(be16(frame, l.ip + 2));
        let fragment = be16(frame, l.ip + 6) & 0x3fff != 0;
        if fragment || end > frame.len() || end <= l.payload {
            return false;
        }
        let payload_len = end - l.payload;
        let seq = be32(frame, l.tcp + 4);
        let fits = s.frame_len + payload_len <= MAX_FRAME && s.nparts < MAX_PARTS;
        if seq != s.next_seq || payload_len > s.mss || !fits {
            return false;
        }
        s.parts[s.nparts] = Part {
            buf: at.buf,
            start: at.start + l.payload as u32,
            len: payload_len as u32,
        };
        s.nparts += 1;
        s.frame_len += payload_len;
        s.next_seq = seq.wrapping_add(payload_len as u32);
        s.age = self.clock;
        let psh = frame[l.tcp + 13] & l4::tcp_flags::PSH != 0;
        if psh {
            s.head[l.tcp + 13] |= l4::tcp_flags::PSH;
        }
        s.closed = psh || payload_len < s.mss;
        self.last = i;
        true
    }

    /// Writes out every run for `port`.
    pub fn flush_port(&mut self, port: PortId, sink: &mut impl Sink) {
        for i in 0..self.slots.len() {
            if self.slots[i].active && self.slots[i].port == port {
                self.flush_slot(i, sink);
            }
        }
    }

    /// Writes out every run; the caller's buffers may be reused after this.
    pub fn flush(&mut self, sink: &mut impl Sink) {
        for i in 0..self.slots.len() {
            if self.slots[i].active {
                self.flush_slot(i, sink);
            }
        }
    }

    fn flush_slot(&mut self, i: usize, sink: &mut impl Sink) {
        let s = &mut self.slots[i];
        if !s.active {
            return;
        }
        s.active = false;
        let l = s.layout;
        let head = &mut s.head[..l.payload];
        if s.nparts == 1 {
            let vnet = if s.partial {
                VnetHeader {
                    flags: virtio::F_NEEDS_CSUM,
                    csum_start: l.tcp as u16,
                    csum_offset: 16,
                    ..VnetHeader::default()
                }
            } else {
                VnetHeader::default()
            };
            sink.deliver(s.port, &vnet, head, &s.parts[..1]);
            return;
        }
        let ip_total = (s.frame_len - l.ip) as u16;
        head[l.ip + 2..l.ip + 4].copy_from_slice(&ip_total.to_be_bytes());
        head[l.ip + 10..l.ip + 12].copy_from_slice(&[0, 0]);
        let c = !(checksum_fold(0, &head[l.ip..l.ip + l.ip_len]) as u16);
        head[l.ip + 10..l.ip + 12].copy_from_slice(&c.to_be_bytes());
        // Checksum partial: the pseudo-header sum, for the kernel to finish.
        let pseudo = pseudo_header_sum(
            &head[l.ip..l.ip + l.ip_len],
            ipv4::protocol::TCP,
            s.frame_len - l.tcp,
        ) as u16;
        head[l.tcp + 16..l.tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
        let vnet = VnetHeader {
            flags: virtio::F_NEEDS_CSUM,
            gso_type: virtio::GSO_TCPV4,
            hdr_len: l.payload as u16,
            gso_size: s.mss as u16,
            csum_start: l.tcp as u16,
            csum_offset: 16,
        };
        sink.deliver(s.port, &vnet, head, &s.parts[..s.nparts]);
    }
}

/// False for a TCP/IPv4 frame whose TCP checksum does not verify; true for
/// any other frame (those are judged by [`coalescable`]).
fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let Some(Ok(ip)) = frame
        .get(ethernet::HEADER_LEN..)
        .map(ipv4::Packet::new_checked)
    else {
        return true;
    };
    if ip.protocol() != ipv4::protocol::TCP {
        return true;
    }
    let header = &frame[ethernet::HEADER_LEN..ethernet::HEADER_LEN + ip.header_len()];
    let pseudo = pseudo_header_sum(header, ipv4::protocol::TCP, ip.payload().len());
    checksum_fold(pseudo, ip.payload()) as u16 == 0xffff
}

/// The layout of a frame that may join a run: TCP/IPv4 without IP options,
/// not a fragment, only ACK (and PSH) set, some payload.
#[inline]
fn coalescable(frame: &[u8]) -> Option<TcpLayout> {
    let l = tcp_layout(frame, 0)?;
    let flags = frame[l.tcp + 13];
    let allowed = l4::tcp_flags::ACK | l4::tcp_flags::PSH;
    let more_fragments = frame[l.ip + 6] & 0x20 != 0;
    let ok = l.ip_len == 20
        && !more_fragments
        && flags & !allowed == 0
        && flags & l4::tcp_flags::ACK != 0;
    (ok && l.end > l.payload && l.payload <= MAX_HEADER).then_some(l)
}

/// Same IPv4 addresses and TCP ports as the run.
#[inline]
fn same_connection(s: &Slot, frame: &[u8], l: &TcpLayout) -> bool {
    let (a, b) = (s.layout, l);
    word_at(&s.head, a.ip + 12) == word_at(frame, b.ip + 12)
        && s.head[a.tcp..a.tcp + 4] == frame[b.tcp..b.tcp + 4]
}

/// The bytes of the headers (Ethernet, IPv4 without options, TCP) that
/// every segment of a run shares, as masks of eight-byte words in memory
/// order (byte `8 * i + k` is byte `k` of word `i`):
/// - 0-15: MACs, EtherType, IP version and header length, TOS;
/// - 16-23: (IP total length, ID, fragment field) TTL, protocol;
/// - 24-31: (IP checksum) source address, half the destination;
/// - 32-39: the rest of the destination, ports, (half the sequence number);
/// - 40-47: (the other half) ACK number, data offset, flags but PSH;
///
/// Then the window (48-49) and, after the TCP checksum and urgent pointer,
/// the options (54 on), all compared.
const SHARED: [u64; 6] = [
    !0,
    !0,
    0xffff << 48,
    !0 << 16,
    !0 >> 16,
    !(0xffff | (l4::tcp_flags::PSH as u64) << 56),
];

/// True if the first `len` bytes of `frame` (its headers: at least 54, at
/// most [`MAX_HEADER`]) match the run's `head` in every shared byte.
#[inline]
fn same_headers(head: &[u8; MAX_HEADER], frame: &[u8], len: usize) -> bool {
    let (Some(h), Some(f)) = (head.get(..len), frame.get(..len)) else {
        return false;
    };
    if len < 54 {
        return false;
    }
    let mut d = 0;
    for (i, mask) in SHARED.iter().enumerate() {
        d |= (word_at(h, 8 * i) ^ word_at(f, 8 * i)) & mask;
    }
    // The window, then the options, four bytes at a time (TCP's header
    // length is a multiple of four).
    let options = h[54..].chunks_exact(4).zip(f[54..].chunks_exact(4));
    d == 0 && h[48..50] == f[48..50] && options.fold(true, |same, (a, b)| same & (a == b))
}

/// Eight bytes at `at`, in memory order (little-endian load: byte `at` is
/// the low byte). Callers have checked the headers are that long.
#[inline]
fn word_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests;
