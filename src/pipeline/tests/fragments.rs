//! IPv4 fragments after the first go the way of their first
//! (`pipeline::fragments`), and only from where the first came.

use super::*;
use crate::wire::checksum;

/// c1 (.2, port 1) to c3 (.4, on HOST2): an ICMP frame with 64 bytes of
/// payload, cut after 24 bytes.
fn c1_to_c3() -> (Vec<u8>, Vec<u8>) {
    let mut f = ipv4_frame(Mac::for_ip(ip(2)), Mac::for_ip(ip(4)), ip(2), ip(4));
    f.extend((0..56).map(|i| i as u8));
    fragment(&f, 24)
}

/// c3 (.4, on HOST2) to c2 (.3, port 2 here): the same, cut after 32 bytes.
fn c3_to_c2() -> (Vec<u8>, Vec<u8>) {
    let mut f = ipv4_frame(Mac::for_ip(ip(4)), Mac::for_ip(ip(3)), ip(4), ip(3));
    f.extend([7u8; 56]);
    fragment(&f, 32)
}

fn ip_ok(frame: &[u8]) -> bool {
    checksum(&frame[ethernet::HEADER_LEN..ethernet::HEADER_LEN + 20]) == 0
}

#[test]
fn a_later_fragment_goes_where_its_first_went() {
    let mut p = pipeline();
    let (first, later) = c1_to_c3();
    let to_host2 = Verdict::ToUnderlay(SocketAddrV4::new(HOST2, 4789));
    let (v, out_first) = run(&mut p, Input::Tap(1), &first);
    assert_eq!(v, to_host2);
    let (v, out_later) = run(&mut p, Input::Tap(1), &later);
    assert_eq!(v, to_host2);
    assert_eq!(out_later[..8], out_first[..8], "the same VXLAN header");
    assert_eq!(
        &out_later[8..],
        &later[..],
        "the fragment itself, unchanged"
    );
    assert!(ip_ok(&out_later[8..]));
    // On HOST2's side (here, the same pipeline as a receiver would be),
    // both reach c2 when addressed to it.
    let (first, later) = c3_to_c2();
    let host2 = Input::Underlay(SocketAddrV4::new(HOST2, 4789));
    assert_eq!(
        run(&mut p, host2, &vxlan(VNI_A, &first)).0,
        Verdict::ToTap(2)
    );
    let (v, out) = run(&mut p, host2, &vxlan(VNI_A, &later));
    assert_eq!(v, Verdict::ToTap(2));
    assert_eq!(out, later);
}

#[test]
fn a_later_fragment_without_its_first_is_judged_on_its_own() {
    let mut p = pipeline();
    let (_, later) = c1_to_c3();
    // Plain switching needs no ports: it goes as it always did.
    assert_eq!(
        run(&mut p, Input::Tap(1), &later).0,
        Verdict::ToUnderlay(SocketAddrV4::new(HOST2, 4789))
    );
    // From the host, with no ports to go by, it is dropped.
    let ip_only = &later[ethernet::HEADER_LEN..];
    assert_eq!(
        run(&mut p, Input::Host, ip_only).0,
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
    let c = p.counters();
    assert_eq!(
        c.fragments_unmatched
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        c.fragments_followed
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn only_the_input_the_first_came_from_is_followed() {
    let mut p = pipeline();
    let (first, later) = c1_to_c3();
    run(&mut p, Input::Tap(1), &first);
    // The same datagram ID from another port, or with another source MAC
    // on the same port, or from the underlay: judged on their own.
    let mut spoofed = later.clone();
    spoofed[6..12].copy_from_slice(&Mac::for_ip(ip(9)).0);
    let host2 = Input::Underlay(SocketAddrV4::new(HOST2, 4789));
    for (input, frame, why) in [
        (Input::Tap(2), later.clone(), DropReason::Spoofed),
        (Input::Tap(1), spoofed, DropReason::Spoofed),
        (host2, vxlan(VNI_A, &later), DropReason::Hairpin),
    ] {
        assert_eq!(
            run(&mut p, input, &frame).0,
            Verdict::Drop(why),
            "{input:?}"
        );
    }
    let followed = || {
        p.counters()
            .fragments_followed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(followed(), 0);
    assert!(matches!(
        run(&mut p, Input::Tap(1), &later).0,
        Verdict::ToUnderlay(_)
    ));
    assert_eq!(
        p.counters()
            .fragments_followed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_tcp_fragment_over_the_first_ones_tcp_header_is_dropped() {
    let mut p = pipeline();
    let (_, mut later) = c1_to_c3();
    let ip_hdr = ethernet::HEADER_LEN..ethernet::HEADER_LEN + 20;
    later[ethernet::HEADER_LEN + 9] = ipv4::protocol::TCP;
    later[ethernet::HEADER_LEN + 6..ethernet::HEADER_LEN + 8].copy_from_slice(&[0x20, 1]);
    later[ethernet::HEADER_LEN + 10..ethernet::HEADER_LEN + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&later[ip_hdr]);
    later[ethernet::HEADER_LEN + 10..ethernet::HEADER_LEN + 12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        run(&mut p, Input::Tap(1), &later).0,
        Verdict::Drop(DropReason::Malformed)
    );
}

/// Runs c3_to_c2's first fragment in from HOST2 (it goes to port 2);
/// returns the later one as HOST2 would send it, and that input.
fn first_to_c2(p: &mut Pipeline) -> (Vec<u8>, Input) {
    let (first, later) = c3_to_c2();
    let host2 = Input::Underlay(SocketAddrV4::new(HOST2, 4789));
    assert_eq!(run(p, host2, &vxlan(VNI_A, &first)).0, Verdict::ToTap(2));
    (vxlan(VNI_A, &later), host2)
}

#[test]
fn a_vxlan_header_without_its_i_flag_is_refused_for_fragments_too() {
    let mut p = pipeline();
    let (mut no_i, host2) = first_to_c2(&mut p);
    no_i[0] = 0;
    assert_eq!(
        run(&mut p, host2, &no_i).0,
        Verdict::Drop(DropReason::Malformed)
    );
}

#[test]
fn a_removed_port_takes_its_notes_with_it() {
    let mut p = pipeline();
    let (later, host2) = first_to_c2(&mut p);
    // Port 2 is detached; its number may be another container's next.
    p.forget_port(2);
    run(&mut p, host2, &later);
    let c = p.counters();
    assert_eq!(
        c.fragments_followed
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
