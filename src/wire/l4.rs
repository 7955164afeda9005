//! Transport headers behind IPv4: the ports of TCP and UDP and the type of an
//! ICMP message. The load balancer (a later stage) keys flows on these.

use super::{be16, Malformed};

/// Source and destination ports of a TCP or UDP header (the first four bytes
/// of both), checked to be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

impl Ports {
    #[inline]
    pub fn parse(transport: &[u8]) -> Result<Ports, Malformed> {
        if transport.len() < 4 {
            return Err(Malformed::Truncated);
        }
        Ok(Ports {
            src: be16(transport, 0),
            dst: be16(transport, 2),
        })
    }
}

/// TCP header length and flags, checked against the segment's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    pub ports: Ports,
    pub header_len: usize,
    pub flags: u8,
}

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

impl TcpHeader {
    #[inline]
    pub fn parse(segment: &[u8]) -> Result<TcpHeader, Malformed> {
        if segment.len() < 20 {
            return Err(Malformed::Truncated);
        }
        let header_len = usize::from(segment[12] >> 4) * 4;
        if header_len < 20 {
            return Err(Malformed::BadField);
        }
        if header_len > segment.len() {
            return Err(Malformed::Truncated);
        }
        Ok(TcpHeader {
            ports: Ports::parse(segment)?,
            header_len,
            flags: segment[13],
        })
    }
}

/// ICMP type and code (RFC 792).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpHeader {
    pub kind: u8,
    pub code: u8,
}

impl IcmpHeader {
    pub const ECHO_REPLY: u8 = 0;
    pub const ECHO_REQUEST: u8 = 8;

    #[inline]
    pub fn parse(message: &[u8]) -> Result<IcmpHeader, Malformed> {
        if message.len() < 8 {
            return Err(Malformed::Truncated);
        }
        Ok(IcmpHeader {
            kind: message[0],
            code: message[1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A SYN from port 40000 to 80 with a 40-byte header (MSS, SACK, TS, WS).
    const SYN: [u8; 40] = [
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xfa, 0xf0, 0, 0, 0, 0, 2, 4,
        5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ];

    #[test]
    fn tcp_header_fields() {
        let h = TcpHeader::parse(&SYN).unwrap();
        assert_eq!(
            h.ports,
            Ports {
                src: 40000,
                dst: 80
            }
        );
        assert_eq!(h.header_len, 40);
        assert_eq!(h.flags, tcp_flags::SYN);
        assert_eq!(
            TcpHeader::parse(&SYN[..39]).err(),
            Some(Malformed::Truncated)
        );
        let mut b = SYN;
        b[12] = 0x40;
        assert_eq!(TcpHeader::parse(&b).err(), Some(Malformed::BadField));
    }

    #[test]
    fn icmp_and_udp() {
        assert_eq!(
            IcmpHeader::parse(&[8, 0, 0, 0, 0, 1, 0, 1]).unwrap().kind,
            IcmpHeader::ECHO_REQUEST
        );
        assert!(IcmpHeader::parse(&[8, 0]).is_err());
        assert_eq!(
            Ports::parse(&[0, 53, 0x9c, 0x40]).unwrap(),
            Ports {
                src: 53,
                dst: 40000
            }
        );
    }
}
