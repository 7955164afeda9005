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
    let mut f = ipv4_frame(Mac::for_ip(ip(4)), Mac::for_ip(ip(3)), ip(4), ip(3));
    f.extend([7u8; 56]);
    let (first, later) = fragment(&f, 32);
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
fn a_later_fragment_without_its_first_is_dropped_and_counted() {
    let mut p = pipeline();
    let (_, later) = c1_to_c3();
    assert_eq!(
        run(&mut p, Input::Tap(1), &later).0,
        Verdict::Drop(DropReason::FragmentUnmatched)
    );
    assert_eq!(p.counters().dropped(DropReason::FragmentUnmatched), 1);
}

#[test]
fn only_the_input_the_first_came_from_is_followed() {
    let mut p = pipeline();
    let (first, later) = c1_to_c3();
    run(&mut p, Input::Tap(1), &first);
    // The same datagram ID from another port, or with another source MAC
    // on the same port, or from the underlay: not the first's datagram.
    let mut spoofed = later.clone();
    spoofed[6..12].copy_from_slice(&Mac::for_ip(ip(9)).0);
    let host2 = Input::Underlay(SocketAddrV4::new(HOST2, 4789));
    for (input, frame) in [
        (Input::Tap(2), later.clone()),
        (Input::Tap(1), spoofed),
        (host2, vxlan(VNI_A, &later)),
    ] {
        assert_eq!(
            run(&mut p, input, &frame).0,
            Verdict::Drop(DropReason::FragmentUnmatched),
            "{input:?}"
        );
    }
    assert!(matches!(
        run(&mut p, Input::Tap(1), &later).0,
        Verdict::ToUnderlay(_)
    ));
}

#[test]
fn notes_are_forgotten_when_the_tables_change() {
    let mut p = pipeline();
    let (first, later) = c1_to_c3();
    run(&mut p, Input::Tap(1), &first);
    p.set_tables(Arc::new(tables()));
    assert_eq!(
        run(&mut p, Input::Tap(1), &later).0,
        Verdict::Drop(DropReason::FragmentUnmatched)
    );
}
