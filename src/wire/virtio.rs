//! The virtio-net header (`struct virtio_net_hdr`, 10 bytes) that a TAP opened
//! with `IFF_VNET_HDR` puts in front of every frame. It is how the kernel hands
//! us a TCP super-frame of up to 64 KB to segment (TSO), or a frame whose
//! checksum is still to be computed, and how we hand it a coalesced one (GRO).
//! Fields are in the host's byte order (little-endian here), as tun uses them
//! unless told otherwise.

use super::Malformed;

/// Length of the header.
pub const HEADER_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` on is still to be computed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksums were verified.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

/// A virtio-net header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    pub fn parse(b: &[u8]) -> Result<VnetHeader, Malformed> {
        let b = b.get(..HEADER_LEN).ok_or(Malformed::Truncated)?;
        let u = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Ok(VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// The GSO kind without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A TSO super-frame header as Linux writes it: TCPv4, 66 header bytes,
    // MSS 1398, checksum from byte 34 with the field 16 bytes in.
    const TSO: [u8; 10] = [0x01, 0x01, 66, 0, 0x76, 0x05, 34, 0, 16, 0];

    #[test]
    fn parse_and_emit_mirror() {
        let h = VnetHeader::parse(&TSO).unwrap();
        assert_eq!(
            h,
            VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1398,
                csum_start: 34,
                csum_offset: 16
            }
        );
        assert_eq!(h.to_bytes(), TSO);
        assert!(VnetHeader::parse(&TSO[..9]).is_err());
        assert_eq!(
            VnetHeader {
                gso_type: GSO_TCPV4 | GSO_ECN,
                ..h
            }
            .gso_kind(),
            GSO_TCPV4
        );
    }
}
