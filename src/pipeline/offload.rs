//! Step 3b: segmentation offload. A container's TCP stack hands its TAP a
//! super-frame of up to 64 KB (TSO, announced by the virtio-net header); one
//! that goes to another host is cut here into MSS-sized TCP segments. Only
//! the headers are written (one copy of VXLAN, Ethernet, IPv4 and TCP headers
//! per segment); the payload stays where it was read, and the I/O edge sends
//! headers and payload slices together, scatter-gather, as one `sendmsg` with
//! `UDP_SEGMENT`. Towards another mesh agent the TCP checksum stays partial
//! (the receiving kernel never needs it: the frame reaches it as
//! CHECKSUM_PARTIAL); towards a plain VTEP it is computed, without a copy.
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
#[inline]
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

/// How (part of) a super-frame was cut: segments `first..first + count` of
/// `total`, each `header_len` bytes of headers (in the caller's header
/// buffer, back to back from its start) followed by its payload, at most
/// `mss` bytes of the super-frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub first: usize,
    pub count: usize,
    pub total: usize,
    pub header_len: usize,
    pub mss: usize,
    pub payload_at: usize,
    pub payload_end: usize,
}

impl Segments {
    /// The payload of the `k`th segment cut this time, inside the super-frame.
    pub fn payload(&self, k: usize) -> std::ops::Range<usize> {
        let start = self.payload_at + (self.first + k) * self.mss;
        start..(start + self.mss).min(self.payload_end)
    }
    /// Bytes of one full datagram (headers and `mss` of payload).
    pub fn datagram_len(&self) -> usize {
        self.header_len + self.mss
    }
    /// The segment to cut from next, if any are left.
    pub fn next(&self) -> Option<usize> {
        let next = self.first + self.count;
        (next < self.total).then_some(next)
    }
}

/// Cuts an encapsulated TCP super-frame (`datagram` = VXLAN header + frame)
/// into segments of at most `mss` payload bytes, without copying the payload:
/// only each segment's headers are written, into `headers`; the caller sends
/// headers and payload slices together (scatter-gather, with UDP GSO).
///
/// Cuts from segment `from` on, as many as `headers` has room for; the
/// caller sends those and calls again from [`Segments::next`] (a small MSS
/// makes more segments than one buffer holds: 64 KB at an MSS of 200 is 328).
///
/// Each segment gets its IPv4 length, ID and checksum, sequence number and
/// flags (FIN and PSH only on the last, CWR only on the first). The TCP
/// checksum is computed in full over the payload when `full_checksum`, for a
/// VTEP that runs no agent; otherwise it is left partial (pseudo-header sum)
/// and the VXLAN header says so, for a mesh agent to hand on as it is.
pub fn segment_tcp4(
    datagram: &[u8],
    mss: usize,
    full_checksum: bool,
    from: usize,
    headers: &mut [u8],
) -> Result<Segments, DropReason> {
    let l = tcp_layout(datagram, vxlan::HEADER_LEN).ok_or(DropReason::Malformed)?;
    if mss == 0 || l.end <= l.payload {
        return Err(DropReason::Malformed);
    }
    let total = (l.end - l.payload).div_ceil(mss);
    let room = headers.len() / l.payload;
    if from >= total {
        return Err(DropReason::Malformed);
    }
    if room == 0 {
        return Err(DropReason::NoHeadroom);
    }
    let seg = Segments {
        first: from,
        count: (total - from).min(room),
        total,
        header_len: l.payload,
        mss,
        payload_at: l.payload,
        payload_end: l.end,
    };
    let template = &datagram[..l.payload];
    let ip_id = u16::from_be_bytes([template[l.ip + 4], template[l.ip + 5]]);
    let seq = u32::from_be_bytes([
        template[l.tcp + 4],
        template[l.tcp + 5],
        template[l.tcp + 6],
        template[l.tcp + 7],
    ]);
    let flags = template[l.tcp + 13];
    for k in 0..seg.count {
        let payload = &datagram[seg.payload(k)];
        let h = &mut headers[k * seg.header_len..(k + 1) * seg.header_len];
        h.copy_from_slice(template);
        // The segment's place in the whole super-frame.
        let i = seg.first + k;
        let last = i + 1 == seg.total;
        // IPv4: length, a fresh ID per segment, checksum.
        let ip = &mut h[l.ip..l.ip + l.ip_len];
        let ip_total = (l.ip_len + l.tcp_len + payload.len()) as u16;
        ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
        ip[4..6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = !(checksum_fold(0, ip) as u16);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        // TCP: sequence number and flags.
        let t = l.tcp;
        h[t + 4..t + 8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut f = flags;
        if !last {
            f &= !(l4::tcp_flags::FIN | l4::tcp_flags::PSH);
        }
        if i > 0 {
            f &= !0x80;
        }
        h[t + 13] = f;
        h[t + 16..t + 18].copy_from_slice(&[0, 0]);
        let pseudo = pseudo_header_sum(
            &h[l.ip..l.ip + l.ip_len],
            ipv4::protocol::TCP,
            l.tcp_len + payload.len(),
        );
        let field = if full_checksum {
            let sum = checksum_fold(checksum_fold(pseudo, &h[t..]), payload);
            !(sum as u16)
        } else {
            vxlan::set_csum_partial(h);
            pseudo as u16
        };
        h[t + 16..t + 18].copy_from_slice(&field.to_be_bytes());
    }
    Ok(seg)
}

/// The virtio-net header that lets the kernel finish a frame's partial TCP or
/// UDP checksum, or None if the frame is neither.
pub fn partial_checksum_vnet(frame: &[u8]) -> Option<crate::wire::virtio::VnetHeader> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    if eth.ethertype() != ethernet::ethertype::IPV4 {
        return None;
    }
    let ip = ipv4::Packet::new_checked(eth.payload()).ok()?;
    let offset = match ip.protocol() {
        ipv4::protocol::TCP => 16,
        ipv4::protocol::UDP => 6,
        _ => return None,
    };
    let start = ethernet::HEADER_LEN + ip.header_len();
    if !ip.is_first_fragment() || start + offset + 2 > ethernet::HEADER_LEN + ip.total_len() {
        return None;
    }
    Some(crate::wire::virtio::VnetHeader {
        flags: crate::wire::virtio::F_NEEDS_CSUM,
        csum_start: start as u16,
        csum_offset: offset as u16,
        ..Default::default()
    })
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

    /// The datagrams a segmentation stands for, headers and payload joined.
    pub(crate) fn materialize(datagram: &[u8], seg: &Segments, headers: &[u8]) -> Vec<Vec<u8>> {
        (0..seg.count)
            .map(|i| {
                let mut d = headers[i * seg.header_len..(i + 1) * seg.header_len].to_vec();
                d.extend_from_slice(&datagram[seg.payload(i)]);
                d
            })
            .collect()
    }

    fn super_datagram(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut datagram = vec![0u8; 8];
        vxlan::emit(&mut datagram, vxlan::Vni::new(4096).unwrap()).unwrap();
        datagram.extend_from_slice(&tcp_frame(1000, flags, payload));
        datagram
    }

    #[test]
    fn a_super_frame_becomes_mss_sized_segments() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let flags = l4::tcp_flags::ACK | l4::tcp_flags::PSH | l4::tcp_flags::FIN;
        let datagram = super_datagram(flags, &payload);
        let mut headers = vec![0u8; 1000];
        let seg = segment_tcp4(&datagram, 1398, true, 0, &mut headers).unwrap();
        assert_eq!(
            (seg.count, seg.header_len, seg.datagram_len()),
            (3, 8 + 66, 8 + 66 + 1398)
        );
        let out = materialize(&datagram, &seg, &headers);
        for (i, (len, seq)) in [(1398usize, 1000u32), (1398, 2398), (204, 3796)]
            .into_iter()
            .enumerate()
        {
            let d = &out[i];
            assert_eq!(d.len(), 8 + 66 + len);
            assert_eq!(
                &d[..8],
                &datagram[..8],
                "VXLAN header copied, no partial flag"
            );
            let frame = &d[8..];
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
            assert!(frame[66..] == payload[i * 1398..i * 1398 + len]);
        }
    }

    #[test]
    fn segments_for_an_agent_carry_a_partial_checksum_the_kernel_can_finish() {
        let payload: Vec<u8> = (0..2000u32).map(|i| (i * 7) as u8).collect();
        let datagram = super_datagram(l4::tcp_flags::ACK, &payload);
        let mut headers = vec![0u8; 1000];
        let seg = segment_tcp4(&datagram, 1000, false, 0, &mut headers).unwrap();
        for mut d in materialize(&datagram, &seg, &headers) {
            assert!(vxlan::is_csum_partial(&d));
            let frame = &mut d[8..];
            let vnet = partial_checksum_vnet(frame).unwrap();
            assert_eq!((vnet.csum_start, vnet.csum_offset), (34, 16));
            complete_checksum(frame, 34, 16).unwrap();
            assert!(checksums_ok(frame));
        }
    }

    #[test]
    fn a_super_frame_with_more_segments_than_header_room_is_cut_in_pieces() {
        // 64 KB at an MSS of 200: 328 segments, headers for 7 at a time.
        let payload: Vec<u8> = (0..65_000u32).map(|i| (i * 13 / 7) as u8).collect();
        let flags = l4::tcp_flags::ACK | l4::tcp_flags::PSH | l4::tcp_flags::FIN | 0x80;
        let datagram = super_datagram(flags, &payload);
        let mut whole = vec![0u8; 328 * 74];
        let seg = segment_tcp4(&datagram, 200, false, 0, &mut whole).unwrap();
        assert_eq!((seg.count, seg.total, seg.next()), (325, 325, None));
        let want = materialize(&datagram, &seg, &whole);
        let mut headers = vec![0u8; 7 * 74 + 73];
        let (mut got, mut from, mut sends) = (vec![], Some(0), 0);
        while let Some(first) = from {
            let seg = segment_tcp4(&datagram, 200, false, first, &mut headers).unwrap();
            assert_eq!((seg.first, seg.total), (first, 325));
            assert_eq!(seg.count, (325 - first).min(7));
            got.extend(materialize(&datagram, &seg, &headers));
            from = seg.next();
            sends += 1;
        }
        assert_eq!(sends, 325usize.div_ceil(7));
        // The same datagrams as cut at once: sequence numbers, IP IDs, CWR
        // on the first only, FIN and PSH on the last only.
        assert!(got == want);
        let flags_of = |d: &Vec<u8>| d[8 + 47];
        assert_eq!(flags_of(&got[0]), l4::tcp_flags::ACK | 0x80);
        assert_eq!(flags_of(&got[7]), l4::tcp_flags::ACK);
        assert_eq!(flags_of(&got[324]), flags & !0x80);
        let seq = |d: &Vec<u8>| u32::from_be_bytes([d[46], d[47], d[48], d[49]]);
        assert_eq!(seq(&got[7]), 1000 + 7 * 200);
        assert_eq!(seq(&got[324]), 1000 + 324 * 200);
        assert_eq!(got[324].len(), 8 + 66 + 65_000 - 324 * 200);
        // Past the end there is nothing to cut.
        assert_eq!(
            segment_tcp4(&datagram, 200, false, 325, &mut headers),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn segmentation_refuses_what_is_not_tcp_or_does_not_fit() {
        let datagram = super_datagram(l4::tcp_flags::ACK, &[0u8; 3000]);
        assert_eq!(
            segment_tcp4(&datagram, 1000, true, 0, &mut [0u8; 70]),
            Err(DropReason::NoHeadroom)
        );
        assert_eq!(
            segment_tcp4(&datagram, 0, true, 0, &mut [0u8; 9000]),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            segment_tcp4(&datagram[..40], 1000, true, 0, &mut [0u8; 9000]),
            Err(DropReason::Malformed)
        );
    }
}
