//! Ethernet II frames (IEEE 802.3 with an ethertype), as containers' TAPs and
//! VXLAN payloads carry them.

use super::{be16, Malformed};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Length of an Ethernet II header: destination, source, ethertype.
pub const HEADER_LEN: usize = 14;

/// Ethertypes the pipeline knows by name; any other value is kept as is.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
}

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

/// Hashed as one word (the derived hash writes a length and then six bytes).
impl std::hash::Hash for Mac {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, 0, 0]));
    }
}

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);

    /// Group (multicast or broadcast) addresses have the I/G bit set.
    #[inline]
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The MAC mesh gives an interface with address `ip`: a locally administered
    /// unicast address that embeds the IP, as Docker does (02:42:a.b.c.d), so a
    /// MAC is stable and derivable from the address on every host.
    pub fn for_ip(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    /// The MAC of a network's gateway: the same on every host, and never the MAC
    /// of a container because no container gets the gateway's address.
    pub fn for_gateway(ip: Ipv4Addr) -> Mac {
        Mac::for_ip(ip)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error for a MAC address string that is not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address '{0}': expected six hex octets like 02:42:0a:00:00:02")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(|| BadMac(s.to_string()))?;
            if p.len() != 2 {
                return Err(BadMac(s.to_string()));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.to_string()));
        }
        Ok(Mac(out))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A checked view of an Ethernet II frame.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Accepts any buffer of at least [`HEADER_LEN`] bytes.
    #[inline]
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, Malformed> {
        if bytes.len() < HEADER_LEN {
            return Err(Malformed::Truncated);
        }
        Ok(Frame { bytes })
    }
    #[inline]
    pub fn dst(&self) -> Mac {
        Mac(read_mac(self.bytes, 0))
    }
    #[inline]
    pub fn src(&self) -> Mac {
        Mac(read_mac(self.bytes, 6))
    }
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.bytes, 12)
    }
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }
}

fn read_mac(b: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

/// Writes an Ethernet header into the first [`HEADER_LEN`] bytes of `buf`.
/// Returns `Truncated` if `buf` is shorter.
pub fn emit(buf: &mut [u8], dst: Mac, src: Mac, ethertype: u16) -> Result<(), Malformed> {
    let h = buf.get_mut(..HEADER_LEN).ok_or(Malformed::Truncated)?;
    h[0..6].copy_from_slice(&dst.0);
    h[6..12].copy_from_slice(&src.0);
    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 16] = [
        0x02, 0x42, 0x0a, 0x00, 0x00, 0x03, // dst
        0x02, 0x42, 0x0a, 0x00, 0x00, 0x02, // src
        0x08, 0x00, // IPv4
        0x45, 0x00,
    ];

    #[test]
    fn parse_and_emit_mirror() {
        let f = Frame::new_checked(&FRAME).unwrap();
        assert_eq!(f.dst(), Mac([2, 0x42, 10, 0, 0, 3]));
        assert_eq!(f.src(), Mac::for_ip(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.payload(), &[0x45, 0x00]);
        let mut out = [0u8; 16];
        out[14..].copy_from_slice(&[0x45, 0]);
        emit(&mut out, f.dst(), f.src(), ethertype::IPV4).unwrap();
        assert_eq!(out, FRAME);
    }

    #[test]
    fn short_buffers_are_refused() {
        assert_eq!(
            Frame::new_checked(&FRAME[..13]).err(),
            Some(Malformed::Truncated)
        );
        assert!(emit(&mut [0u8; 13], Mac::ZERO, Mac::ZERO, 0).is_err());
    }

    #[test]
    fn mac_text_round_trip_and_errors() {
        let m: Mac = "02:42:0A:00:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:00:00:02");
        for bad in [
            "",
            "02:42",
            "02:42:0a:00:00:02:03",
            "zz:42:0a:00:00:02",
            "2:42:a:0:0:2",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert!(Mac::BROADCAST.is_group());
        assert!(!m.is_group());
    }
}
