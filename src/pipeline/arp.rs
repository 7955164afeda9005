//! Step 2a: ARP. Requests are answered from the tables, for the gateway and
//! every known endpoint; nothing is flooded. The reply is written over the
//! request, in the same buffer.

use super::DropReason;
use crate::tables::NetworkTable;
use crate::wire::{arp, ethernet};

/// Turns the ARP request in `frame` (a whole Ethernet frame) into the reply,
/// in place. Returns the new frame length, or why it will not be answered.
pub fn answer(net: &NetworkTable, frame: &mut [u8]) -> Result<usize, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    let req = arp::Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
    if req.operation() != arp::OP_REQUEST {
        return Err(DropReason::ArpIgnored);
    }
    let target_ip = req.target_ip();
    // A gratuitous ARP or a duplicate-address probe is not a question for us.
    if req.sender_ip() == target_ip {
        return Err(DropReason::ArpIgnored);
    }
    let target_mac = net.mac_of(target_ip).ok_or(DropReason::ArpIgnored)?;
    // A duplicate-address probe (RFC 5227: sender 0.0.0.0) for the asker's
    // own address: an answer with its own MAC would read as a conflict.
    if target_mac == req.sender_mac() {
        return Err(DropReason::ArpIgnored);
    }
    let reply = arp::Repr {
        operation: arp::OP_REPLY,
        sender_mac: target_mac,
        sender_ip: target_ip,
        target_mac: req.sender_mac(),
        target_ip: req.sender_ip(),
    };
    let asker = eth.src();
    let len = ethernet::HEADER_LEN + arp::PACKET_LEN;
    ethernet::emit(frame, asker, target_mac, ethernet::ethertype::ARP)
        .map_err(|_| DropReason::Malformed)?;
    reply
        .emit(&mut frame[ethernet::HEADER_LEN..])
        .map_err(|_| DropReason::Malformed)?;
    Ok(len)
}
