//! The VXLAN header (RFC 7348 section 5): 8 bytes in front of the inner
//! Ethernet frame, carried in UDP to port 4789.
//!
//! ```text
//!  0               1               2               3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use super::Malformed;
use std::fmt;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The IANA-assigned VXLAN port.
pub const PORT: u16 = 4789;
/// The I flag: the VNI is valid. Receivers must drop headers without it.
pub const FLAG_I: u8 = 0x08;
/// mesh's own flag, a reserved bit of byte 1 (no VXLAN extension uses it;
/// RFC 7348 receivers ignore it): the inner TCP or UDP checksum holds only the
/// pseudo-header sum, as the sending kernel left it (CHECKSUM_PARTIAL). Only
/// ever sent to other mesh agents, whose outer UDP checksum covers the frame.
pub const FLAG_CSUM_PARTIAL: u8 = 0x01;

/// Marks a VXLAN header as carrying a partial inner checksum.
pub fn set_csum_partial(header: &mut [u8]) {
    if let Some(b) = header.get_mut(1) {
        *b |= FLAG_CSUM_PARTIAL;
    }
}

/// True if the VXLAN header says the inner checksum is partial.
pub fn is_csum_partial(header: &[u8]) -> bool {
    header.get(1).is_some_and(|b| b & FLAG_CSUM_PARTIAL != 0)
}

/// A 24-bit VXLAN network identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Vni(u32);

impl Vni {
    pub const MAX: u32 = 0x00ff_ffff;

    /// Returns `None` for values that do not fit in 24 bits.
    pub const fn new(v: u32) -> Option<Vni> {
        if v > Vni::MAX {
            None
        } else {
            Some(Vni(v))
        }
    }
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vni({})", self.0)
    }
}

/// Reads the VNI of a VXLAN header; refuses a header without the I flag.
/// Reserved bits are ignored on receipt, as RFC 7348 asks.
pub fn parse(bytes: &[u8]) -> Result<Vni, Malformed> {
    let h = bytes.get(..HEADER_LEN).ok_or(Malformed::Truncated)?;
    if h[0] & FLAG_I == 0 {
        return Err(Malformed::BadField);
    }
    Ok(Vni(u32::from_be_bytes([0, h[4], h[5], h[6]])))
}

/// Writes a VXLAN header for `vni` into the first [`HEADER_LEN`] bytes of `buf`.
pub fn emit(buf: &mut [u8], vni: Vni) -> Result<(), Malformed> {
    let h = buf.get_mut(..HEADER_LEN).ok_or(Malformed::Truncated)?;
    let v = vni.0.to_be_bytes();
    h[..4].copy_from_slice(&[FLAG_I, 0, 0, 0]);
    h[4..8].copy_from_slice(&[v[1], v[2], v[3], 0]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // VNI 4096 as Linux's vxlan driver writes it.
    const HEADER: [u8; 8] = [0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0x00];

    #[test]
    fn parse_and_emit_mirror() {
        assert_eq!(parse(&HEADER), Ok(Vni::new(4096).unwrap()));
        let mut out = [0xffu8; 8];
        emit(&mut out, Vni::new(4096).unwrap()).unwrap();
        assert_eq!(out, HEADER);
    }

    #[test]
    fn header_without_i_flag_is_dropped() {
        let mut h = HEADER;
        h[0] = 0;
        assert_eq!(parse(&h), Err(Malformed::BadField));
        assert_eq!(parse(&HEADER[..7]), Err(Malformed::Truncated));
    }

    #[test]
    fn vni_is_24_bits() {
        assert!(Vni::new(0x00ff_ffff).is_some());
        assert!(Vni::new(0x0100_0000).is_none());
        let mut out = [0u8; 8];
        emit(&mut out, Vni::new(0x00ab_cdef).unwrap()).unwrap();
        assert_eq!(parse(&out).unwrap().get(), 0x00ab_cdef);
    }
}
