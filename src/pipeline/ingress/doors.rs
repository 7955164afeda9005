//! Step 2d, continued: the host's own traffic to containers. The host
//! reaches a container at its overlay address from its TUN address, its
//! door (169.254.X.Y, one per host: `agent::host::ingress_address`). A
//! container's packets to a door go to that door's host
//! (`Ingress::on_container`), whose stack gets them only if they answer a
//! flow that stack opened, noted here as it left: through a door, neither a
//! container nor a datagram from the wire can open anything on a host.

use super::Ingress;
use crate::pipeline::flow::flow_of;
use crate::pipeline::lb::conntrack::Key;
use crate::pipeline::lb::icmp;
use crate::wire::l4::IcmpHeader;
use crate::wire::{ethernet, ipv4};
use std::time::Instant;

/// The ICMP echo of `frame` (type `kind`) as a flow key, the host's side
/// (`door`) as the client and the echo identifier as its port.
fn echo_key(frame: &[u8], kind: u8, door_is_src: bool) -> Option<Key> {
    let ip = ipv4::Packet::new_checked(frame.get(ethernet::HEADER_LEN..)?).ok()?;
    let icmp = ip.payload();
    let is_echo = ip.protocol() == ipv4::protocol::ICMP
        && ip.is_first_fragment()
        && IcmpHeader::parse(icmp).is_ok_and(|h| h.kind == kind);
    if !is_echo {
        return None;
    }
    let (door, container) = if door_is_src {
        (ip.src(), ip.dst())
    } else {
        (ip.dst(), ip.src())
    };
    Some(Key {
        protocol: ipv4::protocol::ICMP,
        client: door,
        client_port: u16::from_be_bytes([icmp[4], icmp[5]]),
        vip: container,
        port: 0,
    })
}

impl Ingress {
    /// Notes a packet this host's stack sends from its door to a container
    /// (TCP, UDP or an echo request), so that the answers may come in.
    pub(super) fn note_host_flow(&mut self, now: Instant, frame: &[u8]) {
        let (key, flags) = match flow_of(frame) {
            Ok(Some(f)) => (f.key(), f.flags),
            _ => match echo_key(frame, IcmpHeader::ECHO_REQUEST, true) {
                Some(k) => (k, 0),
                None => return,
            },
        };
        if self.host_flows.touch(&key, flags, true, now).is_none() {
            // A full table refuses: the answers are then dropped, counted.
            let _ = self.host_flows.track(key, key.vip, key.port, flags, now);
        }
    }

    /// Whether `frame`, from a container to this host's door, answers a
    /// flow the host opened: a TCP or UDP reply, an echo reply, or an ICMP
    /// error about one of the host's packets.
    pub(super) fn answers_host(&mut self, now: Instant, frame: &[u8]) -> bool {
        if let Some(q) = icmp::quoted(frame) {
            return self.host_flows.get(&q.key(), now).is_some();
        }
        match flow_of(frame) {
            Ok(Some(f)) => self
                .host_flows
                .touch(&f.reversed().key(), f.flags, false, now)
                .is_some(),
            Ok(None) => echo_key(frame, IcmpHeader::ECHO_REPLY, false)
                .is_some_and(|k| self.host_flows.touch(&k, 0, false, now).is_some()),
            Err(_) => false,
        }
    }
}
