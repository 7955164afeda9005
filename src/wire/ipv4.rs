//! IPv4 headers (RFC 791): enough to validate what a container sends and to
//! find the transport header behind it.

use super::{be16, checksum, Malformed};
use std::net::Ipv4Addr;

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// IP protocol numbers the pipeline knows by name; others are carried as is.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// A checked view of an IPv4 packet: version 4, a header length of at least 20
/// bytes that fits, and a total length that fits in the buffer (trailing
/// Ethernet padding is allowed and ignored).
#[derive(Clone, Copy)]
pub struct Packet<'a> {
    bytes: &'a [u8],
    header_len: usize,
    total_len: usize,
}

impl<'a> Packet<'a> {
    #[inline]
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, Malformed> {
        if bytes.len() < MIN_HEADER_LEN {
            return Err(Malformed::Truncated);
        }
        if bytes[0] >> 4 != 4 {
            return Err(Malformed::BadField);
        }
        let header_len = usize::from(bytes[0] & 0x0f) * 4;
        let total_len = usize::from(be16(bytes, 2));
        if header_len < MIN_HEADER_LEN || total_len < header_len {
            return Err(Malformed::BadField);
        }
        if total_len > bytes.len() {
            return Err(Malformed::Truncated);
        }
        Ok(Packet {
            bytes,
            header_len,
            total_len,
        })
    }
    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    #[inline]
    pub fn total_len(&self) -> usize {
        self.total_len
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.bytes[8]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.bytes[9]
    }
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        let b = self.bytes;
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.bytes;
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    /// The identification field (which datagram a fragment belongs to).
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.bytes, 4)
    }
    /// Flags and fragment offset: 0x4000 DF, 0x2000 MF, offset in the low
    /// 13 bits (in 8-byte units).
    #[inline]
    pub fn fragment_field(&self) -> u16 {
        be16(self.bytes, 6)
    }
    /// True when the fragment offset is zero: the transport header is here.
    #[inline]
    pub fn is_first_fragment(&self) -> bool {
        be16(self.bytes, 6) & 0x1fff == 0
    }
    /// True when the header checksum verifies.
    pub fn checksum_ok(&self) -> bool {
        checksum(&self.bytes[..self.header_len]) == 0
    }
    /// The transport payload, without link padding.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..self.total_len]
    }
}

/// The fields of an IPv4 header without options, for emitting one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub ident: u16,
    pub dont_fragment: bool,
    pub payload_len: usize,
}

impl Repr {
    /// Writes a 20-byte header with its checksum into `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), Malformed> {
        let total = MIN_HEADER_LEN + self.payload_len;
        let total = u16::try_from(total).map_err(|_| Malformed::BadField)?;
        let h = buf.get_mut(..MIN_HEADER_LEN).ok_or(Malformed::Truncated)?;
        h[0] = 0x45;
        h[1] = 0;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&self.ident.to_be_bytes());
        h[6..8].copy_from_slice(&(if self.dont_fragment { 0x4000u16 } else { 0 }).to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.protocol;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        let c = checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ICMP echo 10.0.0.2 -> 10.0.0.3, header from a Linux ping (id 0x1c46, DF).
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x54, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 0, 0, 2, 10, 0,
        0, 3,
    ];

    fn packet() -> Vec<u8> {
        let mut p = HEADER.to_vec();
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.resize(0x54, 0xab);
        p
    }

    #[test]
    fn parse_and_emit_mirror() {
        let bytes = packet();
        let p = Packet::new_checked(&bytes).unwrap();
        assert!(p.checksum_ok());
        assert_eq!(p.protocol(), protocol::ICMP);
        assert_eq!(
            (p.src(), p.dst()),
            ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap())
        );
        assert_eq!(p.payload().len(), 0x54 - 20);
        let r = Repr {
            src: p.src(),
            dst: p.dst(),
            protocol: p.protocol(),
            ttl: p.ttl(),
            ident: 0x1c46,
            dont_fragment: true,
            payload_len: p.payload().len(),
        };
        let mut out = [0u8; 20];
        r.emit(&mut out).unwrap();
        assert_eq!(&out[..], &bytes[..20]);
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut b = packet();
        b[0] = 0x44; // header length 16
        assert_eq!(Packet::new_checked(&b).err(), Some(Malformed::BadField));
        let b = packet();
        assert_eq!(
            Packet::new_checked(&b[..0x53]).err(),
            Some(Malformed::Truncated)
        );
        let mut b = packet();
        b[0] = 0x65;
        assert_eq!(Packet::new_checked(&b).err(), Some(Malformed::BadField));
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut b = packet();
        b.extend_from_slice(&[0; 6]);
        assert_eq!(Packet::new_checked(&b).unwrap().payload().len(), 0x54 - 20);
    }
}
