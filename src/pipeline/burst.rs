//! Step 4, for the rest of a burst: a TCP stream from another host arrives
//! as runs of datagrams (one GRO read holds up to 45 of one flow) that all
//! go the same way: same VTEP, same VNI, same inner MACs. The table lookups
//! made for the first (peer, network, destination MAC) are remembered, and
//! the next datagram from the same outer source with the same VXLAN and
//! inner Ethernet headers reuses them. What depends on the packet itself is
//! still done for each one: its IPv4 header is checked, and connection
//! tracking and return paths see it.
//!
//! The memo holds only what the tables decided, so it is forgotten when the
//! tables change (`Pipeline::set_tables`). Only a frame switched to a
//! container makes one: ARP, frames to the gateway and drops never do.

use super::{encap, DropReason, Packet};
use crate::tables::PortId;
use crate::wire::vxlan::{self, Vni};
use crate::wire::{ethernet, ipv4};
use std::net::SocketAddrV4;

/// The bytes a memo is keyed on: the VXLAN header (flags and VNI) and the
/// inner Ethernet header (destination, source, EtherType).
const KEY_LEN: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN;

/// Where the tables send a datagram from the underlay that goes to a
/// container.
#[derive(Debug, Clone, Copy)]
pub(super) struct Way {
    pub port: PortId,
    pub vni: Vni,
    /// Sent by another host's ingress (inner source MAC is the gateway's,
    /// from an agent): the flow's return path is noted.
    pub routed: bool,
    /// Sent by an agent, which may leave the inner checksum partial (the
    /// VXLAN flag); from a plain VTEP the flag means nothing.
    pub agent: bool,
}

/// The way of the last datagram switched to a container, and what it was
/// keyed on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Memo {
    src: SocketAddrV4,
    key: [u8; KEY_LEN],
    pub way: Way,
}

impl Memo {
    /// A memo for `datagram` (VXLAN header first) from `src`; `None` if it
    /// is too short to key one.
    pub(super) fn new(src: SocketAddrV4, datagram: &[u8], way: Way) -> Option<Memo> {
        let key = datagram.get(..KEY_LEN)?.try_into().ok()?;
        Some(Memo { src, key, way })
    }

    /// True if `datagram` from `src` would meet the same table entries,
    /// and is not an IPv4 fragment (those go by their first, see
    /// `fragments`).
    #[inline]
    pub(super) fn matches(&self, src: SocketAddrV4, datagram: &[u8]) -> bool {
        let fragment = datagram
            .get(KEY_LEN + 6..KEY_LEN + 8)
            .is_some_and(|f| (f[0] & 0x3f) | f[1] != 0);
        self.src == src && datagram.get(..KEY_LEN) == Some(&self.key[..]) && !fragment
    }
}

impl Way {
    /// Strips the VXLAN header of a datagram that [`Memo::matches`], and
    /// checks the inner IPv4 header as switching would.
    #[inline]
    pub(super) fn decap(&self, pkt: &mut Packet<'_>) -> Result<(), DropReason> {
        encap::decap(pkt, self.agent)?;
        let ip = pkt.bytes().get(ethernet::HEADER_LEN..).unwrap_or_default();
        ipv4::Packet::new_checked(ip).map_err(|_| DropReason::Malformed)?;
        Ok(())
    }
}
