//! The VIP path: DNAT to a task, the reply's source back to the VIP,
//! refusals, ICMP echo, ARP.

use super::*;
use crate::pipeline::lb::Backend;
use crate::pipeline::offload::{pseudo_header_sum, tcp_layout};
use crate::tables::VipTable;
use crate::wire::{checksum, checksum_fold, l4::tcp_flags::*};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);

/// Network A plus a VIP .100 over c2 (.3, here) and c3 (.4, on HOST2),
/// and an empty VIP .101.
fn pipeline() -> Pipeline {
    let mut t = tables();
    let vni = Vni::new(VNI_A).unwrap();
    let backends = vec![
        Backend {
            ip: ip(3),
            weight: 1,
        },
        Backend {
            ip: ip(4),
            weight: 1,
        },
    ];
    t.vips.push(VipTable::new("web", VIP, vni, "rr", backends));
    t.vips.push(VipTable::new("none", EMPTY, vni, "rr", vec![]));
    let net = t.networks.get_mut(&vni).unwrap();
    net.vips.insert(VIP, 0);
    net.vips.insert(EMPTY, 1);
    Pipeline::new(Arc::new(t), Arc::new(Counters::default()))
}

fn l4_frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    dst_mac: Mac,
    proto: u8,
    flags: u8,
) -> Vec<u8> {
    l4_frame_with(src, dst, dst_mac, proto, flags, b"ping")
}

/// As [`l4_frame`], with `data` as the payload.
fn l4_frame_with(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    dst_mac: Mac,
    proto: u8,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let hl = if proto == ipv4::protocol::TCP { 20 } else { 8 };
    let n = data.len();
    let mut f = vec![0u8; 14 + 20 + hl + n];
    ethernet::emit(
        &mut f,
        dst_mac,
        Mac::for_ip(src.0),
        ethernet::ethertype::IPV4,
    )
    .unwrap();
    ipv4::Repr {
        src: src.0,
        dst: dst.0,
        protocol: proto,
        ttl: 64,
        ident: 9,
        dont_fragment: true,
        payload_len: hl + n,
    }
    .emit(&mut f[14..])
    .unwrap();
    f[34..36].copy_from_slice(&src.1.to_be_bytes());
    f[36..38].copy_from_slice(&dst.1.to_be_bytes());
    f[34 + hl..].copy_from_slice(data);
    let csum_at = if proto == ipv4::protocol::TCP {
        f[34 + 4..34 + 8].copy_from_slice(&100u32.to_be_bytes());
        f[34 + 12] = 0x50;
        f[34 + 13] = flags;
        34 + 16
    } else {
        f[38..40].copy_from_slice(&((hl + n) as u16).to_be_bytes());
        34 + 6
    };
    let pseudo = pseudo_header_sum(&f[14..34], proto, hl + n);
    let c = !(checksum_fold(pseudo, &f[34..]) as u16);
    f[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    f
}

fn l4_ok(f: &[u8]) -> bool {
    let ip = ipv4::Packet::new_checked(&f[14..]).unwrap();
    let pseudo = pseudo_header_sum(&f[14..34], ip.protocol(), ip.payload().len());
    checksum(&f[14..34]) == 0 && !(checksum_fold(pseudo, ip.payload()) as u16) == 0
}

fn dst_ip(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[30], f[31], f[32], f[33])
}

fn src_ip(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[26], f[27], f[28], f[29])
}

fn run_plain(p: &mut Pipeline, input: Input, frame: &[u8]) -> (Verdict, Vec<u8>, bool) {
    let mut buf = vec![0u8; HEADROOM + frame.len() + 100];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    let mut pkt = Packet::new(&mut buf, HEADROOM, frame.len());
    let v = p.process(Instant::now(), input, &mut pkt);
    (v, pkt.bytes().to_vec(), pkt.plain)
}

#[test]
fn new_flows_are_spread_and_translated_and_replies_come_from_the_vip() {
    let mut p = pipeline();
    let vip_mac = Mac::for_ip(VIP);
    let c1 = Mac::for_ip(ip(2));
    // rr over the sorted tasks: first .3 (a local TAP), then .4 (HOST2).
    let (v, out, _) = run_plain(
        &mut p,
        Input::Tap(1),
        &l4_frame((ip(2), 40000), (VIP, 80), vip_mac, 6, SYN),
    );
    assert_eq!(v, Verdict::ToTap(2));
    assert_eq!(dst_ip(&out), ip(3));
    assert_eq!(&out[0..6], &Mac::for_ip(ip(3)).0);
    assert!(l4_ok(&out));
    let (v, out, _) = run_plain(
        &mut p,
        Input::Tap(1),
        &l4_frame((ip(2), 40001), (VIP, 80), vip_mac, 6, SYN),
    );
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST2, 4789)));
    assert_eq!(dst_ip(&out[8..]), ip(4));
    // The same flow again sticks to its task.
    let (v, _, _) = run_plain(
        &mut p,
        Input::Tap(1),
        &l4_frame((ip(2), 40000), (VIP, 80), vip_mac, 6, ACK),
    );
    assert_eq!(v, Verdict::ToTap(2));
    assert_eq!(p.tracked_flows(), 2);
    // c2's SYN-ACK to c1 leaves c2 from .3 and reaches c1 from the VIP.
    let (v, out, _) = run_plain(
        &mut p,
        Input::Tap(2),
        &l4_frame((ip(3), 80), (ip(2), 40000), c1, 6, SYN | ACK),
    );
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!((src_ip(&out), &out[6..12]), (VIP, &vip_mac.0[..]));
    assert!(l4_ok(&out));
    // c3's reply over the tunnel, likewise.
    let reply = vxlan(
        VNI_A,
        &l4_frame((ip(4), 80), (ip(2), 40001), c1, 6, SYN | ACK),
    );
    let (v, out, _) = run_plain(
        &mut p,
        Input::Underlay(SocketAddrV4::new(HOST2, 4789)),
        &reply,
    );
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(src_ip(&out), VIP);
    assert!(l4_ok(&out));
}

#[test]
fn a_task_reaching_its_own_service_gets_another_task_or_a_refusal() {
    let mut p = pipeline();
    // c2 (.3, Tap 2) is a task of the VIP: its connections go to .4 only,
    // whatever rr's turn (before, every other one came back to c2 and was
    // dropped as a hairpin, and the SYN retried into the same entry).
    for port in 42000..42006 {
        let syn = l4_frame((ip(3), port), (VIP, 80), Mac::for_ip(VIP), 6, SYN);
        let (v, out, _) = run_plain(&mut p, Input::Tap(2), &syn);
        assert_eq!(
            v,
            Verdict::ToUnderlay(SocketAddrV4::new(HOST2, 4789)),
            "port {port}"
        );
        assert_eq!(dst_ip(&out[8..]), ip(4));
    }
    // Alone behind its VIP, it is refused at once and nothing is tracked.
    let mut t = (*p.tables).clone();
    let vni = Vni::new(VNI_A).unwrap();
    t.vips[0] = VipTable::new(
        "web",
        VIP,
        vni,
        "rr",
        vec![Backend {
            ip: ip(3),
            weight: 1,
        }],
    );
    p.set_tables(Arc::new(t));
    let flows = p.tracked_flows();
    let syn = l4_frame((ip(3), 42100), (VIP, 80), Mac::for_ip(VIP), 6, SYN);
    let (v, out, _) = run_plain(&mut p, Input::Tap(2), &syn);
    assert_eq!(v, Verdict::ToTap(2));
    let t = tcp_layout(&out, 0).unwrap();
    assert_eq!(out[t.tcp + 13] & RST, RST);
    assert_eq!((src_ip(&out), dst_ip(&out)), (VIP, ip(3)));
    assert_eq!(p.tracked_flows(), flows);
    assert_eq!(p.counters().dropped(DropReason::Hairpin), 1);
}

#[test]
fn round_robin_keeps_its_place_when_unrelated_tables_change() {
    let mut p = pipeline();
    let syn = |port| l4_frame((ip(2), port), (VIP, 80), Mac::for_ip(VIP), 6, SYN);
    assert_eq!(
        run_plain(&mut p, Input::Tap(1), &syn(41000)).0,
        Verdict::ToTap(2)
    );
    // New tables with the same tasks (another container came, say).
    let same = (*p.tables).clone();
    p.set_tables(Arc::new(same));
    assert_eq!(
        run_plain(&mut p, Input::Tap(1), &syn(41001)).0,
        Verdict::ToUnderlay(SocketAddrV4::new(HOST2, 4789)),
        "the next task, not the first one again"
    );
}

#[test]
fn empty_vips_and_untracked_segments_are_refused_at_once() {
    let mut p = pipeline();
    let (v, out, plain) = run_plain(
        &mut p,
        Input::Tap(1),
        &l4_frame((ip(2), 40000), (EMPTY, 80), Mac::for_ip(EMPTY), 6, SYN),
    );
    assert_eq!(v, Verdict::ToTap(1));
    assert!(plain);
    let t = tcp_layout(&out, 0).unwrap();
    assert_eq!(out[t.tcp + 13] & RST, RST);
    assert_eq!((src_ip(&out), dst_ip(&out)), (EMPTY, ip(2)));
    assert!(l4_ok(&out));
    let (v, out, _) = run_plain(
        &mut p,
        Input::Tap(1),
        &l4_frame((ip(2), 5000), (EMPTY, 53), Mac::for_ip(EMPTY), 17, 0),
    );
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!((out[34], out[35]), (3, 3), "ICMP port unreachable");
    // A data segment of a flow nobody tracks (say, after a restart): RST.
    let (v, out, _) = run_plain(
        &mut p,
        Input::Tap(1),
        &l4_frame((ip(2), 41000), (VIP, 80), Mac::for_ip(VIP), 6, ACK | PSH),
    );
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(out[47] & RST, RST);
    assert_eq!(p.counters().dropped(DropReason::NoBackend), 2);
    assert_eq!(p.counters().dropped(DropReason::UntrackedFlow), 1);
    assert_eq!(p.tracked_flows(), 0);
}

#[test]
fn a_clients_icmp_error_about_a_reply_reaches_the_task() {
    use crate::pipeline::lb::icmp::tests::{port_unreachable, udp_packet};
    let mut p = pipeline();
    // The port unreachable `from` sends the VIP about `quoted`, from c1's MAC.
    let error = |from, quoted: &[u8]| {
        let mut f = vec![0u8; 14];
        let (vip, c1) = (Mac::for_ip(VIP), Mac::for_ip(ip(2)));
        ethernet::emit(&mut f, vip, c1, ethernet::ethertype::IPV4).unwrap();
        f.extend_from_slice(&port_unreachable(from, VIP, quoted));
        f
    };
    // c1 (.2) talks UDP to the VIP; rr gives the flow to c2 (.3, Tap 2).
    let dgram = l4_frame((ip(2), 40000), (VIP, 53), Mac::for_ip(VIP), 17, 0);
    assert_eq!(
        run_plain(&mut p, Input::Tap(1), &dgram).0,
        Verdict::ToTap(2)
    );
    // c1's socket is gone: its port unreachable about the reply (which it
    // got from the VIP) goes to the VIP. c2 must get it, about its own reply.
    let got = udp_packet((VIP, 53), (ip(2), 40000));
    let (v, out, _) = run_plain(&mut p, Input::Tap(1), &error(ip(2), &got));
    assert_eq!(v, Verdict::ToTap(2));
    let sent = udp_packet((ip(3), 53), (ip(2), 40000));
    assert_eq!(&out[14..], &port_unreachable(ip(2), ip(3), &sent)[..]);
    assert_eq!(&out[0..6], &Mac::for_ip(ip(3)).0);
    // The same error from another container (.5): a forgery, dropped.
    assert_eq!(
        run_plain(&mut p, Input::Tap(1), &error(ip(5), &got)).0,
        Verdict::Drop(DropReason::Spoofed)
    );
    // About a flow nobody tracks: dropped, not echoed or passed on.
    let stray = udp_packet((VIP, 53), (ip(2), 40999));
    assert_eq!(
        run_plain(&mut p, Input::Tap(1), &error(ip(2), &stray)).0,
        Verdict::Drop(DropReason::UntrackedFlow)
    );
}

#[test]
fn vips_answer_ping_and_arp() {
    let mut p = pipeline();
    let (v, out) = run(
        &mut p,
        Input::Tap(1),
        &arp_request(Mac::for_ip(ip(2)), ip(2), VIP),
    );
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(
        ethernet::Frame::new_checked(&out).unwrap().src(),
        Mac::for_ip(VIP)
    );
    let mut echo = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(VIP), ip(2), VIP);
    echo[38..42].copy_from_slice(&[0x1c, 0x46, 0, 1]); // id, sequence
    let c = checksum(&echo[34..]);
    echo[36..38].copy_from_slice(&c.to_be_bytes());
    let (v, out, _) = run_plain(&mut p, Input::Tap(1), &echo);
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!((out[34], src_ip(&out)), (0, VIP));
    assert_eq!(checksum(&out[34..]), 0);
}

#[test]
fn every_reply_of_a_burst_from_a_remote_task_comes_from_the_vip() {
    let mut p = pipeline();
    let vip_mac = Mac::for_ip(VIP);
    let c1 = Mac::for_ip(ip(2));
    let host2 = Input::Underlay(SocketAddrV4::new(HOST2, 4789));
    // rr: the first flow goes to .3 here, the second to .4 on HOST2.
    for port in [40000, 40001] {
        let syn = l4_frame((ip(2), port), (VIP, 80), vip_mac, 6, SYN);
        run_plain(&mut p, Input::Tap(1), &syn);
    }
    // .4's replies arrive back to back with the same VXLAN and Ethernet
    // headers: each is looked up in connection tracking on its own.
    for flags in [SYN | ACK, ACK, ACK | PSH] {
        let reply = vxlan(VNI_A, &l4_frame((ip(4), 80), (ip(2), 40001), c1, 6, flags));
        let (v, out, _) = run_plain(&mut p, host2, &reply);
        assert_eq!(v, Verdict::ToTap(1));
        assert_eq!(src_ip(&out), VIP, "flags {flags:#x}");
        assert!(l4_ok(&out));
    }
    // In the same burst, a packet of no VIP flow keeps its source.
    let direct = vxlan(VNI_A, &l4_frame((ip(4), 22), (ip(2), 40001), c1, 6, ACK));
    let (v, out, _) = run_plain(&mut p, host2, &direct);
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(src_ip(&out), ip(4));
}

#[test]
fn a_fragmented_udp_datagram_to_a_vip_and_its_fragmented_reply() {
    let mut p = pipeline();
    let data: Vec<u8> = (0..100).map(|i| i as u8).collect();
    let query = l4_frame_with((ip(2), 5000), (VIP, 53), Mac::for_ip(VIP), 17, 0, &data);
    let (first, later) = fragment(&query, 32);
    // rr: .3, on port 2 here. Both fragments are translated alike.
    let (v, f1, _) = run_plain(&mut p, Input::Tap(1), &first);
    assert_eq!(v, Verdict::ToTap(2));
    let (v, f2, _) = run_plain(&mut p, Input::Tap(1), &later);
    assert_eq!(v, Verdict::ToTap(2));
    assert_eq!((dst_ip(&f1), dst_ip(&f2)), (ip(3), ip(3)));
    assert_eq!(&f2[..6], &Mac::for_ip(ip(3)).0, "the task's MAC");
    assert_eq!(checksum(&f2[14..34]), 0);
    assert!(
        l4_ok(&reassemble(&f1, &f2)),
        "the datagram's checksum holds"
    );
    // The task's answer, fragmented too, comes from the VIP in full.
    let answer = l4_frame_with((ip(3), 53), (ip(2), 5000), Mac::for_ip(ip(2)), 17, 0, &data);
    let (first, later) = fragment(&answer, 48);
    let (v, r1, _) = run_plain(&mut p, Input::Tap(2), &first);
    assert_eq!(v, Verdict::ToTap(1));
    let (v, r2, _) = run_plain(&mut p, Input::Tap(2), &later);
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!((src_ip(&r1), src_ip(&r2)), (VIP, VIP));
    assert_eq!(&r2[6..12], &Mac::for_ip(VIP).0);
    assert!(l4_ok(&reassemble(&r1, &r2)));
}

/// An ICMP echo request from c1 (.2) to the VIP with `n` bytes of data
/// (valid checksums, fragmentation allowed).
fn big_echo(n: usize) -> Vec<u8> {
    let mut f = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(VIP), ip(2), VIP);
    f[38..42].copy_from_slice(&[0x1c, 0x46, 0, 1]); // id, sequence
    f.extend((0..n).map(|i| (i % 251) as u8));
    let len = (f.len() - ethernet::HEADER_LEN) as u16;
    f[16..18].copy_from_slice(&len.to_be_bytes());
    f[20..22].copy_from_slice(&[0, 0]);
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let c = checksum(&f[34..]);
    f[36..38].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn a_fragmented_ping_to_a_vip_is_answered_in_full() {
    let mut p = pipeline();
    let echo = big_echo(1000);
    let (first, later) = fragment(&echo, 512);
    let (v, r1, _) = run_plain(&mut p, Input::Tap(1), &first);
    assert_eq!(v, Verdict::ToTap(1));
    let (v, r2, _) = run_plain(&mut p, Input::Tap(1), &later);
    assert_eq!(v, Verdict::ToTap(1), "the later fragment is answered too");
    for r in [&r1, &r2] {
        assert_eq!((src_ip(r), dst_ip(r)), (VIP, ip(2)));
        assert_eq!(&r[..6], &Mac::for_ip(ip(2)).0);
        assert_eq!(&r[6..12], &Mac::for_ip(VIP).0);
        assert_eq!(checksum(&r[14..34]), 0);
    }
    let reply = reassemble(&r1, &r2);
    assert_eq!(reply[34], 0, "an echo reply");
    assert_eq!(checksum(&reply[34..]), 0, "its checksum holds");
    assert_eq!(
        reply[38..],
        echo[38..],
        "with the request's id, sequence and data"
    );
    let followed = p
        .counters()
        .fragments_followed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(followed, 1);
}

#[test]
fn a_later_fragment_to_a_vip_is_never_taken_for_an_echo_request() {
    let mut p = pipeline();
    // Its data happens to start with 8 (echo request), where a first
    // fragment has its ICMP type; without its first it is not answered.
    let mut echo = big_echo(1000);
    echo[34 + 512] = 8;
    let (_, later) = fragment(&echo, 512);
    let (v, out, _) = run_plain(&mut p, Input::Tap(1), &later);
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
    assert_eq!(out, later, "left as it was");
}

#[test]
fn a_note_lives_a_second_and_a_dropped_first_fragment_leaves_none() {
    let data: Vec<u8> = (0..100).map(|i| i as u8).collect();
    let query = l4_frame_with((ip(2), 5000), (VIP, 53), Mac::for_ip(VIP), 17, 0, &data);
    let (first, later) = fragment(&query, 32);
    // Late: the note has lapsed, and a fragment without ports cannot be
    // balanced.
    let mut p = pipeline();
    let t0 = Instant::now();
    assert_eq!(
        run_at(&mut p, Input::Tap(1), &first, t0).0,
        Verdict::ToTap(2)
    );
    let late = t0 + crate::pipeline::fragments::LIFETIME + std::time::Duration::from_millis(1);
    assert_eq!(
        run_at(&mut p, Input::Tap(1), &later, late).0,
        Verdict::Drop(DropReason::Malformed)
    );
    // A datagram with the same ID whose first fragment is dropped (the VIP
    // is gone) takes nothing from the older one's note.
    let mut p = pipeline();
    assert_eq!(
        run_at(&mut p, Input::Tap(1), &first, t0).0,
        Verdict::ToTap(2)
    );
    let mut t = (*p.tables).clone();
    let net = t.networks.get_mut(&Vni::new(VNI_A).unwrap()).unwrap();
    net.vips.remove(&VIP);
    p.set_tables(Arc::new(t));
    let gone = Verdict::Drop(DropReason::UnknownDestination);
    assert_eq!(run_at(&mut p, Input::Tap(1), &first, t0).0, gone);
    assert_eq!(run_at(&mut p, Input::Tap(1), &later, t0).0, gone);
}
