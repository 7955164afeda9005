//! The rest of a burst from the underlay reuses the first datagram's table
//! lookups (`pipeline::burst`): never past a change of the tables, never for
//! another sender, and never without checking the packet itself.

use super::*;

fn host2() -> Input {
    Input::Underlay(SocketAddrV4::new(HOST2, 4789))
}

/// c3 (.4, on HOST2) to c2 (.3, port 2 here), over the tunnel.
fn to_c2() -> Vec<u8> {
    vxlan(
        VNI_A,
        &ipv4_frame(Mac::for_ip(ip(4)), Mac::for_ip(ip(3)), ip(4), ip(3)),
    )
}

#[test]
fn a_burst_takes_its_first_datagrams_way_until_the_tables_change() {
    let mut p = pipeline();
    for _ in 0..3 {
        assert_eq!(run(&mut p, host2(), &to_c2()).0, Verdict::ToTap(2));
    }
    // c2's MAC now lives behind port 1 (a container replaced, say).
    let mut moved = tables();
    let net = moved.networks.get_mut(&Vni::new(VNI_A).unwrap()).unwrap();
    net.by_mac.insert(Mac::for_ip(ip(3)), Location::Local(1));
    p.set_tables(Arc::new(moved));
    assert_eq!(run(&mut p, host2(), &to_c2()).0, Verdict::ToTap(1));
    // And now it is gone.
    let mut gone = tables();
    let net = gone.networks.get_mut(&Vni::new(VNI_A).unwrap()).unwrap();
    net.by_mac.remove(&Mac::for_ip(ip(3)));
    p.set_tables(Arc::new(gone));
    assert_eq!(
        run(&mut p, host2(), &to_c2()).0,
        Verdict::Drop(DropReason::UnknownDestination)
    );
}

#[test]
fn each_datagram_of_a_burst_is_still_checked() {
    let mut p = pipeline();
    assert_eq!(run(&mut p, host2(), &to_c2()).0, Verdict::ToTap(2));
    // Same VXLAN and Ethernet headers, a broken IPv4 header behind them.
    let ip_at = vxlan::HEADER_LEN + ethernet::HEADER_LEN;
    let mut version_6 = to_c2();
    version_6[ip_at] = 0x65;
    let mut too_long = to_c2();
    too_long[ip_at + 2..ip_at + 4].copy_from_slice(&200u16.to_be_bytes());
    let mut cut = to_c2();
    cut.truncate(ip_at + 10);
    for bad in [version_6, too_long, cut] {
        assert_eq!(
            run(&mut p, host2(), &bad).0,
            Verdict::Drop(DropReason::Malformed)
        );
    }
    assert_eq!(p.counters().dropped(DropReason::Malformed), 3);
    assert_eq!(run(&mut p, host2(), &to_c2()).0, Verdict::ToTap(2));
}

#[test]
fn another_sender_with_the_same_headers_is_judged_on_its_own() {
    let mut p = pipeline();
    assert_eq!(run(&mut p, host2(), &to_c2()).0, Verdict::ToTap(2));
    let stranger = Input::Underlay(SocketAddrV4::new(STRANGER, 4789));
    assert_eq!(
        run(&mut p, stranger, &to_c2()).0,
        Verdict::Drop(DropReason::NotMember)
    );
    // Another VNI with the same inner frame goes by its own network: c4's
    // network B has no .3 MAC.
    let other_net = vxlan(
        VNI_B,
        &ipv4_frame(Mac::for_ip(ip(4)), Mac::for_ip(ip(3)), ip(4), ip(3)),
    );
    assert_eq!(
        run(&mut p, host2(), &other_net).0,
        Verdict::Drop(DropReason::UnknownDestination)
    );
    assert_eq!(run(&mut p, host2(), &to_c2()).0, Verdict::ToTap(2));
}
