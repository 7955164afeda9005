//! The pipeline against hand-built frames, and the never-panics property.

use super::*;
use crate::tables::{Endpoint, NetworkTable, Peer, Port};
use crate::wire::{arp as warp, ethernet, ipv4, vxlan, vxlan::Vni, Mac};
use proptest::prelude::*;
use std::net::Ipv4Addr;

const VNI_A: u32 = 4096;
const VNI_B: u32 = 4097;
const HOST2: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 117);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 66);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

/// Network A: c1 (.2, port 1) and c2 (.3, port 2) here, c3 (.4) on HOST2.
/// Network B: c4 (.2, port 3) here: the same IP as c1, in another network.
fn tables() -> Tables {
    let mut t = Tables::default();
    let mut a = NetworkTable::new(Vni::new(VNI_A).unwrap(), ip(1));
    let remote = SocketAddrV4::new(HOST2, 4789);
    for (last, loc) in [
        (2, Location::Local(1)),
        (3, Location::Local(2)),
        (4, Location::Remote(remote)),
    ] {
        a.insert(Endpoint {
            ip: ip(last),
            mac: Mac::for_ip(ip(last)),
            location: loc,
        });
    }
    let mut b = NetworkTable::new(Vni::new(VNI_B).unwrap(), ip(1));
    b.insert(Endpoint {
        ip: ip(2),
        mac: Mac([2, 0x43, 10, 0, 0, 2]),
        location: Location::Local(3),
    });
    t.networks.insert(a.vni, a);
    t.networks.insert(b.vni, b);
    for (port, vni, last) in [(1, VNI_A, 2), (2, VNI_A, 3)] {
        t.ports.insert(
            port,
            Port {
                vni: Vni::new(vni).unwrap(),
                ip: ip(last),
                mac: Mac::for_ip(ip(last)),
            },
        );
    }
    t.ports.insert(
        3,
        Port {
            vni: Vni::new(VNI_B).unwrap(),
            ip: ip(2),
            mac: Mac([2, 0x43, 10, 0, 0, 2]),
        },
    );
    t.peers.insert(
        HOST2,
        Peer {
            port: 4789,
            agent: true,
        },
    );
    t
}

fn pipeline() -> Pipeline {
    Pipeline::new(Arc::new(tables()), Arc::new(Counters::default()))
}

/// An Ethernet + IPv4 + 8-byte ICMP echo frame.
fn ipv4_frame(src_mac: Mac, dst_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; ethernet::HEADER_LEN + 28];
    ethernet::emit(&mut f, dst_mac, src_mac, ethernet::ethertype::IPV4).unwrap();
    let r = ipv4::Repr {
        src,
        dst,
        protocol: ipv4::protocol::ICMP,
        ttl: 64,
        ident: 1,
        dont_fragment: true,
        payload_len: 8,
    };
    r.emit(&mut f[14..]).unwrap();
    f[34] = 8;
    f
}

fn arp_request(src_mac: Mac, src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    ethernet::emit(&mut f, Mac::BROADCAST, src_mac, ethernet::ethertype::ARP).unwrap();
    let r = warp::Repr {
        operation: warp::OP_REQUEST,
        sender_mac: src_mac,
        sender_ip: src,
        target_mac: Mac::ZERO,
        target_ip: target,
    };
    r.emit(&mut f[14..]).unwrap();
    f
}

/// Runs `frame` through the pipeline, placed after the usual headroom.
/// Runs `frame` at `now`, with room after it for a frame that grows.
pub(crate) fn run_at(
    p: &mut Pipeline,
    input: Input,
    frame: &[u8],
    now: Instant,
) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + frame.len() + 100];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    let mut pkt = Packet::new(&mut buf, HEADROOM, frame.len());
    let v = p.process(now, input, &mut pkt);
    (v, pkt.bytes().to_vec())
}

fn run(p: &mut Pipeline, input: Input, frame: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + frame.len()];
    buf[HEADROOM..].copy_from_slice(frame);
    let mut pkt = Packet::new(&mut buf, HEADROOM, frame.len());
    let v = p.process(Instant::now(), input, &mut pkt);
    (v, pkt.bytes().to_vec())
}

/// Cuts the IPv4 packet in an Ethernet frame (no IP options) in two
/// fragments after `cut` bytes of its payload (a multiple of 8).
pub(super) fn fragment(frame: &[u8], cut: usize) -> (Vec<u8>, Vec<u8>) {
    let (head, payload) = frame.split_at(ethernet::HEADER_LEN + 20);
    let piece = |bytes: &[u8], field: u16| {
        let mut f = head.to_vec();
        f.extend_from_slice(bytes);
        let ip = &mut f[ethernet::HEADER_LEN..];
        ip[2..4].copy_from_slice(&((20 + bytes.len()) as u16).to_be_bytes());
        ip[6..8].copy_from_slice(&field.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = crate::wire::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f
    };
    (
        piece(&payload[..cut], 0x2000),
        piece(&payload[cut..], (cut / 8) as u16),
    )
}

/// The two fragments of an Ethernet frame put back together, as the
/// receiver's stack would: the first's headers, both payloads.
pub(super) fn reassemble(first: &[u8], later: &[u8]) -> Vec<u8> {
    let mut f = first.to_vec();
    f.extend_from_slice(&later[ethernet::HEADER_LEN + 20..]);
    let ip = &mut f[ethernet::HEADER_LEN..];
    let total = ip.len() as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = crate::wire::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f
}

fn vxlan(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    vxlan::emit(&mut d, Vni::new(vni).unwrap()).unwrap();
    d.extend_from_slice(frame);
    d
}

#[test]
fn arp_for_a_remote_endpoint_is_answered_locally() {
    let mut p = pipeline();
    let (v, out) = run(
        &mut p,
        Input::Tap(1),
        &arp_request(Mac::for_ip(ip(2)), ip(2), ip(4)),
    );
    assert_eq!(v, Verdict::ToTap(1));
    let eth = ethernet::Frame::new_checked(&out).unwrap();
    assert_eq!(eth.dst(), Mac::for_ip(ip(2)));
    assert_eq!(eth.src(), Mac::for_ip(ip(4)));
    let a = warp::Repr::parse(&warp::Packet::new_checked(eth.payload()).unwrap());
    assert_eq!(a.operation, warp::OP_REPLY);
    assert_eq!((a.sender_ip, a.sender_mac), (ip(4), Mac::for_ip(ip(4))));
    assert_eq!((a.target_ip, a.target_mac), (ip(2), Mac::for_ip(ip(2))));
    assert_eq!(
        p.counters()
            .arp_replies
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn arp_for_the_gateway_and_for_strangers() {
    let mut p = pipeline();
    let (v, out) = run(
        &mut p,
        Input::Tap(1),
        &arp_request(Mac::for_ip(ip(2)), ip(2), ip(1)),
    );
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(
        ethernet::Frame::new_checked(&out).unwrap().src(),
        Mac::for_gateway(ip(1))
    );
    let (v, _) = run(
        &mut p,
        Input::Tap(1),
        &arp_request(Mac::for_ip(ip(2)), ip(2), ip(99)),
    );
    assert_eq!(v, Verdict::Drop(DropReason::ArpIgnored));
    assert_eq!(p.counters().dropped(DropReason::ArpIgnored), 1);
    // Duplicate-address probes (sender 0.0.0.0, RFC 5227): one for the
    // asker's own address is no conflict and gets no answer; one for an
    // address in use elsewhere is answered, so the asker sees the conflict.
    let probe = |target| arp_request(Mac::for_ip(ip(2)), Ipv4Addr::UNSPECIFIED, target);
    let (v, _) = run(&mut p, Input::Tap(1), &probe(ip(2)));
    assert_eq!(v, Verdict::Drop(DropReason::ArpIgnored));
    let (v, out) = run(&mut p, Input::Tap(1), &probe(ip(4)));
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(
        ethernet::Frame::new_checked(&out).unwrap().src(),
        Mac::for_ip(ip(4))
    );
}

#[test]
fn local_frames_are_switched_between_taps() {
    let mut p = pipeline();
    let f = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(ip(3)), ip(2), ip(3));
    let (v, out) = run(&mut p, Input::Tap(1), &f);
    assert_eq!(v, Verdict::ToTap(2));
    assert_eq!(out, f);
}

#[test]
fn remote_frames_are_encapsulated_with_the_network_vni() {
    let mut p = pipeline();
    let f = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(ip(4)), ip(2), ip(4));
    let (v, out) = run(&mut p, Input::Tap(1), &f);
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST2, 4789)));
    assert_eq!(&out[..8], &[0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0]);
    assert_eq!(&out[8..], &f[..]);
}

#[test]
fn vxlan_from_a_member_is_delivered_to_the_tap() {
    let mut p = pipeline();
    let f = ipv4_frame(Mac::for_ip(ip(4)), Mac::for_ip(ip(3)), ip(4), ip(3));
    let (v, out) = run(
        &mut p,
        Input::Underlay(SocketAddrV4::new(HOST2, 40000)),
        &vxlan(VNI_A, &f),
    );
    assert_eq!(v, Verdict::ToTap(2));
    assert_eq!(out, f);
}

#[test]
fn vxlan_from_strangers_or_unknown_vnis_is_dropped() {
    let mut p = pipeline();
    let f = ipv4_frame(Mac::for_ip(ip(4)), Mac::for_ip(ip(3)), ip(4), ip(3));
    let (v, _) = run(
        &mut p,
        Input::Underlay(SocketAddrV4::new(STRANGER, 4789)),
        &vxlan(VNI_A, &f),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NotMember));
    let (v, _) = run(
        &mut p,
        Input::Underlay(SocketAddrV4::new(HOST2, 4789)),
        &vxlan(4999, &f),
    );
    assert_eq!(v, Verdict::Drop(DropReason::UnknownVni));
    let mut no_i_flag = vxlan(VNI_A, &f);
    no_i_flag[0] = 0;
    let (v, _) = run(
        &mut p,
        Input::Underlay(SocketAddrV4::new(HOST2, 4789)),
        &no_i_flag,
    );
    assert_eq!(v, Verdict::Drop(DropReason::Malformed));
}

#[test]
fn arp_from_a_plain_vtep_is_answered_through_the_tunnel() {
    let mut p = pipeline();
    let req = arp_request(Mac::for_ip(ip(4)), ip(4), ip(2));
    let (v, out) = run(
        &mut p,
        Input::Underlay(SocketAddrV4::new(HOST2, 51234)),
        &vxlan(VNI_A, &req),
    );
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST2, 4789)));
    assert_eq!(vxlan::parse(&out).unwrap().get(), VNI_A);
    let eth = ethernet::Frame::new_checked(&out[8..]).unwrap();
    assert_eq!(
        (eth.src(), eth.dst()),
        (Mac::for_ip(ip(2)), Mac::for_ip(ip(4)))
    );
}

#[test]
fn networks_are_isolated() {
    let mut p = pipeline();
    // c4 in network B sends to c3's MAC, which only network A knows.
    let f = ipv4_frame(
        Mac([2, 0x43, 10, 0, 0, 2]),
        Mac::for_ip(ip(3)),
        ip(2),
        ip(3),
    );
    let (v, _) = run(&mut p, Input::Tap(3), &f);
    assert_eq!(v, Verdict::Drop(DropReason::UnknownDestination));
    // Network B's ARP does not see network A's endpoints.
    let (v, _) = run(
        &mut p,
        Input::Tap(3),
        &arp_request(Mac([2, 0x43, 10, 0, 0, 2]), ip(2), ip(3)),
    );
    assert_eq!(v, Verdict::Drop(DropReason::ArpIgnored));
}

#[test]
fn floods_spoofs_and_hairpins_are_dropped() {
    let mut p = pipeline();
    let f = ipv4_frame(
        Mac::for_ip(ip(2)),
        Mac::BROADCAST,
        ip(2),
        Ipv4Addr::BROADCAST,
    );
    assert_eq!(
        run(&mut p, Input::Tap(1), &f).0,
        Verdict::Drop(DropReason::Flood)
    );
    let f = ipv4_frame(Mac::for_ip(ip(9)), Mac::for_ip(ip(3)), ip(2), ip(3));
    assert_eq!(
        run(&mut p, Input::Tap(1), &f).0,
        Verdict::Drop(DropReason::Spoofed)
    );
    // Its own MAC, another task's address: a forged reply or RST.
    let f = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(ip(3)), ip(3), ip(3));
    assert_eq!(
        run(&mut p, Input::Tap(1), &f).0,
        Verdict::Drop(DropReason::Spoofed)
    );
    // ... unless the address is one of its other interfaces' (a container
    // on two networks answers from either through its default route).
    let mut t = tables();
    t.sibling_ips.insert(1, Box::new([ip(3)]));
    let mut two = Pipeline::new(Arc::new(t), Arc::new(Counters::default()));
    let f = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(ip(3)), ip(3), ip(3));
    assert_eq!(run(&mut two, Input::Tap(1), &f).0, Verdict::ToTap(2));
    let f = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(ip(2)), ip(2), ip(2));
    assert_eq!(
        run(&mut p, Input::Tap(1), &f).0,
        Verdict::Drop(DropReason::Hairpin)
    );
    let f = ipv4_frame(
        Mac::for_ip(ip(2)),
        Mac::for_ip(ip(1)),
        ip(2),
        Ipv4Addr::new(8, 8, 8, 8),
    );
    assert_eq!(
        run(&mut p, Input::Tap(1), &f).0,
        Verdict::Drop(DropReason::NoRoute),
        "egress, on a host that does not masquerade it"
    );
    assert_eq!(
        run(&mut p, Input::Tap(77), &f).0,
        Verdict::Drop(DropReason::UnknownPort)
    );
}

#[test]
fn a_buffer_without_headroom_is_dropped_not_panicked() {
    let mut p = pipeline();
    let f = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(ip(4)), ip(2), ip(4));
    let mut buf = f.clone();
    let mut pkt = Packet::new(&mut buf, 0, f.len());
    assert_eq!(
        p.process(Instant::now(), Input::Tap(1), &mut pkt),
        Verdict::Drop(DropReason::NoHeadroom)
    );
}

/// Real frames to seed the never-panics property with.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        arp_request(Mac::for_ip(ip(2)), ip(2), ip(4)),
        ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(ip(4)), ip(2), ip(4)),
        vxlan(
            VNI_A,
            &ipv4_frame(Mac::for_ip(ip(4)), Mac::for_ip(ip(3)), ip(4), ip(3)),
        ),
        vxlan(VNI_A, &arp_request(Mac::for_ip(ip(4)), ip(4), ip(2))),
    ]
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        (
            0..seeds.len(),
            proptest::collection::vec((0usize..100, any::<u8>()), 0..8),
            0usize..120
        )
            .prop_map(move |(i, edits, cut)| {
                let mut f = seeds[i].clone();
                for (at, b) in edits {
                    if !f.is_empty() {
                        let n = f.len();
                        f[at % n] = b;
                    }
                }
                f.truncate(cut.max(1).min(f.len()));
                f
            }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(frame in mutated(), port in 0u32..5, from_tap in any::<bool>(), headroom in 0usize..HEADROOM) {
        let mut p = pipeline();
        let mut buf = vec![0u8; headroom + frame.len()];
        buf[headroom..].copy_from_slice(&frame);
        let mut pkt = Packet::new(&mut buf, headroom, frame.len());
        let input = if from_tap { Input::Tap(port) } else { Input::Underlay(SocketAddrV4::new(HOST2, 4789)) };
        let v = p.process(Instant::now(), input, &mut pkt);
        prop_assert!(pkt.start <= pkt.end && pkt.end <= pkt.buf.len());
        if let Verdict::ToUnderlay(_) = v {
            prop_assert!(vxlan::parse(pkt.bytes()).is_ok());
        }
        // The batch prefetch reads the same bytes (with whatever the frame
        // left in the tables).
        p.prefetch(input, &frame);
        // Every parser on its own, too.
        let _ = ethernet::Frame::new_checked(&frame).map(|f| (f.dst(), f.src(), f.ethertype(), f.payload().len()));
        let _ = warp::Packet::new_checked(&frame).map(|a| warp::Repr::parse(&a));
        let _ = ipv4::Packet::new_checked(&frame).map(|i| (i.payload().len(), i.checksum_ok(), i.is_first_fragment()));
        let _ = crate::wire::l4::TcpHeader::parse(&frame);
        let _ = crate::wire::l4::IcmpHeader::parse(&frame);
        let _ = vxlan::parse(&frame);
    }
}

mod burst;
mod fragments;
mod vip;

#[test]
fn only_an_agent_can_leave_the_inner_checksum_partial() {
    let plain = Ipv4Addr::new(192, 168, 100, 50);
    let mut t = tables();
    t.peers.insert(
        plain,
        Peer {
            port: 4789,
            agent: false,
        },
    );
    let mut p = Pipeline::new(Arc::new(t), Arc::new(Counters::default()));
    let f = ipv4_frame(Mac::for_ip(ip(4)), Mac::for_ip(ip(2)), ip(4), ip(2));
    let mut d = vxlan(VNI_A, &f);
    vxlan::set_csum_partial(&mut d);
    // Twice each: the second of a burst takes the memo's short way.
    for (from, partial) in [(HOST2, true), (HOST2, true), (plain, false), (plain, false)] {
        let mut buf = vec![0u8; HEADROOM + d.len()];
        buf[HEADROOM..].copy_from_slice(&d);
        let mut pkt = Packet::new(&mut buf, HEADROOM, d.len());
        let input = Input::Underlay(SocketAddrV4::new(from, 4789));
        assert_eq!(
            p.process(Instant::now(), input, &mut pkt),
            Verdict::ToTap(1)
        );
        assert_eq!(pkt.csum_partial, partial, "from {from}");
    }
}
