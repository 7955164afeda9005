//! Fragments that arrive before their first: kept a moment, then sent the
//! first's way once it comes.

use super::*;
use crate::pipeline::fragments::{PARK_LIFETIME, PARK_SLOTS};
use crate::pipeline::tests::{fragment, reassemble};

/// The frames `p` has released, with where each goes.
fn released(p: &mut Pipeline) -> Vec<(Verdict, Vec<u8>)> {
    let mut out = Vec::new();
    p.released(|v, bytes| out.push((v, bytes.to_vec())));
    out
}

/// A client's UDP datagram to published port 9001 of host A, in two
/// fragments as the host stack hands them over (IPv4 only); `ident` tells
/// datagrams apart.
fn query(ident: u16) -> (Vec<u8>, Vec<u8>) {
    let mut packet = udp_datagram((CLIENT, 4000), (HOST_A, 9001), 200);
    packet[4..6].copy_from_slice(&ident.to_be_bytes());
    packet[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&c.to_be_bytes());
    let (first, later) = fragment(&frame(Mac([0; 6]), Mac([0; 6]), &packet), 96);
    (first[14..].to_vec(), later[14..].to_vec())
}

fn counter(
    p: &Pipeline,
    c: fn(&crate::pipeline::Counters) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    c(p.counters()).load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_later_fragment_that_comes_first_waits_and_follows_its_first() {
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    let now = Instant::now();
    let to_b = Verdict::ToUnderlay(SocketAddrV4::new(HOST_B, 4789));
    let (first, later) = query(7);
    // Alone it has no ports: it cannot go anywhere yet.
    let (v, _) = run_at(&mut a, Input::Host, &later, now);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(!a.has_released());
    assert_eq!(counter(&a, |c| &c.fragments_parked), 1);
    // Its first comes: it goes to B, and the later one is released after
    // it, the same way, with the same headers.
    let (v, d1) = run_at(&mut a, Input::Host, &first, now + PARK_LIFETIME / 2);
    assert_eq!(v, to_b);
    assert!(a.has_released());
    let out = released(&mut a);
    assert_eq!(out.len(), 1);
    let (v, d2) = &out[0];
    assert_eq!(*v, to_b);
    assert_eq!(d1[..vxlan::HEADER_LEN + 14], d2[..vxlan::HEADER_LEN + 14]);
    assert_eq!(
        &d2[8 + 26..8 + 34],
        &[CLIENT.octets(), TASK.octets()].concat()[..],
        "its addresses as NAT made the first's"
    );
    assert_eq!(counter(&a, |c| &c.fragments_followed), 1);
    assert!(released(&mut a).is_empty(), "sent once");
    // B: the task gets the whole datagram, checksums right.
    let (v, f1) = run_at(&mut b, underlay(HOST_A), &d1, now);
    assert_eq!(v, Verdict::ToTap(1));
    let (v, f2) = run_at(&mut b, underlay(HOST_A), d2, now);
    assert_eq!(v, Verdict::ToTap(1));
    let whole = reassemble(&f1, &f2);
    assert!(checksums_ok(&whole));
    assert_eq!(ends(&whole), ((CLIENT, 4000), (TASK, 9000)));
}

#[test]
fn a_later_fragment_that_went_right_on_its_own_is_not_sent_again() {
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    let now = Instant::now();
    let (first, later) = query(8);
    let (_, d1) = run_at(&mut a, Input::Host, &first, now);
    let (_, d2) = run_at(&mut a, Input::Host, &later, now);
    // B delivers to its task by address: the later fragment needs no ports.
    let (v, _) = run_at(&mut b, underlay(HOST_A), &d2, now);
    assert_eq!(v, Verdict::ToTap(1));
    let (v, _) = run_at(&mut b, underlay(HOST_A), &d1, now);
    assert_eq!(v, Verdict::ToTap(1));
    assert_eq!(counter(&b, |c| &c.fragments_parked), 1);
    assert!(!b.has_released(), "it went as its first did: not twice");
}

/// The task's answer to the client's query, in two fragments as the task
/// sends them (from B's port 1).
fn answer() -> (Vec<u8>, Vec<u8>) {
    let answer = frame(
        Mac::for_gateway(GATEWAY),
        Mac::for_ip(TASK),
        &udp_datagram((TASK, 9000), (CLIENT, 4000), 300),
    );
    fragment(&answer, 200)
}

#[test]
fn a_later_fragment_that_would_leave_as_egress_waits_for_its_first() {
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    let now = Instant::now();
    // The client's query reaches the task through A: B learns the way back.
    let (first, later) = query(10);
    for f in [first, later] {
        let (_, d) = run_at(&mut a, Input::Host, &f, now);
        run_at(&mut b, underlay(HOST_A), &d, now);
    }
    // The answer's later fragment first: on its own, with no ports, it
    // looks like egress, out of B's own host, untranslated. It is held.
    let (first, later) = answer();
    let (v, _) = run_at(&mut b, Input::Tap(1), &later, now);
    assert_eq!(v, Verdict::Drop(DropReason::FragmentHeld));
    // Its first goes back through A; a copy of the later one follows.
    let to_a = Verdict::ToUnderlay(SocketAddrV4::new(HOST_A, 4789));
    let (v, r1) = run_at(&mut b, Input::Tap(1), &first, now);
    assert_eq!(v, to_a);
    let out = released(&mut b);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, to_a);
    let r2 = &out[0].1;
    assert_eq!(r1[..vxlan::HEADER_LEN + 14], r2[..vxlan::HEADER_LEN + 14]);
    // A gives both the published address back: the client can reassemble.
    let (v, h1) = run_at(&mut a, underlay(HOST_B), &r1, now);
    assert_eq!(v, Verdict::ToHost);
    let (v, h2) = run_at(&mut a, underlay(HOST_B), r2, now);
    assert_eq!(v, Verdict::ToHost);
    let whole = reassemble(&h1, &h2);
    assert!(checksums_ok(&whole));
    assert_eq!(ends(&whole), ((HOST_A, 9001), (CLIENT, 4000)));
}

#[test]
fn a_later_fragment_waits_only_so_long_and_only_so_many_wait() {
    let mut a = agent(HOST_A, true);
    let now = Instant::now();
    // Its first comes too late.
    let (first, later) = query(9);
    run_at(&mut a, Input::Host, &later, now);
    let late = now + PARK_LIFETIME + std::time::Duration::from_millis(1);
    let (v, _) = run_at(&mut a, Input::Host, &first, late);
    assert!(matches!(v, Verdict::ToUnderlay(_)));
    assert!(released(&mut a).is_empty());
    // More datagrams' later fragments than there are slots: the ones that
    // waited longest give way, and the newest follow their firsts.
    let n = PARK_SLOTS as u16 + 3;
    for ident in 100..100 + n {
        let at = late + std::time::Duration::from_micros(u64::from(ident));
        run_at(&mut a, Input::Host, &query(ident).1, at);
    }
    assert_eq!(counter(&a, |c| &c.fragments_parked), 1 + u64::from(n));
    for ident in 100..100 + n {
        run_at(&mut a, Input::Host, &query(ident).0, late);
    }
    let mut idents: Vec<u16> = released(&mut a)
        .iter()
        .map(|(_, d)| u16::from_be_bytes([d[8 + 14 + 4], d[8 + 14 + 5]]))
        .collect();
    idents.sort();
    assert_eq!(idents, (103..100 + n).collect::<Vec<_>>());
}

#[test]
fn a_removed_port_forgets_the_fragments_it_sent() {
    let (mut a, mut b) = (agent(HOST_A, true), agent(HOST_B, true));
    let now = Instant::now();
    for f in <[_; 2]>::from(query(11)) {
        let (_, d) = run_at(&mut a, Input::Host, &f, now);
        run_at(&mut b, underlay(HOST_A), &d, now);
    }
    let (first, later) = answer();
    run_at(&mut b, Input::Tap(1), &later, now);
    assert_eq!(counter(&b, |c| &c.fragments_parked), 1);
    b.forget_port(1);
    // (A new container given port 1 sends this first fragment.)
    let (v, _) = run_at(&mut b, Input::Tap(1), &first, now);
    assert!(matches!(v, Verdict::ToUnderlay(_)));
    assert!(released(&mut b).is_empty());
}
