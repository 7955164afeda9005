//! Zero-copy views of each header on the packet path.
//!
//! Each view is built with a checked constructor (`new_checked`) that verifies
//! the buffer is long enough and the fixed fields make sense; after that no
//! accessor can panic. Emitters write into a caller-owned buffer in place, so
//! the pipeline never allocates per packet. Parse and emit are mirror images
//! and are tested against the same byte arrays.

pub mod arp;
pub mod ethernet;
pub mod ipv4;
pub mod l4;
pub mod virtio;
pub mod vxlan;

pub use ethernet::Mac;

/// Why a header view refused a buffer. Every variant is a drop reason, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("buffer shorter than the header")]
    Truncated,
    #[error("a fixed field has a value this header never carries")]
    BadField,
    #[error("a protocol we do not handle")]
    Unsupported,
}

/// Internet checksum (RFC 1071) over `data`, added to `sum`, folded to 16
/// bits, not yet complemented.
///
/// Big-endian 32-bit words are summed into a 64-bit accumulator and folded at
/// the end: since 2^16 = 1 in one's-complement arithmetic this equals the sum
/// of 16-bit words, at a quarter of the additions (it runs over every byte of
/// a 64 KB super-frame, so it matters).
pub fn checksum_fold(sum: u32, data: &[u8]) -> u32 {
    let mut acc = u64::from(sum);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = words.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// The one's-complement checksum of `data`, ready to store in a header.
pub fn checksum(data: &[u8]) -> u16 {
    !(checksum_fold(0, data) as u16)
}

/// Reads a big-endian u16 at `at`; callers have checked the length (0 if
/// not: no panic path, so it inlines into hot loops).
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_be_bytes)
}

/// Reads a big-endian u32 at `at`; as [`be16`].
#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3 example: 0001 f203 f4f5 f6f7 -> sum 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum_fold(0, &data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    /// The 16-bit-at-a-time sum of RFC 1071, as the model.
    fn naive(sum: u32, data: &[u8]) -> u32 {
        let mut s = sum;
        for c in data.chunks(2) {
            let w = u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
            s += w;
            s = (s & 0xffff) + (s >> 16);
        }
        s
    }

    proptest::proptest! {
        #[test]
        fn checksum_matches_the_naive_model(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), seed in 0u32..0xffff) {
            proptest::prop_assert_eq!(checksum_fold(seed, &data), naive(seed, &data));
        }
    }

    #[test]
    fn checksum_of_odd_length_pads_with_zero() {
        assert_eq!(checksum_fold(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
