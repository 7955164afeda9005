//! Step 0b: IPv4 fragments. Only the first fragment of a datagram carries
//! the ports that connection tracking, VIPs, published ports and return
//! paths go by; the others carry just the IP header. So the later fragments
//! follow the first: what the packet core made of the first fragment (its
//! addresses after NAT, its Ethernet and VXLAN headers, where it went) is
//! noted under the datagram's identity, and each later fragment of the same
//! datagram, from the same input, is made the same and goes the same way.
//! The receiver reassembles them, as it would have without us. An ICMP
//! echo request to a VIP is answered with itself turned around, and its
//! later fragments are turned around the same way: a big ping to a VIP
//! gets its whole answer.
//!
//! The identity: where the fragment came from (the TAP and its source MAC,
//! the VTEP and VNI, or the host) and the IPv4 source, destination,
//! protocol and ID. The table is direct-mapped, allocated once: fragments
//! of one datagram follow each other within microseconds, so a note lives
//! [`LIFETIME`] and a newer datagram may take its place. A later fragment
//! with no note (its first came after it, was dropped, or was answered by
//! the pipeline with a frame of its own, such as a RST) is judged on its
//! own, as before there were notes: plain switching needs no ports and
//! still works; paths that need them drop it. A TCP fragment that would
//! overlap the first's TCP header (offset below 20 bytes, RFC 1858) is
//! dropped as malformed.
//!
//! Fragments can arrive out of order (paths that spread packets, a sender
//! that sends the last first). So a copy of a later fragment that comes
//! with no note is kept for [`PARK_LIFETIME`] in one of [`PARK_SLOTS`]
//! buffers allocated once, and it is judged on its own too. If its first
//! comes meanwhile and becomes something else than the fragment did on its
//! own (it was dropped for want of ports, or went out unchanged where the
//! first was translated), the copy is made what the first became and
//! handed back to the caller ([`Fragments::released`]) to send after the
//! first. A stray copy left where the fragment went on its own is
//! harmless: its receiver drops it when its reassembly times out.

use super::lb::nat::{self, Side};
use super::{DropReason, Input, Packet, Verdict, HEADROOM};
use crate::wire::vxlan::{self, Vni};
use crate::wire::{ethernet, ipv4, Mac};
use std::hash::{BuildHasher, RandomState};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Notes kept (a power of two): ~400 KB.
const SLOTS: usize = 4096;
/// How long a first fragment's note is good for.
pub const LIFETIME: Duration = Duration::from_secs(1);
/// Later fragments kept while they wait for their first.
pub const PARK_SLOTS: usize = 16;
/// How long a later fragment waits for its first.
pub const PARK_LIFETIME: Duration = Duration::from_millis(200);
/// The longest fragment kept (as read, headers and all); longer ones are
/// judged on their own only. An underlay of 9000-byte jumbo frames would
/// send longer ones; 1500-byte MTUs give at most ~1550.
const PARK_LEN: usize = 2048;

/// Which fragment of a datagram a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Not fragmented.
    Whole,
    /// The first fragment (offset 0, more to come).
    First(Id),
    /// A later fragment (offset > 0).
    Later(Id),
    /// A later TCP fragment that would overlap the first's TCP header.
    Overlapping,
}

/// A datagram as one input sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id {
    input: Input,
    /// The VXLAN header's VNI (underlay), else zero.
    vni: Vni,
    /// The frame's source MAC (TAP, underlay), else zero.
    mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
}

/// What the first fragment became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Way {
    verdict: Verdict,
    /// The VXLAN header in front (for [`Verdict::ToUnderlay`]).
    vxlan: [u8; vxlan::HEADER_LEN],
    ethernet: [u8; ethernet::HEADER_LEN],
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
struct Note {
    id: Id,
    way: Way,
    until: Instant,
}

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

/// The notes of one dataplane thread.
pub struct Fragments {
    notes: Box<[Option<Note>]>,
    hasher: RandomState,
    parked: Box<[Parked]>,
    /// Some parked fragment is released (a check per first fragment).
    any_released: bool,
}

impl Default for Fragments {
    fn default() -> Self {
        Fragments {
            notes: vec![None; SLOTS].into_boxed_slice(),
            hasher: RandomState::new(),
            parked: (0..PARK_SLOTS)
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
            any_released: false,
        }
    }
}

/// Which fragment `frame`, as read from `input`, is.
pub fn part_of(input: Input, frame: &[u8]) -> Part {
    let at = input.ip_offset();
    // Most packets: neither more fragments nor an offset.
    let offset = match frame.get(at + 6..at + 8) {
        Some(&[flags, offset]) if (flags & 0x3f) | offset != 0 => {
            u16::from_be_bytes([flags, offset]) & 0x1fff
        }
        _ => return Part::Whole,
    };
    // Without the I flag, the VXLAN header is refused (by the normal path).
    let vni = match input {
        Input::Underlay(_) => match vxlan::parse(frame) {
            Ok(vni) => vni,
            Err(_) => return Part::Whole,
        },
        _ => Vni::default(),
    };
    let mac = match input {
        Input::Host => Mac::ZERO,
        _ => match ethernet::Frame::new_checked(&frame[at - ethernet::HEADER_LEN..]) {
            Ok(eth) if eth.ethertype() == ethernet::ethertype::IPV4 => eth.src(),
            _ => return Part::Whole,
        },
    };
    let Ok(ip) = ipv4::Packet::new_checked(&frame[at..]) else {
        return Part::Whole;
    };
    let id = Id {
        input,
        vni,
        mac,
        src: ip.src(),
        dst: ip.dst(),
        protocol: ip.protocol(),
        ident: ip.ident(),
    };
    if offset == 0 {
        Part::First(id)
    } else if ip.protocol() == ipv4::protocol::TCP && usize::from(offset) * 8 < 20 {
        Part::Overlapping
    } else {
        Part::Later(id)
    }
}

impl Fragments {
    fn slot(&self, id: &Id) -> usize {
        self.hasher.hash_one(id) as usize & (SLOTS - 1)
    }

    /// Notes what the first fragment `id` became: `pkt` as the pipeline
    /// left it (not a frame it made itself), going where `verdict` says.
    pub fn note(&mut self, id: Id, verdict: Verdict, pkt: &Packet<'_>, now: Instant) {
        let Some(way) = way_of(verdict, pkt) else {
            return self.forget(&id);
        };
        let i = self.slot(&id);
        self.notes[i] = Some(Note {
            id,
            way,
            until: now + LIFETIME,
        });
    }

    /// Forgets every note that sends later fragments to port `port`, and
    /// the fragments it sent that wait: it is gone, and its number may soon
    /// be another container's.
    pub fn forget_port(&mut self, port: crate::tables::PortId) {
        for n in self.notes.iter_mut() {
            if n.is_some_and(|n| n.way.verdict == Verdict::ToTap(port)) {
                *n = None;
            }
        }
        for p in self.parked.iter_mut() {
            let from = p.id.is_some_and(|id| id.input == Input::Tap(port));
            if from || p.released == Some(Verdict::ToTap(port)) {
                p.id = None;
                p.released = None;
            }
        }
    }

    /// Keeps a copy of the later fragment `id` in `pkt` (as read, before
    /// anything is made of it), which has no note of its first: the slot
    /// it is in, or `None` when it is too long or every slot holds a
    /// fragment still waiting.
    pub fn park(&mut self, id: Id, pkt: &Packet<'_>, now: Instant) -> Option<usize> {
        let frame = pkt.bytes();
        if frame.len() > PARK_LEN {
            return None;
        }
        let i = self
            .parked
            .iter()
            .position(|p| p.id.is_none() || (p.released.is_none() && now >= p.until))?;
        let p = &mut self.parked[i];
        p.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        (p.id, p.until, p.released, p.went) = (Some(id), now + PARK_LIFETIME, None, None);
        (p.start, p.end) = (HEADROOM, HEADROOM + frame.len());
        Some(i)
    }

    /// Notes what the fragment parked in slot `i` became on its own
    /// (`pkt` going where `verdict` says): if its first, when it comes,
    /// becomes the same, it went right and is not sent again.
    pub fn went(&mut self, i: usize, verdict: Verdict, pkt: &Packet<'_>) {
        if let Some(p) = self.parked.get_mut(i) {
            p.went = way_of(verdict, pkt);
        }
    }

    /// The first fragment of `id` was noted: its later fragments that wait
    /// are made what it became, to be sent after it ([`Fragments::released`]).
    /// Returns how many were.
    pub fn release(&mut self, id: &Id, now: Instant) -> usize {
        let Some(note) = self.notes[self.slot(id)].filter(|n| n.id == *id) else {
            return 0;
        };
        let mut n = 0;
        for p in self.parked.iter_mut() {
            if p.id != Some(*id) || p.released.is_some() {
                continue;
            }
            // Too late, or it went on its own the way its first went.
            if now >= p.until || p.went == Some(note.way) {
                p.id = None;
                continue;
            }
            let mut pkt = Packet::new(&mut p.buf, p.start, p.end - p.start);
            match apply(note.way, *id, &mut pkt) {
                Ok(v) => {
                    (p.start, p.end, p.released) = (pkt.start, pkt.end, Some(v));
                    n += 1;
                }
                Err(_) => p.id = None,
            }
        }
        self.any_released |= n > 0;
        n
    }

    /// Whether released fragments wait to be sent.
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
        for p in self.parked.iter_mut() {
            if let Some(v) = p.released.take() {
                p.id = None;
                send(v, &p.buf[p.start..p.end]);
            }
        }
    }

    /// Forgets the note of datagram `id`, if any: its first fragment (a
    /// reused ID) was dropped or answered here, so the later ones must not
    /// go where an older datagram's went.
    pub fn forget(&mut self, id: &Id) {
        let i = self.slot(id);
        if self.notes[i].is_some_and(|n| n.id == *id) {
            self.notes[i] = None;
        }
    }

    /// Makes the later fragment `id` in `pkt` (as read from its input) what
    /// its first fragment became, and returns where it goes; `None` if there
    /// is no note of its first.
    pub fn follow(
        &self,
        id: Id,
        pkt: &mut Packet<'_>,
        now: Instant,
    ) -> Option<Result<Verdict, DropReason>> {
        let note = self.notes[self.slot(&id)].filter(|n| n.id == id && now < n.until)?;
        Some(apply(note.way, id, pkt))
    }
}

/// What `pkt` became, going where `verdict` says: its headers and
/// addresses (`None` if dropped, or if it holds no IPv4 packet).
fn way_of(verdict: Verdict, pkt: &Packet<'_>) -> Option<Way> {
    let out = pkt.bytes();
    let eth_at = match verdict {
        Verdict::ToUnderlay(_) => vxlan::HEADER_LEN,
        Verdict::ToTap(_) | Verdict::ToHost => 0,
        Verdict::Drop(_) => return None,
    };
    let ip_at = eth_at + ethernet::HEADER_LEN;
    let ip = ipv4::Packet::new_checked(out.get(ip_at..).unwrap_or_default()).ok()?;
    let mut way = Way {
        verdict,
        vxlan: [0; vxlan::HEADER_LEN],
        ethernet: [0; ethernet::HEADER_LEN],
        src: ip.src(),
        dst: ip.dst(),
    };
    if eth_at > 0 {
        way.vxlan.copy_from_slice(&out[..vxlan::HEADER_LEN]);
        // The first fragment alone holds the L4 checksum.
        way.vxlan[1] &= !vxlan::FLAG_CSUM_PARTIAL;
    }
    way.ethernet.copy_from_slice(&out[eth_at..ip_at]);
    Some(way)
}

/// Gives a later fragment (as read from its input) the headers and
/// addresses of `way`; its IPv4 header was checked by [`part_of`].
fn apply(way: Way, id: Id, pkt: &mut Packet<'_>) -> Result<Verdict, DropReason> {
    let ip_at = pkt.start + id.input.ip_offset();
    let head = match way.verdict {
        Verdict::ToUnderlay(_) => vxlan::HEADER_LEN + ethernet::HEADER_LEN,
        _ => ethernet::HEADER_LEN,
    };
    if ip_at < head {
        return Err(DropReason::NoHeadroom);
    }
    let eth_at = ip_at - ethernet::HEADER_LEN;
    pkt.buf[eth_at..ip_at].copy_from_slice(&way.ethernet);
    let eth = ethernet::Frame::new_checked(&way.ethernet).map_err(|_| DropReason::Malformed)?;
    let (dst_mac, src_mac) = (eth.dst(), eth.src());
    // Addresses as NAT made them (a later fragment holds no L4 checksum).
    let frame = &mut pkt.buf[eth_at..pkt.end];
    nat::rewrite(frame, Side::Source, way.src, src_mac, false);
    nat::rewrite(frame, Side::Destination, way.dst, dst_mac, false);
    pkt.start = ip_at - head;
    if head > ethernet::HEADER_LEN {
        pkt.buf[pkt.start..eth_at].copy_from_slice(&way.vxlan);
    }
    pkt.csum_partial = false;
    Ok(way.verdict)
}
