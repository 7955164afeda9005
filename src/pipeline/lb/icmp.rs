//! ICMP errors about a translated flow. A task that cannot deliver (UDP to a
//! closed port, say) answers the packet it got, which has the task as its
//! destination; the client sent it to a VIP or a published port. Like IPVS,
//! the balancer finds the flow from the packet the error quotes, and gives
//! the error the address the client knows, outside and inside, so that the
//! client's stack matches it to its socket (and no task address leaks).

use super::nat::{replace16, replace32, stored_l4, Side};
use crate::pipeline::flow::Flow;
use crate::wire::{be16, checksum, ethernet, ipv4, l4};
use std::net::Ipv4Addr;

/// ICMP types that quote the packet they are about: destination
/// unreachable, time exceeded, parameter problem.
const ERRORS: [u8; 3] = [3, 11, 12];

/// Where things are in an ICMP error frame.
struct Layout {
    icmp: usize,
    inner: usize,
    inner_l4: usize,
    end: usize,
}

fn layout(frame: &[u8]) -> Option<Layout> {
    let ip = ipv4::Packet::new_checked(frame.get(ethernet::HEADER_LEN..)?).ok()?;
    if ip.protocol() != ipv4::protocol::ICMP || !ip.is_first_fragment() {
        return None;
    }
    let icmp = ethernet::HEADER_LEN + ip.header_len();
    let end = ethernet::HEADER_LEN + ip.total_len();
    let inner = icmp + 8;
    let first = *frame.get(inner)?;
    let ihl = usize::from(first & 0x0f) * 4;
    let inner_l4 = inner + ihl;
    let kind = *frame.get(icmp)?;
    if !ERRORS.contains(&kind) || first >> 4 != 4 || ihl < 20 || inner_l4 + 8 > end {
        return None;
    }
    // A quoted later fragment holds payload where the ports would be.
    let quoted_offset = u16::from_be_bytes([frame[inner + 6], frame[inner + 7]]) & 0x1fff;
    if quoted_offset != 0 {
        return None;
    }
    let proto = frame[inner + 9];
    (proto == ipv4::protocol::TCP || proto == ipv4::protocol::UDP).then_some(Layout {
        icmp,
        inner,
        inner_l4,
        end,
    })
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// The flow quoted by the ICMP error in `frame` (an Ethernet frame), as the
/// quoted packet had it, if it is one and quotes a TCP or UDP packet (its
/// flags are not read).
pub fn quoted(frame: &[u8]) -> Option<Flow> {
    let l = layout(frame)?;
    Some(Flow {
        protocol: frame[l.inner + 9],
        src: addr(frame, l.inner + 12),
        dst: addr(frame, l.inner + 16),
        ports: l4::Ports {
            src: be16(frame, l.inner_l4),
            dst: be16(frame, l.inner_l4 + 2),
        },
        flags: 0,
    })
}

/// Translates the ICMP error in `frame` back to what the client knows, the
/// address `dst` (a VIP or a published address) and port `dst_port` it sent
/// to: the error comes from `dst` and quotes `dst`:`dst_port`; the
/// checksums that cover them are made right (outer IP, quoted IP, quoted
/// UDP/TCP if quoted in full, ICMP). False if it is no such error.
pub fn translate_back(frame: &mut [u8], dst: Ipv4Addr, dst_port: u16) -> bool {
    translate(frame, Side::Source, dst, dst_port)
}

/// Translates an ICMP error from the client's side about a task's reply
/// (a router that cannot forward it: "fragmentation needed", say) to what
/// the task knows: the error goes to `task` and quotes `task`:`port` as the
/// reply's source, so the task's stack matches it to its socket (and learns
/// the path MTU). Checksums as in [`translate_back`].
pub fn translate_to_task(frame: &mut [u8], task: Ipv4Addr, port: u16) -> bool {
    translate(frame, Side::Destination, task, port)
}

/// Puts `to`:`port` in the error's outer header on `outer` side and in the
/// quoted packet on the other side (the error travels opposite to the
/// packet it quotes).
fn translate(frame: &mut [u8], outer: Side, to: Ipv4Addr, port: u16) -> bool {
    let Some(l) = layout(frame) else {
        return false;
    };
    let ip = ethernet::HEADER_LEN;
    let (outer_at, inner_at, port_at) = match outer {
        Side::Source => (ip + 12, l.inner + 16, l.inner_l4 + 2),
        Side::Destination => (ip + 16, l.inner + 12, l.inner_l4),
    };
    let old_addr = addr(frame, inner_at);
    let old_port = be16(frame, port_at);
    frame[outer_at..outer_at + 4].copy_from_slice(&to.octets());
    frame[ip + 10..ip + 12].fill(0);
    let c = checksum(&frame[ip..l.icmp]);
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    frame[inner_at..inner_at + 4].copy_from_slice(&to.octets());
    frame[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
    frame[l.inner + 10..l.inner + 12].fill(0);
    let c = checksum(&frame[l.inner..l.inner_l4]);
    frame[l.inner + 10..l.inner + 12].copy_from_slice(&c.to_be_bytes());
    let csum_at = match frame[l.inner + 9] {
        ipv4::protocol::UDP => l.inner_l4 + 6,
        _ => l.inner_l4 + 16,
    };
    if csum_at + 2 <= l.end {
        let field = be16(frame, csum_at);
        let udp_off = frame[l.inner + 9] == ipv4::protocol::UDP && field == 0;
        if !udp_off {
            let c = replace32(field, old_addr, to, false);
            let c = stored_l4(
                frame[l.inner + 9],
                replace16(c, old_port, port, false),
                false,
            );
            frame[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    frame[l.icmp + 2..l.icmp + 4].fill(0);
    let c = checksum(&frame[l.icmp..l.end]);
    frame[l.icmp + 2..l.icmp + 4].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pipeline::offload::pseudo_header_sum;
    use crate::wire::{checksum_fold, Mac};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
    const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
    const PUBLISHED: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 116);

    /// The UDP datagram `src` -> `dst` with a valid checksum, as an IPv4 packet.
    pub(crate) fn udp_packet(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + 4];
        ipv4::Repr {
            src: src.0,
            dst: dst.0,
            protocol: ipv4::protocol::UDP,
            ttl: 64,
            ident: 3,
            dont_fragment: false,
            payload_len: 12,
        }
        .emit(&mut p)
        .unwrap();
        p[20..22].copy_from_slice(&src.1.to_be_bytes());
        p[22..24].copy_from_slice(&dst.1.to_be_bytes());
        p[24..26].copy_from_slice(&12u16.to_be_bytes());
        p[28..].copy_from_slice(b"ping");
        let c = !(checksum_fold(pseudo_header_sum(&p[..20], 17, 12), &p[20..]) as u16);
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The port unreachable `from` sends `to` about `quoted`, as an IPv4 packet.
    pub(crate) fn port_unreachable(from: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8];
        ipv4::Repr {
            src: from,
            dst: to,
            protocol: ipv4::protocol::ICMP,
            ttl: 64,
            ident: 4,
            dont_fragment: false,
            payload_len: 8 + quoted.len(),
        }
        .emit(&mut p)
        .unwrap();
        p[20] = 3;
        p[21] = 3;
        p.extend_from_slice(quoted);
        let c = checksum(&p[20..]);
        p[22..24].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The same, in an Ethernet frame.
    fn unreachable(from: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        ethernet::emit(&mut f, Mac::ZERO, Mac::ZERO, ethernet::ethertype::IPV4).unwrap();
        f.extend_from_slice(&port_unreachable(from, to, quoted));
        f
    }

    #[test]
    fn an_error_about_a_reply_is_translated_to_the_task() {
        const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
        // The reply as it left for the client, and the router's error.
        let sent = udp_packet((PUBLISHED, 9001), (CLIENT, 5555));
        let mut f = unreachable(ROUTER, PUBLISHED, &sent);
        assert!(translate_to_task(&mut f, TASK, 9000));
        let replied = udp_packet((TASK, 9000), (CLIENT, 5555));
        assert_eq!(f, unreachable(ROUTER, TASK, &replied));
    }

    #[test]
    fn an_error_about_a_translated_flow_is_translated_back() {
        // The client sent to PUBLISHED:9001; the task got it on TASK:9000.
        let got = udp_packet((CLIENT, 5555), (TASK, 9000));
        let mut f = unreachable(TASK, CLIENT, &got);
        let q = quoted(&f).unwrap();
        assert_eq!(
            (q.protocol, q.src, q.ports.src, q.dst, q.ports.dst),
            (17, CLIENT, 5555, TASK, 9000)
        );
        assert!(translate_back(&mut f, PUBLISHED, 9001));
        // Exactly what the error would be about the packet the client sent.
        let sent = udp_packet((CLIENT, 5555), (PUBLISHED, 9001));
        assert_eq!(f, unreachable(PUBLISHED, CLIENT, &sent));
    }

    #[test]
    fn other_icmp_and_short_quotes_are_left_alone() {
        let got = udp_packet((CLIENT, 5555), (TASK, 9000));
        let mut echo = unreachable(TASK, CLIENT, &got);
        echo[34] = 8;
        assert!(quoted(&echo).is_none());
        let short = unreachable(TASK, CLIENT, &got[..24]);
        assert!(quoted(&short).is_none());
        // A quoted later fragment: its first bytes are payload, not ports
        // (the quote's IPv4 checksum is not checked, so it need not change).
        let mut later = got.clone();
        later[6..8].copy_from_slice(&185u16.to_be_bytes());
        let mut f = unreachable(TASK, CLIENT, &later);
        assert!(quoted(&f).is_none());
        let before = f.clone();
        assert!(!translate_back(&mut f, PUBLISHED, 9001));
        assert_eq!(f, before);
        let mut copy = short.clone();
        assert!(!translate_back(&mut copy, PUBLISHED, 1));
        assert_eq!(copy, short);
        for cut in 0..got.len() + 42 {
            let f = unreachable(TASK, CLIENT, &got);
            let mut g = f[..cut.min(f.len())].to_vec();
            let _ = quoted(&g);
            let _ = translate_back(&mut g, PUBLISHED, 1);
        }
    }
}
