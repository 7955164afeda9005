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
//! buffers ([`early`]), and the fragment is judged on its own too. If its
//! first comes meanwhile and becomes something else than the fragment did
//! on its own (it was dropped for want of ports, or went out unchanged where
//! the first was translated), the copy is made what the first became and
//! handed back to the caller ([`Fragments::released`]) to send after the
//! first. One that would go to the host stack on its own (egress, say) is
//! held instead of sent: a task's answer to a published port's client
//! looks like egress until its first has shown the way, and must not leave
//! untranslated.

use super::lb::nat::{self, Side};
use super::{DropReason, Input, Packet, Verdict};
use early::Early;
pub use early::{PARK_LIFETIME, PARK_SLOTS};

mod early;
use crate::wire::vxlan::{self, Vni};
use crate::wire::{ethernet, ipv4, Mac};
use std::hash::{BuildHasher, RandomState};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Notes kept (a power of two): ~400 KB.
const SLOTS: usize = 4096;
/// How long a first fragment's note is good for.
pub const LIFETIME: Duration = Duration::from_secs(1);

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

/// The notes of one dataplane thread.
pub struct Fragments {
    notes: Box<[Option<Note>]>,
    hasher: RandomState,
    /// Later fragments that came before their first.
    early: Early,
}

impl Default for Fragments {
    fn default() -> Self {
        Fragments {
            notes: vec![None; SLOTS].into_boxed_slice(),
            hasher: RandomState::new(),
            early: Early::default(),
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
    /// Its later fragments that came before it follow it (see
    /// [`Fragments::released`]); returns how many.
    pub fn note(&mut self, id: Id, verdict: Verdict, pkt: &Packet<'_>, now: Instant) -> usize {
        let Some(way) = way_of(verdict, pkt) else {
            self.forget(&id);
            return 0;
        };
        let i = self.slot(&id);
        self.notes[i] = Some(Note {
            id,
            way,
            until: now + LIFETIME,
        });
        self.early.release(&id, way, now)
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
        self.early.forget_port(port);
    }

    /// Keeps a copy of the later fragment `id` in `pkt` (as read, before
    /// anything is made of it), which has no note of its first, in case its
    /// first is still to come: the slot it is in, if it is kept.
    pub fn park(&mut self, id: Id, pkt: &Packet<'_>, now: Instant) -> Option<usize> {
        self.early.park(id, pkt, now)
    }

    /// Notes what the fragment kept in slot `i` became on its own (`pkt`
    /// going where `verdict` says): if its first becomes the same, it went
    /// right and is not sent again.
    pub fn went(&mut self, i: usize, verdict: Verdict, pkt: &Packet<'_>) {
        self.early.went(i, way_of(verdict, pkt));
    }

    /// Whether later fragments whose first has come wait to be sent.
    #[inline]
    pub fn has_released(&self) -> bool {
        self.early.has_released()
    }

    /// Hands each later fragment whose first has come to `send` (where it
    /// goes, its bytes), made what the first became.
    pub fn released(&mut self, send: impl FnMut(Verdict, &[u8])) {
        self.early.released(send);
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
