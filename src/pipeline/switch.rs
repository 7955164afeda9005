//! Step 2b: switching. A unicast frame goes where the destination MAC lives in
//! its network: another local TAP, or a remote VTEP. Group addresses are never
//! flooded (ARP, the only broadcast that matters, is answered before this).

use super::DropReason;
use crate::tables::{Location, NetworkTable};
use crate::wire::{ethernet, ipv4, Mac};

/// Where a frame from a container goes.
pub fn from_container(net: &NetworkTable, frame: &[u8]) -> Result<Location, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    check_ipv4(&eth)?;
    let dst = eth.dst();
    if dst.is_group() {
        return Err(DropReason::Flood);
    }
    if dst == net.gateway_mac {
        return Err(DropReason::NoRoute);
    }
    net.by_mac
        .get(&dst)
        .copied()
        .ok_or(DropReason::UnknownDestination)
}

/// Which local port a frame from the underlay goes to.
pub fn from_underlay(net: &NetworkTable, frame: &[u8]) -> Result<u32, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    check_ipv4(&eth)?;
    let dst: Mac = eth.dst();
    if dst.is_group() {
        return Err(DropReason::Flood);
    }
    match net.by_mac.get(&dst) {
        Some(Location::Local(port)) => Ok(*port),
        // Never relay between two VTEPs: the sender's tables are stale.
        Some(Location::Remote(_)) => Err(DropReason::Hairpin),
        None => Err(DropReason::UnknownDestination),
    }
}

/// Only IPv4 is carried for now; its header must be sound.
fn check_ipv4(eth: &ethernet::Frame<'_>) -> Result<(), DropReason> {
    match eth.ethertype() {
        ethernet::ethertype::IPV4 => ipv4::Packet::new_checked(eth.payload())
            .map(|_| ())
            .map_err(|_| DropReason::Malformed),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}
