//! Step 4b: receive coalescing (software GRO). Consecutive in-order TCP
//! segments of one flow going to the same container are joined into one
//! super-frame, written to the TAP once with a virtio-net header that says
//! "TCPv4 GSO, this MSS, checksum partial": the container's stack then handles
//! 64 KB at a time instead of 45 frames, as wireguard-go does for its TUN.
//!
//! Only plain data segments are joined (ACK, with PSH allowed to end a run);
//! SYN, FIN, RST, URG, ECN flags, IP options, fragments, a changed ACK number,
//! window or TCP options, a gap or a retransmission all end the run, and such
//! frames pass on their own after whatever was pending for that container, so
//! the order within a flow never changes.

use super::offload::{pseudo_header_sum, tcp_layout, TcpLayout};
use crate::tables::PortId;
use crate::wire::virtio::{self, VnetHeader};
use crate::wire::{checksum_fold, ethernet, ipv4, l4};

/// The largest frame a run may grow to: an IPv4 packet of 64 KB behind Ethernet.
pub const MAX_FRAME: usize = ethernet::HEADER_LEN + 65535;

struct Slot {
    active: bool,
    port: PortId,
    buf: Vec<u8>,
    len: usize,
    layout: TcpLayout,
    mss: usize,
    next_seq: u32,
    segments: u32,
    closed: bool,
    age: u64,
}

/// Runs being built, one per flow and container, a fixed number at a time.
pub struct Coalescer {
    slots: Vec<Slot>,
    clock: u64,
}

/// Where finished frames go: the port, the virtio-net header, the frame.
pub trait Sink {
    fn deliver(&mut self, port: PortId, vnet: &VnetHeader, frame: &[u8]);
}

impl<F: FnMut(PortId, &VnetHeader, &[u8])> Sink for F {
    fn deliver(&mut self, port: PortId, vnet: &VnetHeader, frame: &[u8]) {
        self(port, vnet, frame)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Coalescer {
    /// A coalescer with `slots` runs at most (buffers allocated now, once).
    pub fn new(slots: usize) -> Coalescer {
        let empty = TcpLayout {
            ip: 0,
            ip_len: 0,
            tcp: 0,
            tcp_len: 0,
            payload: 0,
            end: 0,
        };
        Coalescer {
            slots: (0..slots.max(1))
                .map(|_| Slot {
                    active: false,
                    port: 0,
                    buf: vec![0u8; MAX_FRAME],
                    len: 0,
                    layout: empty,
                    mss: 0,
                    next_seq: 0,
                    segments: 0,
                    closed: false,
                    age: 0,
                })
                .collect(),
            clock: 0,
        }
    }

    /// Offers a frame bound for `port`. Returns true if it was taken into a
    /// run; false if the caller must write it itself (after this call, which
    /// has flushed anything pending for that port, so order is kept).
    pub fn offer(&mut self, port: PortId, frame: &[u8], sink: &mut impl Sink) -> bool {
        let Some(l) = coalescable(frame) else {
            self.flush_port(port, sink);
            return false;
        };
        self.clock += 1;
        let seq = be32(frame, l.tcp + 4);
        let payload_len = l.end - l.payload;
        let psh = frame[l.tcp + 13] & l4::tcp_flags::PSH != 0;
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.active && s.port == port && same_flow(s, frame, &l))
        {
            let s = &mut self.slots[i];
            if !s.closed
                && seq == s.next_seq
                && payload_len <= s.mss
                && s.len + payload_len <= MAX_FRAME
            {
                s.buf[s.len..s.len + payload_len].copy_from_slice(&frame[l.payload..l.end]);
                s.len += payload_len;
                s.next_seq = seq.wrapping_add(payload_len as u32);
                s.segments += 1;
                s.age = self.clock;
                if psh {
                    s.buf[s.layout.tcp + 13] |= l4::tcp_flags::PSH;
                }
                s.closed = psh || payload_len < s.mss;
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
        let s = &mut self.slots[i];
        s.buf[..l.end].copy_from_slice(&frame[..l.end]);
        *s = Slot {
            active: true,
            port,
            buf: std::mem::take(&mut s.buf),
            len: l.end,
            layout: l,
            mss: payload_len,
            next_seq: seq.wrapping_add(payload_len as u32),
            segments: 1,
            closed: psh,
            age: self.clock,
        };
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

    /// Writes out every run (at the end of a batch).
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
        let frame = &mut s.buf[..s.len];
        if s.segments == 1 {
            sink.deliver(s.port, &VnetHeader::default(), frame);
            return;
        }
        let ip_total = (s.len - l.ip) as u16;
        frame[l.ip + 2..l.ip + 4].copy_from_slice(&ip_total.to_be_bytes());
        frame[l.ip + 10..l.ip + 12].copy_from_slice(&[0, 0]);
        let c = !(checksum_fold(0, &frame[l.ip..l.ip + l.ip_len]) as u16);
        frame[l.ip + 10..l.ip + 12].copy_from_slice(&c.to_be_bytes());
        // Checksum partial: the pseudo-header sum, for the kernel to finish.
        let pseudo = pseudo_header_sum(
            &frame[l.ip..l.ip + l.ip_len],
            ipv4::protocol::TCP,
            s.len - l.tcp,
        ) as u16;
        frame[l.tcp + 16..l.tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
        let vnet = VnetHeader {
            flags: virtio::F_NEEDS_CSUM,
            gso_type: virtio::GSO_TCPV4,
            hdr_len: l.payload as u16,
            gso_size: s.mss as u16,
            csum_start: l.tcp as u16,
            csum_offset: 16,
        };
        sink.deliver(s.port, &vnet, frame);
    }
}

/// The layout of a frame that may join a run: TCP/IPv4 without IP options,
/// not a fragment, only ACK (and PSH) set, some payload.
fn coalescable(frame: &[u8]) -> Option<TcpLayout> {
    let l = tcp_layout(frame, 0)?;
    let flags = frame[l.tcp + 13];
    let allowed = l4::tcp_flags::ACK | l4::tcp_flags::PSH;
    let more_fragments = frame[l.ip + 6] & 0x20 != 0;
    (l.ip_len == 20
        && !more_fragments
        && flags & !allowed == 0
        && flags & l4::tcp_flags::ACK != 0
        && l.end > l.payload)
        .then_some(l)
}

/// Same MACs, addresses, TOS, TTL, ports, ACK number, header length, flags
/// (but PSH), window and TCP options as the run.
fn same_flow(s: &Slot, frame: &[u8], l: &TcpLayout) -> bool {
    let r = &s.buf;
    let (a, b) = (s.layout, l);
    if a.tcp_len != b.tcp_len || a.ip != b.ip {
        return false;
    }
    let psh = !l4::tcp_flags::PSH;
    r[..12] == frame[..12]
        && r[a.ip + 1] == frame[b.ip + 1]
        && r[a.ip + 8..a.ip + 10] == frame[b.ip + 8..b.ip + 10]
        && r[a.ip + 12..a.ip + 20] == frame[b.ip + 12..b.ip + 20]
        && r[a.tcp..a.tcp + 4] == frame[b.tcp..b.tcp + 4]
        && r[a.tcp + 8..a.tcp + 13] == frame[b.tcp + 8..b.tcp + 13]
        && r[a.tcp + 13] & psh == frame[b.tcp + 13] & psh
        && r[a.tcp + 14..a.tcp + 16] == frame[b.tcp + 14..b.tcp + 16]
        && r[a.tcp + 20..a.payload] == frame[b.tcp + 20..b.payload]
}

#[cfg(test)]
mod tests {
    use super::super::offload::segment_tcp4;
    use super::super::offload::tests::{checksums_ok, tcp_frame};
    use super::*;
    use crate::wire::l4::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};

    type Out = Vec<(PortId, VnetHeader, Vec<u8>)>;

    fn run(frames: &[(PortId, Vec<u8>)]) -> (Out, Vec<bool>) {
        let mut c = Coalescer::new(4);
        let mut out: Out = vec![];
        let mut taken = vec![];
        for (port, f) in frames {
            let mut sink = |p: PortId, v: &VnetHeader, b: &[u8]| out.push((p, *v, b.to_vec()));
            let t = c.offer(*port, f, &mut sink);
            if !t {
                out.push((
                    *port,
                    VnetHeader {
                        flags: 0xff,
                        ..VnetHeader::default()
                    },
                    f.clone(),
                ));
            }
            taken.push(t);
        }
        c.flush(&mut |p: PortId, v: &VnetHeader, b: &[u8]| out.push((p, *v, b.to_vec())));
        (out, taken)
    }

    fn data(seq: u32, len: usize, flags: u8) -> Vec<u8> {
        let payload: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
        tcp_frame(seq, flags, &payload)
    }

    #[test]
    fn in_order_segments_become_one_gso_frame_that_segments_back() {
        let segs = [
            data(1000, 1386, ACK),
            data(2386, 1386, ACK),
            data(3772, 500, ACK | PSH),
        ];
        let (out, _) = run(&segs.iter().map(|s| (7, s.clone())).collect::<Vec<_>>());
        assert_eq!(out.len(), 1);
        let (port, vnet, frame) = &out[0];
        assert_eq!(*port, 7);
        assert_eq!(vnet.gso_type, virtio::GSO_TCPV4);
        assert_eq!(vnet.flags, virtio::F_NEEDS_CSUM);
        assert_eq!(
            (
                vnet.gso_size,
                vnet.hdr_len,
                vnet.csum_start,
                vnet.csum_offset
            ),
            (1386, 66, 34, 16)
        );
        assert_eq!(frame.len(), 66 + 1386 * 2 + 500);
        assert_eq!(frame[47], ACK | PSH);
        // What the kernel would do with it: cut it again, finish checksums.
        let mut datagram = vec![0u8; 8];
        datagram.extend_from_slice(frame);
        let mut back = vec![0u8; 10_000];
        let (size, total) = segment_tcp4(&datagram, 1386, &mut back).unwrap();
        let mut at = 0;
        for (i, s) in segs.iter().enumerate() {
            let len = if i == 2 { 8 + s.len() } else { size };
            let seg = &back[at + 8..at + len];
            assert!(checksums_ok(seg));
            // IP IDs (and so IP checksums) are renumbered; all else matches.
            assert!(seg[..18] == s[..18] && seg[26..] == s[26..], "segment {i}");
            at += len;
        }
        assert_eq!(at, total);
    }

    #[test]
    fn single_segments_pass_without_gso() {
        let (out, taken) = run(&[(1, data(1, 100, ACK))]);
        assert_eq!(taken, vec![true]);
        assert_eq!(out[0].1, VnetHeader::default());
        assert_eq!(out[0].2, data(1, 100, ACK));
    }

    #[test]
    fn gaps_retransmissions_and_flags_end_a_run_in_order() {
        for odd in [
            data(1000, 100, SYN | ACK),
            data(1000, 100, ACK | FIN),
            data(1000, 100, RST | ACK),
            data(1000, 100, ACK | URG),
            data(1000, 0, ACK),
        ] {
            let (out, taken) = run(&[(1, data(900, 100, ACK)), (1, odd.clone())]);
            assert_eq!(taken, vec![true, false]);
            assert_eq!(out.len(), 2, "pending data first, then the odd frame");
            assert_eq!(out[0].2, data(900, 100, ACK));
            assert_eq!(out[1].2, odd);
        }
        // A gap (2000 expected 1100) and a retransmission each start a new run.
        let (out, _) = run(&[
            (1, data(1000, 100, ACK)),
            (1, data(2000, 100, ACK)),
            (1, data(1000, 100, ACK)),
        ]);
        let seqs: Vec<u32> = out.iter().map(|(_, _, f)| be32(f, 38)).collect();
        assert_eq!(seqs, vec![1000, 2000, 1000]);
    }

    #[test]
    fn a_push_or_a_short_segment_closes_the_run() {
        let (out, _) = run(&[(1, data(0, 100, ACK | PSH)), (1, data(100, 100, ACK))]);
        assert_eq!(out.len(), 2);
        let (out, _) = run(&[
            (1, data(0, 100, ACK)),
            (1, data(100, 50, ACK)),
            (1, data(150, 50, ACK)),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].2.len(), 66 + 150);
    }

    #[test]
    fn flows_and_ports_are_kept_apart() {
        let mut other = data(100, 100, ACK);
        other[35] ^= 1; // another source port
        let (out, _) = run(&[
            (1, data(0, 100, ACK)),
            (2, data(100, 100, ACK)),
            (1, other),
            (1, data(100, 100, ACK)),
        ]);
        assert_eq!(out.len(), 3);
        let big = out
            .iter()
            .find(|(p, v, _)| *p == 1 && v.gso_type == virtio::GSO_TCPV4)
            .unwrap();
        assert_eq!(big.2.len(), 66 + 200);
    }

    #[test]
    fn more_flows_than_slots_flush_the_oldest() {
        let frames: Vec<(PortId, Vec<u8>)> = (0..10).map(|i| (i, data(0, 10, ACK))).collect();
        let (out, taken) = run(&frames);
        assert!(taken.iter().all(|t| *t));
        assert_eq!(out.len(), 10);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec((0u32..3, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)), 0..20), seed in 0usize..5) {
            let mut c = Coalescer::new(2);
            let base = data(0, 50, ACK);
            let mut n = 0usize;
            let mut sink = |_: PortId, _: &VnetHeader, b: &[u8]| n += b.len();
            for (i, (port, mut f)) in frames.into_iter().enumerate() {
                if (i + seed) % 2 == 0 {
                    // Mostly-valid frames with a few bytes changed reach deeper.
                    let mut g = base.clone();
                    for (j, b) in f.iter().enumerate().take(4) {
                        let at = (usize::from(*b) * 7 + j) % g.len();
                        g[at] = *b;
                    }
                    f = g;
                }
                c.offer(port, &f, &mut sink);
            }
            c.flush(&mut sink);
        }
    }
}
