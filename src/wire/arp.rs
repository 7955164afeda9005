//! ARP for IPv4 over Ethernet (RFC 826). The pipeline answers requests from its
//! tables and never floods them.

use super::ethernet::{self, Mac};
use super::{be16, Malformed};
use std::net::Ipv4Addr;

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP operation codes.
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

/// A checked view of an Ethernet/IPv4 ARP packet (the Ethernet payload).
#[derive(Clone, Copy)]
pub struct Packet<'a> {
    bytes: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Accepts only hardware type Ethernet (1), protocol IPv4, lengths 6 and 4.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, Malformed> {
        if bytes.len() < PACKET_LEN {
            return Err(Malformed::Truncated);
        }
        if be16(bytes, 0) != 1 || be16(bytes, 2) != ethernet::ethertype::IPV4 {
            return Err(Malformed::Unsupported);
        }
        if bytes[4] != 6 || bytes[5] != 4 {
            return Err(Malformed::BadField);
        }
        Ok(Packet { bytes })
    }
    pub fn operation(&self) -> u16 {
        be16(self.bytes, 6)
    }
    pub fn sender_mac(&self) -> Mac {
        Mac(mac_at(self.bytes, 8))
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip_at(self.bytes, 14)
    }
    pub fn target_mac(&self) -> Mac {
        Mac(mac_at(self.bytes, 18))
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        ip_at(self.bytes, 24)
    }
}

fn mac_at(b: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// The fields of an ARP packet, for emitting one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub operation: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl Repr {
    /// Writes the packet into the first [`PACKET_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Malformed> {
        let b = buf.get_mut(..PACKET_LEN).ok_or(Malformed::Truncated)?;
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&ethernet::ethertype::IPV4.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&self.operation.to_be_bytes());
        b[8..14].copy_from_slice(&self.sender_mac.0);
        b[14..18].copy_from_slice(&self.sender_ip.octets());
        b[18..24].copy_from_slice(&self.target_mac.0);
        b[24..28].copy_from_slice(&self.target_ip.octets());
        Ok(())
    }

    pub fn parse(p: &Packet<'_>) -> Repr {
        Repr {
            operation: p.operation(),
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A request from 10.0.0.2 (02:42:0a:00:00:02) for 10.0.0.3, as Linux sends it.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // htype ptype hlen plen op
        0x02, 0x42, 0x0a, 0x00, 0x00, 0x02, 10, 0, 0, 2, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 3, // target
    ];

    #[test]
    fn parse_and_emit_mirror() {
        let p = Packet::new_checked(&REQUEST).unwrap();
        let r = Repr::parse(&p);
        assert_eq!(r.operation, OP_REQUEST);
        assert_eq!(r.sender_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(r.target_mac, Mac::ZERO);
        let mut out = [0u8; 28];
        r.emit(&mut out).unwrap();
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn other_hardware_or_lengths_are_refused() {
        let mut b = REQUEST;
        b[1] = 6; // IEEE 802 hardware type
        assert_eq!(Packet::new_checked(&b).err(), Some(Malformed::Unsupported));
        let mut b = REQUEST;
        b[5] = 16;
        assert_eq!(Packet::new_checked(&b).err(), Some(Malformed::BadField));
        assert_eq!(
            Packet::new_checked(&REQUEST[..27]).err(),
            Some(Malformed::Truncated)
        );
    }
}
