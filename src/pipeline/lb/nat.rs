//! Address translation and the replies the balancer makes itself, on an
//! Ethernet frame in place.
//!
//! Checksums are updated incrementally (RFC 1624). A TCP or UDP checksum may
//! be partial (the kernel left only the pseudo-header sum, to be finished by
//! offload): then the stored value is the sum itself, not its complement,
//! and the update is the same arithmetic without the complements.

use crate::wire::{checksum_fold, ethernet, ipv4, l4, Mac};
use std::net::Ipv4Addr;

/// A TCP or UDP checksum `c` as it is stored after an update. In UDP, 0
/// means that none was computed (RFC 768), so a full checksum that comes
/// to 0 goes as its ones'-complement equal 0xffff, as a sender would put it.
pub(super) fn stored_l4(proto: u8, c: u16, partial: bool) -> u16 {
    if c == 0 && proto == ipv4::protocol::UDP && !partial {
        0xffff
    } else {
        c
    }
}

/// Replaces one 16-bit word `old` by `new` inside a checksummed area.
pub(super) fn replace16(field: u16, old: u16, new: u16, partial: bool) -> u16 {
    let sum = |x: u16| checksum_fold(u32::from(x) + u32::from(!old) + u32::from(new), &[]) as u16;
    if partial {
        sum(field)
    } else {
        !sum(!field)
    }
}

pub(super) fn replace32(field: u16, old: Ipv4Addr, new: Ipv4Addr, partial: bool) -> u16 {
    let (o, n) = (old.octets(), new.octets());
    let f = replace16(
        field,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([n[0], n[1]]),
        partial,
    );
    replace16(
        f,
        u16::from_be_bytes([o[2], o[3]]),
        u16::from_be_bytes([n[2], n[3]]),
        partial,
    )
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn set16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Which address of the IPv4 header to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Rewrites the source or destination address (and MAC) of a TCP, UDP or
/// ICMP frame, fixing the IPv4 and transport checksums. The caller has
/// checked the headers (`ipv4::Packet::new_checked`).
pub fn rewrite(frame: &mut [u8], side: Side, ip: Ipv4Addr, mac: Mac, partial: bool) {
    let ip_at = ethernet::HEADER_LEN;
    let Ok(p) = ipv4::Packet::new_checked(&frame[ip_at..]) else {
        return;
    };
    let (hl, proto, first) = (p.header_len(), p.protocol(), p.is_first_fragment());
    let (addr_at, mac_at) = match side {
        Side::Source => (ip_at + 12, 6),
        Side::Destination => (ip_at + 16, 0),
    };
    let old = Ipv4Addr::new(
        frame[addr_at],
        frame[addr_at + 1],
        frame[addr_at + 2],
        frame[addr_at + 3],
    );
    frame[mac_at..mac_at + 6].copy_from_slice(&mac.0);
    frame[addr_at..addr_at + 4].copy_from_slice(&ip.octets());
    let c = replace32(get16(frame, ip_at + 10), old, ip, false);
    set16(frame, ip_at + 10, c);
    let l4_at = ip_at + hl;
    let csum_at = match proto {
        ipv4::protocol::TCP => l4_at + 16,
        ipv4::protocol::UDP => l4_at + 6,
        _ => return,
    };
    if !first || csum_at + 2 > frame.len() {
        return;
    }
    let field = get16(frame, csum_at);
    // A UDP checksum of zero means none was computed: leave it so.
    if proto == ipv4::protocol::UDP && field == 0 && !partial {
        return;
    }
    let c = replace32(field, old, ip, partial);
    set16(frame, csum_at, stored_l4(proto, c, partial));
}

/// Rewrites the source or destination port of a TCP or UDP frame, fixing
/// its checksum. A partial checksum covers only the pseudo-header, which
/// holds no ports, so it stays as it is.
pub fn rewrite_port(frame: &mut [u8], side: Side, port: u16, partial: bool) {
    let ip_at = ethernet::HEADER_LEN;
    let Ok(p) = ipv4::Packet::new_checked(&frame[ip_at..]) else {
        return;
    };
    let (hl, proto) = (p.header_len(), p.protocol());
    if !p.is_first_fragment() {
        return;
    }
    let l4_at = ip_at + hl;
    let csum_at = match proto {
        ipv4::protocol::TCP => l4_at + 16,
        ipv4::protocol::UDP => l4_at + 6,
        _ => return,
    };
    if csum_at + 2 > frame.len() {
        return;
    }
    let port_at = match side {
        Side::Source => l4_at,
        Side::Destination => l4_at + 2,
    };
    let old = get16(frame, port_at);
    if old == port {
        return;
    }
    set16(frame, port_at, port);
    let field = get16(frame, csum_at);
    if partial || (proto == ipv4::protocol::UDP && field == 0) {
        return;
    }
    let c = replace16(field, old, port, false);
    set16(frame, csum_at, stored_l4(proto, c, false));
}

/// Turns an ICMP echo request into its reply, in place: addresses and MACs
/// swapped, type 0. Returns false if it is not an echo request (a later
/// fragment holds no ICMP header: it follows its first, see `fragments`).
pub fn echo_reply(frame: &mut [u8]) -> bool {
    let ip_at = ethernet::HEADER_LEN;
    let Ok(p) = ipv4::Packet::new_checked(&frame[ip_at..]) else {
        return false;
    };
    let icmp_at = ip_at + p.header_len();
    let is_echo = p.protocol() == ipv4::protocol::ICMP
        && p.is_first_fragment()
        && l4::IcmpHeader::parse(p.payload()).is_ok_and(|h| h.kind == l4::IcmpHeader::ECHO_REQUEST);
    if !is_echo {
        return false;
    }
    swap_addresses(frame);
    let old = get16(frame, icmp_at);
    frame[icmp_at] = l4::IcmpHeader::ECHO_REPLY;
    let c = replace16(get16(frame, icmp_at + 2), old, get16(frame, icmp_at), false);
    set16(frame, icmp_at + 2, c);
    true
}

/// Swaps source and destination MACs and IPv4 addresses (checksums do not change).
fn swap_addresses(frame: &mut [u8]) {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[0..6]);
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&m);
    let ip_at = ethernet::HEADER_LEN;
    let mut a = [0u8; 4];
    a.copy_from_slice(&frame[ip_at + 12..ip_at + 16]);
    frame.copy_within(ip_at + 16..ip_at + 20, ip_at + 12);
    frame[ip_at + 16..ip_at + 20].copy_from_slice(&a);
}

/// Answers a TCP segment with a RST from its destination, in place (RFC 793
/// reset generation). Returns the reply's length.
pub fn tcp_reset(frame: &mut [u8]) -> Option<usize> {
    let ip_at = ethernet::HEADER_LEN;
    let p = ipv4::Packet::new_checked(&frame[ip_at..]).ok()?;
    let (hl, total) = (p.header_len(), p.total_len());
    let tcp = l4::TcpHeader::parse(p.payload()).ok()?;
    let t = ip_at + hl;
    let seq = u32::from_be_bytes([frame[t + 4], frame[t + 5], frame[t + 6], frame[t + 7]]);
    let ack = u32::from_be_bytes([frame[t + 8], frame[t + 9], frame[t + 10], frame[t + 11]]);
    let payload = (total - hl - tcp.header_len) as u32;
    let syn_fin = u32::from(tcp.flags & l4::tcp_flags::SYN != 0)
        + u32::from(tcp.flags & l4::tcp_flags::FIN != 0);
    let (new_seq, new_ack, flags) = if tcp.flags & l4::tcp_flags::ACK != 0 {
        (ack, 0, l4::tcp_flags::RST)
    } else {
        (
            0,
            seq.wrapping_add(payload + syn_fin),
            l4::tcp_flags::RST | l4::tcp_flags::ACK,
        )
    };
    swap_addresses(frame);
    let (src, dst) = (
        Ipv4Addr::new(
            frame[ip_at + 12],
            frame[ip_at + 13],
            frame[ip_at + 14],
            frame[ip_at + 15],
        ),
        Ipv4Addr::new(
            frame[ip_at + 16],
            frame[ip_at + 17],
            frame[ip_at + 18],
            frame[ip_at + 19],
        ),
    );
    // A plain 20-byte IPv4 header and a 20-byte TCP header, no payload.
    let tcp_at = ip_at + 20;
    let (sport, dport) = (tcp.ports.dst, tcp.ports.src);
    ipv4::Repr {
        src,
        dst,
        protocol: ipv4::protocol::TCP,
        ttl: 64,
        ident: 0,
        dont_fragment: true,
        payload_len: 20,
    }
    .emit(&mut frame[ip_at..])
    .ok()?;
    let h = frame.get_mut(tcp_at..tcp_at + 20)?;
    h.fill(0);
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&new_seq.to_be_bytes());
    h[8..12].copy_from_slice(&new_ack.to_be_bytes());
    h[12] = 0x50;
    h[13] = flags;
    let pseudo = crate::pipeline::offload::pseudo_header_sum(
        &frame[ip_at..ip_at + 20],
        ipv4::protocol::TCP,
        20,
    );
    let c = !(checksum_fold(pseudo, &frame[tcp_at..tcp_at + 20]) as u16);
    set16(frame, tcp_at + 16, c);
    Some(tcp_at + 20)
}

/// Answers a datagram with ICMP port unreachable from its destination, built
/// in `buf` where the frame is `buf[start..end]`, quoting the original IPv4
/// header and 8 bytes (RFC 792). Returns the reply's new end.
pub fn port_unreachable(buf: &mut [u8], start: usize, end: usize) -> Option<usize> {
    let ip_at = start + ethernet::HEADER_LEN;
    let p = ipv4::Packet::new_checked(buf.get(ip_at..end)?).ok()?;
    let quote = (p.header_len() + 8).min(p.total_len());
    let icmp_at = ip_at + 20;
    let new_end = icmp_at + 8 + quote;
    if new_end > buf.len() {
        return None;
    }
    let (src, dst) = (p.dst(), p.src());
    buf.copy_within(ip_at..ip_at + quote, icmp_at + 8);
    swap_addresses(&mut buf[start..end]);
    ipv4::Repr {
        src,
        dst,
        protocol: ipv4::protocol::ICMP,
        ttl: 64,
        ident: 0,
        dont_fragment: false,
        payload_len: 8 + quote,
    }
    .emit(&mut buf[ip_at..])
    .ok()?;
    let icmp = &mut buf[icmp_at..new_end];
    icmp[..8].copy_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    let c = !(checksum_fold(0, icmp) as u16);
    set16(buf, icmp_at + 2, c);
    Some(new_end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::offload::tests::{checksums_ok, tcp_frame};
    use crate::pipeline::offload::{complete_checksum, pseudo_header_sum};
    use crate::wire::checksum;

    #[test]
    fn a_udp_checksum_that_comes_to_zero_is_stored_as_all_ones() {
        use crate::pipeline::lb::icmp::tests::udp_packet;
        use crate::wire::checksum_fold;
        let (client, vip, task) = (
            Ipv4Addr::new(10, 0, 0, 9),
            Ipv4Addr::new(10, 0, 0, 3),
            Ipv4Addr::new(10, 0, 0, 77),
        );
        // The datagram (with a right checksum) whose checksum after the
        // DNAT to the task comes to 0: one payload word in 65536.
        let (mut hits, mut seen) = (0, 0);
        for w in 0..=u16::MAX {
            let mut p = udp_packet((client, 40000), (vip, 53));
            p[28..30].copy_from_slice(&w.to_be_bytes());
            p[26..28].fill(0);
            let c = !(checksum_fold(pseudo_header_sum(&p[..20], 17, 12), &p[20..]) as u16);
            p[26..28].copy_from_slice(&stored_l4(17, c, false).to_be_bytes());
            let mut f = vec![0u8; 14];
            f.extend_from_slice(&p);
            rewrite(&mut f, Side::Destination, task, Mac::for_ip(task), false);
            let stored = get16(&f, 14 + 26);
            assert_ne!(
                stored, 0,
                "payload word {w:#06x}: a computed checksum stored as none"
            );
            let sum = checksum_fold(pseudo_header_sum(&f[14..34], 17, 12), &f[34..]) as u16;
            assert_eq!(
                sum, 0xffff,
                "payload word {w:#06x}: checksum does not verify"
            );
            seen += 1;
            hits += usize::from(stored == 0xffff);
        }
        assert_eq!(seen, 65536);
        assert!(
            hits >= 1,
            "no payload made the updated checksum 0: the test tests nothing"
        );
    }

    #[test]
    fn port_rewrites_keep_full_and_partial_checksums_right() {
        let mut f = tcp_frame(5, l4::tcp_flags::ACK, b"published port");
        rewrite_port(&mut f, Side::Destination, 8080, false);
        assert_eq!(get16(&f, 36), 8080);
        assert!(checksums_ok(&f));
        rewrite_port(&mut f, Side::Source, 41000, false);
        assert_eq!(get16(&f, 34), 41000);
        assert!(checksums_ok(&f));
        // Partial: the pseudo-header sum has no ports, so it must not move.
        let mut g = tcp_frame(5, l4::tcp_flags::ACK, b"published port");
        let len = g.len() - 34;
        let pseudo = pseudo_header_sum(&g[14..34], ipv4::protocol::TCP, len) as u16;
        set16(&mut g, 50, pseudo);
        rewrite_port(&mut g, Side::Destination, 8080, true);
        assert_eq!(get16(&g, 50), pseudo);
        rewrite_port(&mut g, Side::Source, 41000, true);
        complete_checksum(&mut g, 34, 16).unwrap();
        assert_eq!(g, f);
    }

    #[test]
    fn dnat_keeps_full_and_partial_checksums_right() {
        let vip = Ipv4Addr::new(10, 0, 0, 3);
        let task = Ipv4Addr::new(10, 0, 0, 77);
        let mut f = tcp_frame(5, l4::tcp_flags::ACK, b"some payload bytes");
        assert_eq!(Ipv4Addr::new(f[30], f[31], f[32], f[33]), vip);
        rewrite(&mut f, Side::Destination, task, Mac::for_ip(task), false);
        assert!(checksums_ok(&f));
        assert_eq!(&f[0..6], &Mac::for_ip(task).0);
        // Partial: the field holds the pseudo-header sum; after the rewrite
        // finishing it must give a correct checksum.
        let mut g = tcp_frame(5, l4::tcp_flags::ACK, b"some payload bytes");
        let len = g.len() - 34;
        let pseudo = pseudo_header_sum(&g[14..34], ipv4::protocol::TCP, len) as u16;
        set16(&mut g, 50, pseudo);
        rewrite(&mut g, Side::Destination, task, Mac::for_ip(task), true);
        complete_checksum(&mut g, 34, 16).unwrap();
        assert_eq!(g, f);
        // And back (the reply path rewrites the source).
        let mut h = f.clone();
        rewrite(&mut h, Side::Destination, vip, Mac::for_ip(vip), false);
        assert!(checksums_ok(&h));
    }

    #[test]
    fn echo_requests_are_answered_in_place() {
        let mut f = vec![0u8; 14 + 20 + 16];
        ethernet::emit(
            &mut f,
            Mac([2, 0, 0, 0, 0, 2]),
            Mac([2, 0, 0, 0, 0, 1]),
            ethernet::ethertype::IPV4,
        )
        .unwrap();
        ipv4::Repr {
            src: Ipv4Addr::new(10, 0, 0, 9),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            protocol: ipv4::protocol::ICMP,
            ttl: 64,
            ident: 1,
            dont_fragment: true,
            payload_len: 16,
        }
        .emit(&mut f[14..])
        .unwrap();
        f[34] = 8;
        f[38..50].copy_from_slice(b"ping payload");
        let c = checksum(&f[34..]);
        set16(&mut f, 36, c);
        assert!(echo_reply(&mut f));
        assert_eq!(f[34], 0);
        assert_eq!(checksum(&f[34..]), 0, "ICMP checksum");
        assert_eq!(checksum(&f[14..34]), 0, "IP checksum");
        assert_eq!(
            Ipv4Addr::new(f[26], f[27], f[28], f[29]),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
        assert!(!echo_reply(&mut f), "a reply is not answered");
    }

    #[test]
    fn resets_answer_syns_and_late_segments() {
        let mut syn = tcp_frame(1000, l4::tcp_flags::SYN, b"");
        let len = tcp_reset(&mut syn).unwrap();
        let r = &syn[..len];
        assert!(checksums_ok(r));
        assert_eq!(r[47], l4::tcp_flags::RST | l4::tcp_flags::ACK);
        assert_eq!(
            u32::from_be_bytes([r[42], r[43], r[44], r[45]]),
            1001,
            "ack = seq + SYN"
        );
        assert_eq!(
            Ipv4Addr::new(r[26], r[27], r[28], r[29]),
            Ipv4Addr::new(10, 0, 0, 3),
            "from the VIP"
        );
        let mut late = tcp_frame(7, l4::tcp_flags::ACK, b"data");
        let len = tcp_reset(&mut late).unwrap();
        assert_eq!(late[47], l4::tcp_flags::RST);
        assert_eq!(
            u32::from_be_bytes([late[38], late[39], late[40], late[41]]),
            77,
            "seq = their ack"
        );
        assert!(checksums_ok(&late[..len]));
    }

    #[test]
    fn datagrams_to_an_empty_vip_get_port_unreachable() {
        let mut f = vec![0u8; 14 + 20 + 8 + 5];
        ethernet::emit(
            &mut f,
            Mac([2, 0, 0, 0, 0, 2]),
            Mac([2, 0, 0, 0, 0, 1]),
            ethernet::ethertype::IPV4,
        )
        .unwrap();
        ipv4::Repr {
            src: Ipv4Addr::new(10, 0, 0, 9),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            protocol: ipv4::protocol::UDP,
            ttl: 64,
            ident: 1,
            dont_fragment: true,
            payload_len: 13,
        }
        .emit(&mut f[14..])
        .unwrap();
        let original_ip: Vec<u8> = f[14..42].to_vec();
        let end = f.len();
        f.resize(200, 0);
        let new_end = port_unreachable(&mut f, 0, end).unwrap();
        let r = &f[..new_end];
        assert_eq!(new_end, 14 + 20 + 8 + 28);
        assert_eq!((r[34], r[35]), (3, 3));
        assert_eq!(checksum(&r[34..]), 0);
        assert_eq!(checksum(&r[14..34]), 0);
        assert_eq!(&r[42..], &original_ip[..]);
        assert_eq!(
            Ipv4Addr::new(r[30], r[31], r[32], r[33]),
            Ipv4Addr::new(10, 0, 0, 9)
        );
    }
}
