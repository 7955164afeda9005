//! Step 0b: IPv4 fragments. Only the first fragment of a datagram carries
//! the ports that connection tracking, VIPs, published ports and return
//! paths go by; the others carry just the IP header. So the later fragments
//! follow the first: what the packet core made of the first fragment (its
//! addresses after NAT, its Ethernet and VXLAN headers, where it went) is
//! noted under the datagram's identity, and each later fragment of the same
//! datagram, from the same input, is made the same and goes the same way.
//! The receiver reassembles them, as it would have without us.
//!
//! The identity: where the fragment came from (the TAP and its source MAC,
//! the VTEP and VNI, or the host) and the IPv4 source, destination,
//! protocol and ID. The table is direct-mapped, allocated once: fragments
//! of one datagram follow each other within microseconds, so a note lives
//! [`LIFETIME`] and a newer datagram may take its place. A later fragment
//! with no note (its first came after it, was dropped, or was answered by
//! the pipeline itself) is judged on its own, as before there were notes:
//! plain switching needs no ports and still works; paths that need them
//! drop it. A TCP fragment that would overlap the first's TCP header
//! (offset below 20 bytes, RFC 1858) is dropped as malformed.

use super::lb::nat::replace32;
use super::{DropReason, Input, Packet, Verdict};
use crate::wire::{ethernet, ipv4, vxlan};
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
    /// 0: a TAP, 1: the underlay, 2: the host.
    input: u8,
    /// The port, the VTEP's address, or 0.
    from: u32,
    /// The VXLAN header's VNI field (underlay), else 0.
    vni: u32,
    /// The frame's source MAC (TAP, underlay), else zero.
    mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
}

/// What the first fragment became.
#[derive(Debug, Clone, Copy)]
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
}

impl Default for Fragments {
    fn default() -> Self {
        Fragments {
            notes: vec![None; SLOTS].into_boxed_slice(),
            hasher: RandomState::new(),
        }
    }
}

/// Where the IPv4 header of a frame from `input` starts, relative to the
/// frame, if it is IPv4 at all.
fn ip_offset(input: Input, frame: &[u8]) -> Option<usize> {
    let eth_at = match input {
        Input::Host => return Some(0),
        Input::Tap(_) => 0,
        Input::Underlay(_) => vxlan::HEADER_LEN,
    };
    let ethertype = frame.get(eth_at + 12..eth_at + 14)?;
    (ethertype == ethernet::ethertype::IPV4.to_be_bytes()).then_some(eth_at + ethernet::HEADER_LEN)
}

/// Which fragment `frame`, as read from `input`, is.
pub fn part_of(input: Input, frame: &[u8]) -> Part {
    let Some(at) = ip_offset(input, frame) else {
        return Part::Whole;
    };
    // Most packets: neither more fragments nor an offset.
    match frame.get(at + 6..at + 8) {
        Some(&[flags, offset]) if (flags & 0x3f) | offset != 0 => {}
        _ => return Part::Whole,
    }
    let Ok(ip) = ipv4::Packet::new_checked(&frame[at..]) else {
        return Part::Whole;
    };
    let field = ip.fragment_field();
    let (more, offset) = (field & 0x2000 != 0, field & 0x1fff);
    if !more && offset == 0 {
        return Part::Whole;
    }
    let (tag, from, vni, mac) = match input {
        Input::Tap(port) => (0, port, 0, mac_at(frame, 6)),
        // Without the I flag the VXLAN header is refused (by the normal path).
        Input::Underlay(_) if frame[0] & vxlan::FLAG_I == 0 => return Part::Whole,
        Input::Underlay(src) => {
            let vni = u32::from_be_bytes([0, frame[4], frame[5], frame[6]]);
            (
                1,
                u32::from(*src.ip()),
                vni,
                mac_at(frame, vxlan::HEADER_LEN + 6),
            )
        }
        Input::Host => (2, 0, 0, [0; 6]),
    };
    let id = Id {
        input: tag,
        from,
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

fn mac_at(frame: &[u8], at: usize) -> [u8; 6] {
    frame
        .get(at..at + 6)
        .and_then(|m| m.try_into().ok())
        .unwrap_or_default()
}

impl Fragments {
    fn slot(&self, id: &Id) -> usize {
        self.hasher.hash_one(id) as usize & (SLOTS - 1)
    }

    /// Notes what the first fragment `id` became: `pkt` as the pipeline
    /// left it, going where `verdict` says.
    pub fn note(&mut self, id: Id, verdict: Verdict, pkt: &Packet<'_>, now: Instant) {
        let out = pkt.bytes();
        let eth_at = match verdict {
            Verdict::ToUnderlay(_) => vxlan::HEADER_LEN,
            Verdict::ToTap(_) | Verdict::ToHost => 0,
            Verdict::Drop(_) => return,
        };
        // A frame the pipeline made itself (a refusal, an echo reply) is no
        // way for the rest of the datagram.
        if pkt.plain {
            return;
        }
        let ip_at = eth_at + ethernet::HEADER_LEN;
        let Ok(ip) = ipv4::Packet::new_checked(out.get(ip_at..).unwrap_or_default()) else {
            return;
        };
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
        let i = self.slot(&id);
        self.notes[i] = Some(Note {
            id,
            way,
            until: now + LIFETIME,
        });
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

/// Gives a later fragment the headers and addresses of `way`.
fn apply(way: Way, id: Id, pkt: &mut Packet<'_>) -> Result<Verdict, DropReason> {
    let ip_at = pkt.start
        + match id.input {
            0 => ethernet::HEADER_LEN,
            1 => vxlan::HEADER_LEN + ethernet::HEADER_LEN,
            _ => 0,
        };
    let head = match way.verdict {
        Verdict::ToUnderlay(_) => vxlan::HEADER_LEN + ethernet::HEADER_LEN,
        _ => ethernet::HEADER_LEN,
    };
    if ip_at < head {
        return Err(DropReason::NoHeadroom);
    }
    let header_len = {
        let ip = ipv4::Packet::new_checked(pkt.buf.get(ip_at..pkt.end).unwrap_or_default())
            .map_err(|_| DropReason::Malformed)?;
        ip.header_len()
    };
    let h = &mut pkt.buf[ip_at..ip_at + header_len];
    let (src, dst) = (id.src, id.dst);
    // The checksum is updated, not recomputed: a damaged header stays so.
    let c = u16::from_be_bytes([h[10], h[11]]);
    let c = replace32(replace32(c, src, way.src, false), dst, way.dst, false);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h[12..16].copy_from_slice(&way.src.octets());
    h[16..20].copy_from_slice(&way.dst.octets());
    let eth_at = ip_at - ethernet::HEADER_LEN;
    pkt.buf[eth_at..ip_at].copy_from_slice(&way.ethernet);
    pkt.start = ip_at - head;
    if head > ethernet::HEADER_LEN {
        pkt.buf[pkt.start..eth_at].copy_from_slice(&way.vxlan);
    }
    pkt.csum_partial = false;
    Ok(way.verdict)
}
