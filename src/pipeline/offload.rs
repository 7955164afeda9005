//! Step 3b: segmentation offload. A container's TCP stack hands its TAP a
//! super-frame of up to 64 KB (TSO, announced by the virtio-net header); one
//! that goes to another host is cut here into MSS-sized TCP segments, each
//! behind its own copy of the VXLAN, Ethernet, IPv4 and TCP headers, laid out
//! back to back so that one `sendmsg` with `UDP_SEGMENT` sends them all.
//! Frames whose checksum the kernel left to us (`NEEDS_CSUM`) are completed.
//!
//! Everything is pure: bytes in, bytes out, checked against hand-built frames.

use super::DropReason;
use crate::wire::{checksum_fold, ethernet, ipv4, l4, vxlan};

/// Finishes a checksum the kernel left partial: the field at `start + offset`
/// holds the pseudo-header sum; the checksum covers `frame[start..]`.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), DropReason> {
    let field = start.checked_add(offset).ok_or(DropReason::Malformed)?;
    if field + 2 > frame.len() || start > frame.len() {
        return Err(DropReason::Malformed);
    }
    let sum = checksum_fold(0, &frame[start..]);
    let mut c = !(sum as u16);
    // A UDP checksum of zero means "none"; send all-ones instead (RFC 768).
    if c == 0 && offset == 6 {
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The IPv4 pseudo-header sum for a transport segment of `len` bytes.
pub fn pseudo_header_sum(ip: &[u8], protocol: u8, len: usize) -> u32 {
    let mut sum = checksum_fold(0, &ip[12..20]);
    sum += u32::from(protocol);
    sum += len as u32;
    checksum_fold(sum, &[])
}

/// Where the headers of a TCP/IPv4 frame end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLayout {
    /// Offset of the IPv4 header (after the Ethernet header).
    pub ip: usize,
    pub ip_len: usize,
    /// Offset of the TCP header.
    pub tcp: usize,
    pub tcp_len: usize,
    /// Offset of the payload; the frame's IPv4 total length says where it ends.
    pub payload: usize,
    pub end: usize,
}

/// Finds the headers of a TCP/IPv4 Ethernet frame that starts at `at`.
pub fn tcp_layout(bytes: &[u8], at: usize) -> Option<TcpLayout> {
    let frame = bytes.get(at..)?;
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    if eth.ethertype() != ethernet::ethertype::IPV4 {
        return None;
    }
    let ip = ipv4::Packet::new_checked(eth.payload()).ok()?;
    if ip.protocol() != ipv4::protocol::TCP || !ip.is_first_fragment() {
        return None;
    }
    let tcp = l4::TcpHeader::parse(ip.payload()).ok()?;
    let ip_at = at + ethernet::HEADER_LEN;
    let tcp_at = ip_at + ip.header_len();
    Some(TcpLayout {
        ip: ip_at,
        ip_len: ip.header_len(),
        tcp: tcp_at,
        tcp_len: tcp.header_len,
        payload: tcp_at + tcp.header_len,
        end: ip_at + ip.total_len(),
    })
}

/// Cuts an encapsulated TCP super-frame (`datagram` = VXLAN header + frame)
/// into datagrams of at most `mss` payload bytes each, written back to back
/// into `out`. Returns the size of every datagram but the last, and the total
/// bytes written. TCP and IPv4 checksums are computed in full.
pub fn segment_tcp4(
    datagram: &[u8],
    mss: usize,
    out: &mut [u8],
) -> Result<(usize, usize), DropReason> {
    let l = tcp_layout(datagram, vxlan::HEADER_LEN).ok_or(DropReason::Malformed)?;
    if mss == 0 || l.end <= l.payload {
        return Err(DropReason::Malformed);
    }
    let headers = &datagram[..l.payload];
    let payload = &datagram[l.payload..l.end];
    let seg_size = l.payload + mss;
    let count = payload.len().div_ceil(mss);
    let total = l.payload * count + payload.len();
    if total > out.len() {
        return Err(DropReason::NoHeadroom);
    }
    let ip_id = u16::from_be_bytes([headers[l.ip + 4], headers[l.ip + 5]]);
    let seq = u32::from_be_bytes([
        headers[l.tcp + 4],
        headers[l.tcp + 5],
        headers[l.tcp + 6],
        headers[l.tcp + 7],
    ]);
    let flags = headers[l.tcp + 13];
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let base = i * seg_size;
        let seg = &mut out[base..base + l.payload + chunk.len()];
        seg[..l.payload].copy_from_slice(headers);
        seg[l.payload..].copy_from_slice(chunk);
        let last = i + 1 == count;
        // IPv4: length, a fresh ID per segment, checksum.
        let ip = &mut seg[l.ip..l.ip + l.ip_len];
        let ip_total = (l.ip_len + l.tcp_len + chunk.len()) as u16;
        ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
        ip[4..6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = !(checksum_fold(0, ip) as u16);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        // TCP: sequence number; FIN and PSH only on the last, CWR only on the first.
        let tcp_at = l.tcp;
        let s = seq.wrapping_add((i * mss) as u32);
        seg[tcp_at + 4..tcp_at + 8].copy_from_slice(&s.to_be_bytes());
        let mut f = flags;
        if !last {
            f &= !(l4::tcp_flags::FIN | l4::tcp_flags::PSH);
        }
        if i > 0 {
            f &= !0x80;
        }
        seg[tcp_at + 13] = f;
        seg[tcp_at + 16..tcp_at + 18].copy_from_slice(&[0, 0]);
        let tcp_len = l.tcp_len + chunk.len();
        let pseudo = pseudo_header_sum(&seg[l.ip..l.ip + l.ip_len], ipv4::protocol::TCP, tcp_len);
        let c = !(checksum_fold(pseudo, &seg[tcp_at..]) as u16);
        seg[tcp_at + 16..tcp_at + 18].copy_from_slice(&c.to_be_bytes());
    }
    Ok((seg_size, total))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::{checksum, Mac};
    use std::net::Ipv4Addr;

    /// An Ethernet + IPv4 + TCP (with 12 bytes of options) frame carrying
    /// `payload`, with valid checksums.
    pub(crate) fn tcp_frame(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 32];
        ethernet::emit(
            &mut f,
            Mac([2, 0x42, 10, 0, 0, 3]),
            Mac([2, 0x42, 10, 0, 0, 2]),
            ethernet::ethertype::IPV4,
        )
        .unwrap();
        ipv4::Repr {
            src: Ipv4Addr::new(10, 0, 0, 2),
            dst: Ipv4Addr::new(10, 0, 0, 3),
            protocol: ipv4::protocol::TCP,
            ttl: 64,
            ident: 0x1000,
            dont_fragment: true,
            payload_len: 32 + payload.len(),
        }
        .emit(&mut f[14..])
        .unwrap();
        let t = &mut f[34..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = 0x80; // 32-byte header
        t[13] = flags;
        t[14..16].copy_from_slice(&502u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]); // NOP NOP TS
        f.extend_from_slice(payload);
        let pseudo = pseudo_header_sum(&f[14..34], ipv4::protocol::TCP, 32 + payload.len());
        let c = !(checksum_fold(pseudo, &f[34..]) as u16);
        f[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// True when the IPv4 and TCP checksums of `frame` verify.
    pub(crate) fn checksums_ok(frame: &[u8]) -> bool {
        let l = tcp_layout(frame, 0).unwrap();
        let pseudo = pseudo_header_sum(
            &frame[l.ip..l.ip + l.ip_len],
            ipv4::protocol::TCP,
            l.end - l.tcp,
        );
        checksum(&frame[l.ip..l.ip + l.ip_len]) == 0
            && !(checksum_fold(pseudo, &frame[l.tcp..l.end]) as u16) == 0
    }

    #[test]
    fn partial_checksums_are_completed() {
        let mut f = tcp_frame(1, l4::tcp_flags::ACK, b"hello world");
        let want = f.clone();
        // What the kernel hands over: the pseudo-header sum in the field.
        let pseudo = pseudo_header_sum(&f[14..34], ipv4::protocol::TCP, 32 + 11) as u16;
        f[50..52].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut f, 34, 16).unwrap();
        assert_eq!(f, want);
        assert!(complete_checksum(&mut f, 60, 16).is_err());
    }

    #[test]
    fn a_super_frame_becomes_mss_sized_segments() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let flags = l4::tcp_flags::ACK | l4::tcp_flags::PSH | l4::tcp_flags::FIN;
        let mut datagram = vec![0u8; 8];
        vxlan::emit(&mut datagram, vxlan::Vni::new(4096).unwrap()).unwrap();
        datagram.extend_from_slice(&tcp_frame(1000, flags, &payload));
        let mut out = vec![0u8; 8000];
        let (seg_size, total) = segment_tcp4(&datagram, 1398, &mut out).unwrap();
        assert_eq!(seg_size, 8 + 66 + 1398);
        assert_eq!(total, 2 * seg_size + 8 + 66 + 204);
        for (i, (len, seq)) in [(1398usize, 1000u32), (1398, 2398), (204, 3796)]
            .into_iter()
            .enumerate()
        {
            let seg = &out[i * seg_size..i * seg_size + 8 + 66 + len];
            assert_eq!(&seg[..8], &datagram[..8], "VXLAN header copied");
            let frame = &seg[8..];
            assert!(checksums_ok(frame), "segment {i} checksums");
            assert_eq!(
                u16::from_be_bytes([frame[16], frame[17]]) as usize,
                52 + len
            );
            assert_eq!(
                u16::from_be_bytes([frame[18], frame[19]]),
                0x1000 + i as u16
            );
            assert_eq!(
                u32::from_be_bytes([frame[38], frame[39], frame[40], frame[41]]),
                seq
            );
            let want_flags = if i == 2 { flags } else { l4::tcp_flags::ACK };
            assert_eq!(frame[47], want_flags, "segment {i} flags");
            assert_eq!(&frame[66..], &payload[i * 1398..i * 1398 + len]);
        }
    }

    #[test]
    fn segmentation_refuses_what_is_not_tcp_or_does_not_fit() {
        let mut datagram = vec![0u8; 8];
        datagram.extend_from_slice(&tcp_frame(1, l4::tcp_flags::ACK, &[0u8; 3000]));
        assert_eq!(
            segment_tcp4(&datagram, 1000, &mut [0u8; 100]),
            Err(DropReason::NoHeadroom)
        );
        assert_eq!(
            segment_tcp4(&datagram, 0, &mut [0u8; 9000]),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            segment_tcp4(&datagram[..40], 1000, &mut [0u8; 9000]),
            Err(DropReason::Malformed)
        );
    }
}
