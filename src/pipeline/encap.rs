//! Steps 3 and 4: VXLAN encapsulation and decapsulation, in place.
//!
//! The frame sits in its buffer after some headroom; encapsulation writes the
//! 8-byte VXLAN header into the headroom just in front of it (the kernel adds
//! the outer UDP, IP and Ethernet headers), so the payload is never copied.

use super::{DropReason, Packet};
use crate::wire::vxlan::{self, Vni};

/// Prepends the VXLAN header for `vni`.
#[inline]
pub fn encap(pkt: &mut Packet<'_>, vni: Vni) -> Result<(), DropReason> {
    if pkt.start < vxlan::HEADER_LEN {
        return Err(DropReason::NoHeadroom);
    }
    pkt.start -= vxlan::HEADER_LEN;
    vxlan::emit(&mut pkt.buf[pkt.start..], vni).map_err(|_| DropReason::Malformed)
}

/// Reads and strips the VXLAN header, noting whether it says the inner
/// checksum is partial; returns the VNI. Only another agent (`from_agent`)
/// leaves the checksum partial: from a plain VTEP the flag bit means
/// nothing, and a frame it damaged must still fail the container's check.
#[inline]
pub fn decap(pkt: &mut Packet<'_>, from_agent: bool) -> Result<Vni, DropReason> {
    let vni = vxlan::parse(pkt.bytes()).map_err(|_| DropReason::Malformed)?;
    pkt.csum_partial = from_agent && vxlan::is_csum_partial(pkt.bytes());
    pkt.start += vxlan::HEADER_LEN;
    Ok(vni)
}
