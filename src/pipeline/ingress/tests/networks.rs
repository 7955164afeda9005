//! Published ports of a service on several networks.

use super::*;

const GATEWAY2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const TASK2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 4);
const VNI2: u32 = 4097;

/// `tables(me, true)` plus a second network of the service with a second
/// task (local on B, port 2); port 8000 is served by a pool over both
/// tasks, as `agent::tables` builds it for a service on two networks.
fn two_network_tables(me: Ipv4Addr) -> Tables {
    let mut t = tables(me, true);
    let vni2 = Vni::new(VNI2).unwrap();
    let mut net2 = NetworkTable::new(vni2, GATEWAY2);
    add_task(&mut t, &mut net2, me, 2, TASK2);
    let one = |ip| Backend { ip, weight: 1 };
    t.vips.push(VipTable::new(
        "web",
        Ipv4Addr::new(10, 0, 1, 100),
        vni2,
        "rr",
        vec![one(TASK2)],
    ));
    net2.vips.insert(Ipv4Addr::new(10, 0, 1, 100), 1);
    t.vips.push(VipTable::new(
        "web",
        VIP,
        Vni::new(VNI).unwrap(),
        "rr",
        vec![one(TASK), one(TASK2)],
    ));
    t.published
        .insert((TCP, 8000), Published { vip: 2, target: 80 });
    t.routed.insert(TASK2, vni2);
    t.networks.insert(vni2, net2);
    t
}

#[test]
fn a_published_port_reaches_tasks_on_every_network_of_the_service() {
    let counters = || Arc::new(Counters::default());
    let mut a = Pipeline::new(Arc::new(two_network_tables(HOST_A)), counters());
    let mut b = Pipeline::new(Arc::new(two_network_tables(HOST_B)), counters());
    let mut reached = Vec::new();
    for port in [7000, 7001] {
        let syn = tcp_packet((CLIENT, port), (HOST_A, 8000), SYN);
        let (v, d) = run(&mut a, Input::Host, &syn);
        assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789)));
        let vni = vxlan::parse(&d).unwrap().get();
        let inner = d[vxlan::HEADER_LEN..].to_vec();
        let eth = ethernet::Frame::new_checked(&inner[..]).unwrap();
        let (task, gateway) = (ends(&inner).1 .0, eth.src());
        assert!(checksums_ok(&inner));
        // Each task on its own network, from that network's gateway.
        let (want_vni, want_gw, want_port) = if task == TASK {
            (VNI, GATEWAY, 1)
        } else {
            (VNI2, GATEWAY2, 2)
        };
        assert_eq!((vni, gateway), (want_vni, Mac::for_gateway(want_gw)));
        assert_eq!(eth.dst(), Mac::for_ip(task));
        let (v, _) = run(&mut b, underlay(HOST_A), &d);
        assert_eq!(v, Verdict::ToTap(want_port));
        // The task's answer goes back through A, from the published port.
        let synack = frame(
            Mac::for_gateway(want_gw),
            Mac::for_ip(task),
            &tcp_packet((task, 80), (CLIENT, port), SYN | ACK),
        );
        let (v, d) = run(&mut b, Input::Tap(want_port), &synack);
        assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789)));
        let (v, f) = run(&mut a, underlay(HOST_B), &d);
        assert_eq!(v, Verdict::ToHost);
        assert_eq!(ends(&f), ((HOST_A, 8000), (CLIENT, port)));
        reached.push(task);
    }
    reached.sort();
    assert_eq!(reached, vec![TASK, TASK2], "rr over both networks' tasks");
}

#[test]
fn the_pool_keeps_its_round_robin_place_beside_a_vip_with_the_same_tasks() {
    // Every task on both networks: the first network's VIP and the pool
    // list the same tasks, with the same VIP address and scheduler.
    let mut t = two_network_tables(HOST_A);
    t.vips[0].backends = t.vips[2].backends.clone();
    let mut a = Pipeline::new(Arc::new(t), Arc::new(Counters::default()));
    let task_of = |a: &mut Pipeline, port| {
        let syn = tcp_packet((CLIENT, port), (HOST_A, 8000), SYN);
        let (v, d) = run(a, Input::Host, &syn);
        assert_eq!(v, Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789)));
        ends(&d[vxlan::HEADER_LEN..]).1 .0
    };
    assert_eq!(task_of(&mut a, 7000), TASK);
    // New tables with the same tasks (another container came, say).
    let same = (*a.tables).clone();
    a.set_tables(Arc::new(same));
    assert_eq!(
        task_of(&mut a, 7001),
        TASK2,
        "the next task, not the first one again"
    );
}
