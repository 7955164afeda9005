//! Two agents wired together in memory (as quinn's tests do): the host the
//! client reaches (A, no task) and the task's host (B). Every step of an
//! ingress flow, its reply, egress, and the refusals.

use super::*;
use crate::pipeline::lb::icmp::tests::{port_unreachable, udp_packet};
use crate::pipeline::lb::Backend;
use crate::pipeline::offload::pseudo_header_sum;
use crate::pipeline::tests::run_at;
use crate::pipeline::{Input, Pipeline, HEADROOM};
use crate::tables::{Endpoint, Peer, Port, PortId, Published, VipTable};
use crate::wire::l4::tcp_flags::{ACK, SYN};
use crate::wire::{checksum, checksum_fold, vxlan, vxlan::Vni};
use proptest::prelude::*;

const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 116);
const HOST_B: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 117);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const VNI: u32 = 4096;
const TCP: u8 = ipv4::protocol::TCP;

/// Puts task `ip` of network `net` (VNI `vni`) in `t`, the tables of host
/// `me`: local on B as port `port`, remote on A.
fn add_task(t: &mut Tables, net: &mut NetworkTable, me: Ipv4Addr, port: PortId, ip: Ipv4Addr) {
    let mac = Mac::for_ip(ip);
    let location = if me == HOST_B {
        let vni = net.vni;
        t.ports.insert(port, Port { vni, ip, mac });
        Location::Local(port)
    } else {
        Location::Remote(SocketAddrV4::new(HOST_B, 4789))
    };
    net.insert(Endpoint { ip, mac, location });
}

/// The tables of host `me`: the task is local on B (port 1), remote on A.
/// `tasks` false: the service has no task at all.
fn tables(me: Ipv4Addr, tasks: bool) -> Tables {
    let vni = Vni::new(VNI).unwrap();
    let mut t = Tables::default();
    let mut net = NetworkTable::new(vni, GATEWAY);
    let other = if me == HOST_A { HOST_B } else { HOST_A };
    add_task(&mut t, &mut net, me, 1, TASK);
    let backends = if tasks {
        vec![Backend {
            ip: TASK,
            weight: 1,
        }]
    } else {
        vec![]
    };
    t.vips.push(VipTable::new("web", VIP, vni, "rr", backends));
    net.vips.insert(VIP, 0);
    t.published
        .insert((TCP, 8000), Published { vip: 0, target: 80 });
    t.published.insert(
        (ipv4::protocol::UDP, 9001),
        Published {
            vip: 0,
            target: 9000,
        },
    );
    t.routed.insert(TASK, vni);
    t.egress = true;
    t.networks.insert(vni, net);
    t.peers.insert(
        other,
        Peer {
            port: 4789,
            agent: true,
        },
    );
    t
}

fn agent(me: Ipv4Addr, tasks: bool) -> Pipeline {
    Pipeline::new(Arc::new(tables(me, tasks)), Arc::new(Counters::default()))
}

/// An IPv4 TCP packet (no Ethernet header) with 4 bytes of payload and
/// valid checksums.
fn tcp_packet(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 20 + 4];
    ipv4::Repr {
        src: src.0,
        dst: dst.0,
        protocol: TCP,
        ttl: 64,
        ident: 7,
        dont_fragment: true,
        payload_len: 24,
    }
    .emit(&mut p)
    .unwrap();
    p[20..22].copy_from_slice(&src.1.to_be_bytes());
    p[22..24].copy_from_slice(&dst.1.to_be_bytes());
    p[24..28].copy_from_slice(&1000u32.to_be_bytes());
    p[32] = 0x50;
    p[33] = flags;
    p[40..].copy_from_slice(b"data");
    let pseudo = pseudo_header_sum(&p[..20], TCP, 24);
    let c = !(checksum_fold(pseudo, &p[20..]) as u16);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// `packet` behind an Ethernet header.
fn frame(dst: Mac, src: Mac, packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    ethernet::emit(&mut f, dst, src, ethernet::ethertype::IPV4).unwrap();
    f.extend_from_slice(packet);
    f
}

/// `packet` as the task sends it: to its gateway's MAC.
fn from_task(packet: &[u8]) -> Vec<u8> {
    frame(Mac::for_gateway(GATEWAY), Mac::for_ip(TASK), packet)
}

fn run(p: &mut Pipeline, input: Input, bytes: &[u8]) -> (Verdict, Vec<u8>) {
    run_at(p, input, bytes, Instant::now())
}

/// Addresses and ports of the IPv4 packet in an Ethernet frame.
fn ends(f: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let ip = ipv4::Packet::new_checked(&f[14..]).unwrap();
    let ports = l4::Ports::parse(ip.payload()).unwrap();
    ((ip.src(), ports.src), (ip.dst(), ports.dst))
}

fn checksums_ok(f: &[u8]) -> bool {
    let ip = ipv4::Packet::new_checked(&f[14..]).unwrap();
    let pseudo = pseudo_header_sum(&f[14..34], ip.protocol(), ip.payload().len());
    checksum(&f[14..34]) == 0 && !(checksum_fold(pseudo, ip.payload()) as u16) == 0
}

fn underlay(from: Ipv4Addr) -> Input {
    Input::Underlay(SocketAddrV4::new(from, 4789))
}

#[test]
fn a_client_reaches_a_task_on_another_host_and_the_reply_returns_through_the_same_host() {
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    // 1. The host stack hands A the client's SYN to its published port.
    let syn = tcp_packet((CLIENT, 5555), (HOST_A, 8000), SYN);
    let (v, d) = run(&mut a, Input::Host, &syn);
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789)));
    assert_eq!(vxlan::parse(&d).unwrap().get(), VNI);
    let inner = &d[vxlan::HEADER_LEN..];
    let eth = ethernet::Frame::new_checked(inner).unwrap();
    assert_eq!(
        (eth.dst(), eth.src()),
        (Mac::for_ip(TASK), Mac::for_gateway(GATEWAY))
    );
    assert_eq!(
        ends(inner),
        ((CLIENT, 5555), (TASK, 80)),
        "only the destination changes: the task sees the real client"
    );
    assert!(checksums_ok(inner));
    // 2. B delivers it to the task and notes that it came through A.
    let (v, f) = run(&mut b, underlay(HOST_A), &d);
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(f, inner);
    // 3. The task answers the client through its gateway: B sends it back to A.
    let synack = from_task(&tcp_packet((TASK, 80), (CLIENT, 5555), SYN | ACK));
    let (v, d) = run(&mut b, Input::Tap(1), &synack);
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789)));
    assert_eq!(
        b.counters()
            .egress
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // 4. A gives it the published address back and hands it to the host stack.
    let (v, f) = run(&mut a, underlay(HOST_B), &d);
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(ends(&f), ((HOST_A, 8000), (CLIENT, 5555)));
    assert!(checksums_ok(&f));
    // 5. The next segment of the flow goes to the same task.
    let ack = tcp_packet((CLIENT, 5555), (HOST_A, 8000), ACK);
    let (v, d) = run(&mut a, Input::Host, &ack);
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789)));
    assert_eq!(ends(&d[vxlan::HEADER_LEN..]).1, (TASK, 80));
}

/// An ICMP echo request (`kind` 8) or reply (0) `src` -> `dst` (IPv4, no
/// Ethernet header), identifier 7.
fn echo(kind: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8];
    ipv4::Repr {
        src,
        dst,
        protocol: ipv4::protocol::ICMP,
        ttl: 64,
        ident: 8,
        dont_fragment: true,
        payload_len: 8,
    }
    .emit(&mut p)
    .unwrap();
    p[20] = kind;
    p[24..28].copy_from_slice(&[0, 7, 0, 1]);
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

/// The pipelines of A and B, where A's stack sends from its door `door`.
fn with_doors(door: Ipv4Addr) -> (Pipeline, Pipeline) {
    let mut ta = tables(HOST_A, true);
    ta.own_door = Some(door);
    let mut tb = tables(HOST_B, true);
    tb.host_doors.insert(door, SocketAddrV4::new(HOST_A, 4789));
    tb.own_door = Some(Ipv4Addr::new(169, 254, 100, 117));
    let counters = || Arc::new(Counters::default());
    (
        Pipeline::new(Arc::new(ta), counters()),
        Pipeline::new(Arc::new(tb), counters()),
    )
}

#[test]
fn the_hosts_own_traffic_to_a_task_on_another_host_is_answered() {
    // A's stack reaches the task from A's TUN address, its door.
    let door = Ipv4Addr::new(169, 254, 100, 116);
    let (mut a, mut b) = with_doors(door);
    for sent in [
        tcp_packet((door, 50000), (TASK, 80), SYN),
        echo(8, door, TASK),
    ] {
        let (v, d) = run(&mut a, Input::Host, &sent);
        assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789)));
        assert_eq!(run(&mut b, underlay(HOST_A), &d).0, Verdict::ToTap(1));
    }
    // The task's answers go back to A's stack.
    for answer in [
        tcp_packet((TASK, 80), (door, 50000), SYN | ACK),
        echo(0, TASK, door),
    ] {
        let f = from_task(&answer);
        let (v, d) = run(&mut b, Input::Tap(1), &f);
        assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789)));
        let (v, f) = run(&mut a, underlay(HOST_B), &d);
        assert_eq!(v, Verdict::ToHost);
        assert_eq!(&f[14..], &answer[..], "as the task sent it");
    }
    // The host as a client of its own published port (`curl 127.0.0.1:8000`
    // comes from the door too): the reply is the published port's, not a
    // door answer, and is translated back.
    let (v, d) = run(
        &mut a,
        Input::Host,
        &tcp_packet((door, 50001), (HOST_A, 8000), SYN),
    );
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789)));
    assert_eq!(run(&mut b, underlay(HOST_A), &d).0, Verdict::ToTap(1));
    let f = from_task(&tcp_packet((TASK, 80), (door, 50001), SYN | ACK));
    let (v, d) = run(&mut b, Input::Tap(1), &f);
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789)));
    let (v, f) = run(&mut a, underlay(HOST_B), &d);
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(ends(&f), ((HOST_A, 8000), (door, 50001)));
}

#[test]
fn a_door_lets_in_answers_only() {
    let door = Ipv4Addr::new(169, 254, 100, 116);
    let (mut a, mut b) = with_doors(door);
    // Nothing A's stack opened: a container's SYN or echo request to A's
    // door, or a reply to a port A never used, goes no further than A.
    for opening in [
        tcp_packet((TASK, 40000), (door, 22), SYN),
        tcp_packet((TASK, 80), (door, 50000), SYN | ACK),
        echo(8, TASK, door),
        echo(0, TASK, door),
    ] {
        let f = from_task(&opening);
        let (v, d) = run(&mut b, Input::Tap(1), &f);
        assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789)));
        assert_eq!(
            run(&mut a, underlay(HOST_B), &d).0,
            Verdict::Drop(DropReason::UntrackedFlow)
        );
    }
    // Nor on the container's own host, to that host's door.
    let own = Ipv4Addr::new(169, 254, 100, 117);
    let f = from_task(&tcp_packet((TASK, 40000), (own, 22), SYN));
    assert_eq!(
        run(&mut b, Input::Tap(1), &f).0,
        Verdict::Drop(DropReason::UntrackedFlow)
    );
    // Its own host's stack opened one: that answer is let in.
    let (v, _) = run(
        &mut b,
        Input::Host,
        &tcp_packet((own, 51000), (TASK, 80), SYN),
    );
    assert_eq!(v, Verdict::ToTap(1));
    let f = from_task(&tcp_packet((TASK, 80), (own, 51000), SYN | ACK));
    assert_eq!(run(&mut b, Input::Tap(1), &f).0, Verdict::ToHost);
    // A door that is no host's own is not let in anywhere.
    let mut d = vec![0u8; 8];
    vxlan::emit(&mut d, Vni::new(VNI).unwrap()).unwrap();
    d.extend_from_slice(&from_task(&echo(
        0,
        TASK,
        Ipv4Addr::new(169, 254, 100, 118),
    )));
    assert_eq!(
        run(&mut a, underlay(HOST_B), &d).0,
        Verdict::Drop(DropReason::NoRoute)
    );
}

#[test]
fn a_task_on_the_ingress_host_is_reached_directly() {
    let mut b = agent(HOST_B, true);
    let syn = tcp_packet((CLIENT, 6000), (Ipv4Addr::LOCALHOST, 8000), SYN);
    let (v, f) = run(&mut b, Input::Host, &syn);
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(ends(&f), ((CLIENT, 6000), (TASK, 80)));
    let reply = from_task(&tcp_packet((TASK, 80), (CLIENT, 6000), SYN | ACK));
    let (v, f) = run(&mut b, Input::Tap(1), &reply);
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(ends(&f), ((Ipv4Addr::LOCALHOST, 8000), (CLIENT, 6000)));
    assert!(checksums_ok(&f));
}

#[test]
fn egress_goes_to_the_host_and_other_networks_stay_closed() {
    let mut b = agent(HOST_B, true);
    let out = from_task(&tcp_packet((TASK, 40000), (CLIENT, 80), SYN));
    let (v, f) = run(&mut b, Input::Tap(1), &out);
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(f, out, "egress is masqueraded by the host, not here");
    assert_eq!(
        b.counters()
            .egress
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // To an overlay address through the gateway: never via the host.
    let routed = from_task(&tcp_packet((TASK, 40000), (TASK, 80), SYN));
    assert_eq!(
        run(&mut b, Input::Tap(1), &routed).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    // The host's replies to egress (NAT undone by the kernel) reach the task.
    let back = tcp_packet((CLIENT, 80), (TASK, 40000), SYN | ACK);
    let (v, f) = run(&mut b, Input::Host, &back);
    assert_eq!(v, Verdict::ToTap(1));
    let eth = ethernet::Frame::new_checked(&f[..]).unwrap();
    assert_eq!(
        (eth.dst(), eth.src()),
        (Mac::for_ip(TASK), Mac::for_gateway(GATEWAY))
    );
    assert_eq!(&f[14..], &back[..]);
}

#[test]
fn refusals_are_answered_at_once() {
    let mut empty = agent(HOST_A, false);
    let syn = tcp_packet((CLIENT, 5555), (HOST_A, 8000), SYN);
    let (v, f) = run(&mut empty, Input::Host, &syn);
    assert_eq!(v, Verdict::ToHost, "no task: RST to the client");
    assert_eq!(ends(&f), ((HOST_A, 8000), (CLIENT, 5555)));
    assert_ne!(f[14 + 20 + 13] & l4::tcp_flags::RST, 0);
    assert_eq!(empty.counters().dropped(DropReason::NoBackend), 1);
    let mut a = agent(HOST_A, true);
    let late = tcp_packet((CLIENT, 5556), (HOST_A, 8000), ACK);
    let (v, f) = run(&mut a, Input::Host, &late);
    assert_eq!(v, Verdict::ToHost, "a segment of an unknown flow: RST");
    assert_ne!(f[14 + 20 + 13] & l4::tcp_flags::RST, 0);
    let other = tcp_packet((CLIENT, 5555), (HOST_A, 9999), SYN);
    assert_eq!(
        run(&mut a, Input::Host, &other).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    assert_eq!(
        run(&mut a, Input::Host, &syn[..30]).0,
        Verdict::Drop(DropReason::Malformed)
    );
}

#[test]
fn a_tasks_icmp_error_returns_through_the_ingress_host_translated() {
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    let sent = udp_packet((CLIENT, 5555), (HOST_A, 9001));
    let (v, d) = run(&mut a, Input::Host, &sent);
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789)));
    let (v, got) = run(&mut b, underlay(HOST_A), &d);
    assert_eq!(v, Verdict::ToTap(1));
    // Nothing listens on the task's port 9000: it answers port unreachable.
    let error = from_task(&port_unreachable(TASK, CLIENT, &got[14..]));
    let (v, d) = run(&mut b, Input::Tap(1), &error);
    assert_eq!(
        v,
        Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789)),
        "back the way it came"
    );
    let (v, f) = run(&mut a, underlay(HOST_B), &d);
    assert_eq!(v, Verdict::ToHost);
    // The error the client's stack expects: from .116, about what it sent.
    assert_eq!(&f[14..], &port_unreachable(HOST_A, CLIENT, &sent)[..]);
}

#[test]
fn an_icmp_error_about_a_reply_reaches_the_task_translated() {
    const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    let sent = udp_packet((CLIENT, 5555), (HOST_A, 9001));
    let (_, d) = run(&mut a, Input::Host, &sent);
    let (v, _) = run(&mut b, underlay(HOST_A), &d);
    assert_eq!(v, Verdict::ToTap(1));
    // The task's reply leaves through .116 as .116:9001.
    let reply = udp_packet((TASK, 9000), (CLIENT, 5555));
    let (v, d) = run(&mut b, Input::Tap(1), &from_task(&reply));
    assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789)));
    let (v, left) = run(&mut a, underlay(HOST_B), &d);
    assert_eq!(v, Verdict::ToHost);
    // A router on the client's side cannot forward it and says so to .116.
    let error = port_unreachable(ROUTER, HOST_A, &left[14..]);
    let (v, d) = run(&mut a, Input::Host, &error);
    assert_eq!(
        v,
        Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789)),
        "to the task's host"
    );
    let (v, got) = run(&mut b, underlay(HOST_A), &d);
    assert_eq!(v, Verdict::ToTap(1));
    // What the task's stack can match: to the task, about what it sent.
    assert_eq!(&got[14..], &port_unreachable(ROUTER, TASK, &reply)[..]);
    // An error about no flow of ours goes nowhere.
    let stray = udp_packet((HOST_A, 9001), (CLIENT, 6666));
    let (v, _) = run(
        &mut a,
        Input::Host,
        &port_unreachable(ROUTER, HOST_A, &stray),
    );
    assert_eq!(v, Verdict::Drop(DropReason::UntrackedFlow));
}

proptest! {
    #[test]
    fn arbitrary_packets_from_the_host_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..120),
        seed in any::<bool>(),
        edits in proptest::collection::vec((0usize..44, any::<u8>()), 0..6),
        headroom in 0usize..HEADROOM,
    ) {
        let mut p = agent(HOST_A, true);
        let mut packet = if seed { tcp_packet((CLIENT, 1), (HOST_A, 8000), SYN) } else { bytes };
        for (at, b) in edits {
            if let Some(x) = packet.get_mut(at) { *x = b; }
        }
        let mut buf = vec![0u8; headroom + packet.len()];
        buf[headroom..].copy_from_slice(&packet);
        let mut pkt = Packet::new(&mut buf, headroom, packet.len());
        let v = p.process(Instant::now(), Input::Host, &mut pkt);
        prop_assert!(pkt.start <= pkt.end && pkt.end <= pkt.buf.len());
        if let Verdict::ToUnderlay(_) = v {
            prop_assert!(vxlan::parse(pkt.bytes()).is_ok());
        }
        // The batch prefetch reads the same bytes, with a flow tracked now.
        p.prefetch(Input::Host, &packet);
        p.prefetch(Input::Tap(1), &packet);
        p.prefetch(Input::Underlay(SocketAddrV4::new(HOST_A, 4789)), &packet);
    }
}

#[test]
fn every_flow_of_a_burst_from_the_ingress_host_learns_its_way_back() {
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    // Two clients' SYNs reach B back to back with the same VXLAN and
    // Ethernet headers (task's MAC, gateway's MAC): the second takes the
    // first one's way, and its return path is noted all the same.
    let ports = [5001, 5002, 5003];
    for port in ports {
        let syn = tcp_packet((CLIENT, port), (HOST_A, 8000), SYN);
        let (_, d) = run(&mut a, Input::Host, &syn);
        assert_eq!(run(&mut b, underlay(HOST_A), &d).0, Verdict::ToTap(1));
    }
    for port in ports {
        let synack = from_task(&tcp_packet((TASK, 80), (CLIENT, port), SYN | ACK));
        assert_eq!(
            run(&mut b, Input::Tap(1), &synack).0,
            Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789)),
            "client port {port}"
        );
    }
}

/// An IPv4 UDP packet (no Ethernet header) with `n` bytes of payload and
/// valid checksums.
fn udp_datagram(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), n: usize) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + n];
    ipv4::Repr {
        src: src.0,
        dst: dst.0,
        protocol: ipv4::protocol::UDP,
        ttl: 64,
        ident: 77,
        dont_fragment: false,
        payload_len: 8 + n,
    }
    .emit(&mut p)
    .unwrap();
    p[20..22].copy_from_slice(&src.1.to_be_bytes());
    p[22..24].copy_from_slice(&dst.1.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + n) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let pseudo = pseudo_header_sum(&p[..20], ipv4::protocol::UDP, 8 + n);
    let c = !(checksum_fold(pseudo, &p[20..]) as u16);
    p[26..28].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn a_fragmented_datagram_to_a_published_port_and_its_fragmented_answer() {
    use crate::pipeline::tests::{fragment, reassemble};
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    let ip_only = |f: &[u8]| f[ethernet::HEADER_LEN..].to_vec();
    // 1. The host stack hands A the client's datagram in two fragments.
    let query = frame(
        Mac([0; 6]),
        Mac([0; 6]),
        &udp_datagram((CLIENT, 4000), (HOST_A, 9001), 200),
    );
    let (first, later) = fragment(&query, 96);
    let to_b = Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789));
    let (v, d1) = run(&mut a, Input::Host, &ip_only(&first));
    assert_eq!(v, to_b);
    let (v, d2) = run(&mut a, Input::Host, &ip_only(&later));
    assert_eq!(v, to_b, "the later fragment follows the first");
    assert_eq!(d1[..vxlan::HEADER_LEN + 14], d2[..vxlan::HEADER_LEN + 14]);
    assert_eq!(ends(&d1[8..]), ((CLIENT, 4000), (TASK, 9000)));
    assert_eq!(
        &d2[8 + 26..8 + 34],
        &[CLIENT.octets(), TASK.octets()].concat()[..]
    );
    // 2. B delivers both to the task; it would reassemble them.
    let (v, f1) = run(&mut b, underlay(HOST_A), &d1);
    assert_eq!(v, Verdict::ToTap(1));
    let (v, f2) = run(&mut b, underlay(HOST_A), &d2);
    assert_eq!(v, Verdict::ToTap(1));
    assert!(checksums_ok(&reassemble(&f1, &f2)));
    // 3. The task's answer, in two fragments, goes back through A.
    let answer = from_task(&udp_datagram((TASK, 9000), (CLIENT, 4000), 300));
    let (first, later) = fragment(&answer, 200);
    let to_a = Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789));
    let (v, r1) = run(&mut b, Input::Tap(1), &first);
    assert_eq!(v, to_a);
    let (v, r2) = run(&mut b, Input::Tap(1), &later);
    assert_eq!(v, to_a, "not out of B's own host as egress");
    // 4. A gives both the published address back, for the host stack.
    let (v, h1) = run(&mut a, underlay(HOST_B), &r1);
    assert_eq!(v, Verdict::ToHost);
    let (v, h2) = run(&mut a, underlay(HOST_B), &r2);
    assert_eq!(v, Verdict::ToHost);
    let whole = reassemble(&h1, &h2);
    assert_eq!(ends(&whole), ((HOST_A, 9001), (CLIENT, 4000)));
    assert!(checksums_ok(&whole));
}

#[test]
fn only_ipv4_is_routed_through_the_gateway() {
    let mut b = agent(HOST_B, true);
    let syn = tcp_packet((CLIENT, 6001), (Ipv4Addr::LOCALHOST, 8000), SYN);
    assert_eq!(run(&mut b, Input::Host, &syn).0, Verdict::ToTap(1));
    // The task's reply, but marked as IPv6: not parsed as IPv4 whatever
    // its bytes look like, neither from the task nor from another agent.
    let mut reply = from_task(&tcp_packet((TASK, 80), (CLIENT, 6001), SYN | ACK));
    reply[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    assert_eq!(
        run(&mut b, Input::Tap(1), &reply).0,
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
    let mut a = agent(HOST_A, true);
    let mut d = vec![0u8; vxlan::HEADER_LEN];
    vxlan::emit(&mut d, vxlan::Vni::new(VNI).unwrap()).unwrap();
    d.extend_from_slice(&reply);
    assert_eq!(
        run(&mut a, underlay(HOST_B), &d).0,
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
}

mod fragments;
mod networks;
