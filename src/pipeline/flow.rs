//! The 5-tuple of a frame, as the balancers (VIPs and ingress) and
//! connection tracking read it, and the table keys it makes.

use super::lb::conntrack::{Key, ReplyKey};
use super::lb::FlowKey;
use super::DropReason;
use crate::wire::{ethernet, ipv4, l4};
use std::net::Ipv4Addr;

/// The parts of an IPv4 TCP or UDP packet a balancer looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ports: l4::Ports,
    /// TCP flags (0 for UDP).
    pub flags: u8,
}

impl Flow {
    /// This packet as a client sent it: the connection-tracking key.
    pub fn key(&self) -> Key {
        Key {
            protocol: self.protocol,
            client: self.src,
            client_port: self.ports.src,
            vip: self.dst,
            port: self.ports.dst,
        }
    }

    /// This packet as a task's reply to its client.
    pub fn reply_key(&self) -> ReplyKey {
        ReplyKey {
            protocol: self.protocol,
            backend: self.src,
            port: self.ports.src,
            client: self.dst,
            client_port: self.ports.dst,
        }
    }

    /// The packet going the other way.
    pub fn reversed(&self) -> Flow {
        Flow {
            src: self.dst,
            dst: self.src,
            ports: l4::Ports {
                src: self.ports.dst,
                dst: self.ports.src,
            },
            ..*self
        }
    }

    /// What a scheduler sees of a new flow.
    pub fn scheduler_key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            src_port: self.ports.src,
            dst_port: self.ports.dst,
            protocol: self.protocol,
        }
    }
}

/// Reads the flow of the IPv4 packet in an Ethernet frame; `None` for other
/// protocols and for fragments after the first.
pub fn flow_of(frame: &[u8]) -> Result<Option<Flow>, DropReason> {
    flow_of_ip(frame.get(ethernet::HEADER_LEN..).unwrap_or_default())
}

/// Reads the flow of an IPv4 packet (no Ethernet header); as [`flow_of`].
pub fn flow_of_ip(packet: &[u8]) -> Result<Option<Flow>, DropReason> {
    let ip = ipv4::Packet::new_checked(packet).map_err(|_| DropReason::Malformed)?;
    if !ip.is_first_fragment() {
        return Ok(None);
    }
    let (ports, flags) = match ip.protocol() {
        ipv4::protocol::TCP => {
            let t = l4::TcpHeader::parse(ip.payload()).map_err(|_| DropReason::Malformed)?;
            (t.ports, t.flags)
        }
        ipv4::protocol::UDP => (
            l4::Ports::parse(ip.payload()).map_err(|_| DropReason::Malformed)?,
            0,
        ),
        _ => return Ok(None),
    };
    Ok(Some(Flow {
        protocol: ip.protocol(),
        src: ip.src(),
        dst: ip.dst(),
        ports,
        flags,
    }))
}
