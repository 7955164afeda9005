use super::expiry::{FULL_STEP, SWEEP_STEP};
use super::*;
use crate::wire::ipv4::protocol::{TCP, UDP};

fn key(port: u16) -> Key {
    Key {
        protocol: TCP,
        client: Ipv4Addr::new(10, 0, 0, 9),
        client_port: port,
        vip: Ipv4Addr::new(10, 0, 0, 2),
        port: 80,
    }
}
const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

/// The reply tuple of flow `k` answered by `backend`:`port`.
fn reply_of(k: &Key, backend: Ipv4Addr, port: u16) -> ReplyKey {
    ReplyKey {
        protocol: k.protocol,
        backend,
        port,
        client: k.client,
        client_port: k.client_port,
    }
}

#[test]
fn a_flow_and_its_replies_find_the_same_entry() {
    let mut ct = Conntrack::new(10, Timeouts::default());
    let now = Instant::now();
    ct.insert(key(1000), TASK, now).unwrap();
    let r = reply_of(&key(1000), TASK, 80);
    assert_eq!(
        ct.reply(&r, now).map(|(k, e)| (k, e.backend)),
        Some((key(1000), TASK))
    );
    ct.remove(&key(1000));
    assert!(ct.reply(&r, now).is_none() && ct.is_empty());
}

#[test]
fn flows_sharing_a_reply_tuple_keep_their_index() {
    // One client port to two VIPs that picked the same task: the replies
    // can only go to one of them (the later), and removing the other
    // must not take that one's index away.
    let mut ct = Conntrack::new(10, Timeouts::default());
    let now = Instant::now();
    let a = key(1000);
    let b = Key {
        vip: Ipv4Addr::new(10, 0, 0, 3),
        ..a
    };
    ct.insert(a, TASK, now).unwrap();
    ct.insert(b, TASK, now).unwrap();
    let r = reply_of(&a, TASK, 80);
    assert_eq!(ct.reply(&r, now).map(|(k, _)| k), Some(b));
    ct.remove(&a);
    assert_eq!(ct.reply(&r, now).map(|(k, _)| k), Some(b));
    ct.remove(&b);
    assert!(ct.reply(&r, now).is_none());
}

#[test]
fn a_keyed_only_table_has_no_replies() {
    let mut ct = Conntrack::keyed_only(10, Timeouts::default());
    let now = Instant::now();
    ct.insert(key(1000), TASK, now).unwrap();
    let r = reply_of(&key(1000), TASK, 80);
    assert!(ct.get(&key(1000), now).is_some());
    assert!(ct.reply(&r, now).is_none());
    ct.remove(&key(1000));
    assert!(ct.is_empty());
}

#[test]
fn tcp_states_follow_the_flags() {
    let mut ct = Conntrack::new(10, Timeouts::default());
    let now = Instant::now();
    let k = key(1);
    ct.insert(k, TASK, now).unwrap();
    ct.update(&k, SYN, true, now);
    assert_eq!(ct.get(&k, now).unwrap().state, TcpState::SynSent);
    ct.update(&k, SYN | ACK, false, now);
    assert_eq!(ct.get(&k, now).unwrap().state, TcpState::Established);
    ct.update(&k, FIN | ACK, true, now);
    assert_eq!(ct.get(&k, now).unwrap().state, TcpState::Closing);
    ct.update(&k, FIN | ACK, false, now);
    assert_eq!(ct.get(&k, now).unwrap().state, TcpState::Closed);
    let k2 = key(2);
    ct.insert(k2, TASK, now).unwrap();
    ct.update(&k2, RST, false, now);
    assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::Closed);
    // The client's next SYN on the same ports is a new connection.
    ct.update(&k2, SYN, true, now);
    assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::SynSent);
    ct.update(&k2, SYN | ACK, false, now);
    assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::Established);
    // So is one after a half close: it opens and stays open until both
    // of its own FINs (not one, as the old FIN would have made it).
    ct.update(&k2, FIN | ACK, true, now);
    assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::Closing);
    ct.update(&k2, SYN, true, now);
    assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::SynSent);
    ct.update(&k2, SYN | ACK, false, now);
    assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::Established);
    ct.update(&k2, FIN | ACK, false, now);
    assert_eq!(ct.get(&k2, now).unwrap().state, TcpState::Closing);
    // A client's bare ACK before any SYN-ACK does not open the connection
    // (it would hold the entry a day); the task's SYN-ACK does.
    let k3 = key(3);
    ct.track(k3, TASK, 80, SYN, now).unwrap();
    ct.update(&k3, ACK, true, now);
    assert_eq!(ct.get(&k3, now).unwrap().state, TcpState::SynSent);
    ct.update(&k3, SYN | ACK, false, now);
    assert_eq!(ct.get(&k3, now).unwrap().state, TcpState::Established);
    // A flow first seen mid-stream (a return path learned again) is open.
    let k4 = key(4);
    assert_eq!(
        ct.track(k4, TASK, 80, ACK, now).unwrap().state,
        TcpState::Established
    );
    assert_eq!(ct.active_to(TASK), 3);
}

#[test]
fn idle_established_connections_live_long_and_then_expire() {
    let t = Timeouts::default();
    let mut ct = Conntrack::new(10, t);
    let now = Instant::now();
    let k = key(1);
    ct.insert(k, TASK, now).unwrap();
    ct.update(&k, SYN | ACK, false, now);
    assert!(
        ct.get(&k, now + Duration::from_secs(3600)).is_some(),
        "an hour idle is not the end (IPVS: 900 s)"
    );
    assert!(ct
        .get(&k, now + t.tcp_established + Duration::from_secs(1))
        .is_none());
    let u = Key {
        protocol: UDP,
        ..key(5)
    };
    ct.insert(u, TASK, now).unwrap();
    ct.sweep(now + t.udp + Duration::from_secs(1));
    assert!(ct.is_empty());
}

/// `n` UDP flows from `n` clients.
fn fill_udp(ct: &mut Conntrack, n: u32, now: Instant) {
    for i in 0..n {
        let k = Key {
            protocol: UDP,
            client: Ipv4Addr::from(i),
            ..key(1)
        };
        ct.insert(k, TASK, now).unwrap();
    }
    // A table at rest: the keys a grow moves during a pass into slots the
    // pass has looked at already wait for the next pass, a second later.
    ct.flows.migrate(usize::MAX);
    if let Some(r) = &mut ct.replies {
        r.migrate(usize::MAX);
    }
}

#[test]
fn expiry_goes_a_slice_at_a_time_and_faster_when_full() {
    let t = Timeouts::default();
    let n = 100_000u32;
    let mut ct = Conntrack::new(200_000, t);
    let now = Instant::now();
    fill_udp(&mut ct, n, now);
    ct.expire(now + Duration::from_millis(900));
    assert_eq!(ct.len(), n as usize, "no pass within a second of the last");
    let later = now + t.udp + Duration::from_secs(1);
    ct.expire(later);
    let left = ct.len();
    assert!(
        left > 0 && left < n as usize,
        "one call sweeps a slice: {left} left"
    );
    let mut calls = 1;
    while !ct.is_empty() && calls < 1000 {
        ct.expire(later);
        calls += 1;
    }
    assert_eq!(ct.len(), 0);
    assert!(calls <= ct.flows.slots() / SWEEP_STEP + 1, "{calls} calls");

    // An idle dataplane turns once a second: the pass does not wait on it.
    let mut idle = Conntrack::new(200_000, t);
    fill_udp(&mut idle, n, now);
    idle.expire(later);
    assert!(!idle.is_empty(), "the first step is a slice");
    idle.expire(later + Duration::from_secs(1));
    assert!(
        idle.is_empty(),
        "a second later, the rest of the pass at once"
    );

    // A full table goes faster, still a slice a turn; the first slice
    // already makes room for new flows.
    let mut full = Conntrack::new(50_000, t);
    fill_udp(&mut full, 50_000, now);
    assert!(
        full.flows.slots() > FULL_STEP,
        "a table of more than one step"
    );
    full.expire(later);
    let left = full.len();
    assert!(
        left > 0 && 50_000 - left > SWEEP_STEP,
        "one slice, more than a normal step could remove: {left} left"
    );
    assert!(
        full.insert(key(1), TASK, later).is_ok(),
        "room for a new flow"
    );
    let mut calls = 1;
    while full.len() > 1 && calls < 100 {
        full.expire(later);
        calls += 1;
    }
    assert_eq!(full.len(), 1, "all but the new flow expired");
    // (No longer full after the first slice: the rest at the usual pace.)
    assert!(
        calls <= full.flows.slots() / SWEEP_STEP + 1,
        "{calls} calls"
    );
}

#[test]
fn entries_survive_sweeps_that_remove_their_neighbours() {
    let t = Timeouts::default();
    let mut ct = Conntrack::new(10_000, t);
    let now = Instant::now();
    for i in 0..5000u32 {
        let k = Key {
            protocol: if i % 2 == 0 { UDP } else { TCP },
            client: Ipv4Addr::from(i),
            ..key(1)
        };
        ct.insert(k, TASK, now).unwrap();
        if i % 2 == 1 {
            ct.update(&k, SYN | ACK, false, now);
        }
    }
    ct.sweep(now + t.udp + Duration::from_secs(1));
    assert_eq!(
        ct.len(),
        2500,
        "the UDP flows went, the established TCP ones stay"
    );
    for i in (1..5000u32).step_by(2) {
        let k = Key {
            protocol: TCP,
            client: Ipv4Addr::from(i),
            ..key(1)
        };
        let r = reply_of(&k, TASK, 80);
        assert!(ct.get(&k, now).is_some(), "flow {i}");
        assert_eq!(ct.reply(&r, now).map(|(k, _)| k.client), Some(k.client));
    }
    assert_eq!(ct.active_to(TASK), 2500);
}

#[test]
fn a_full_table_refuses_new_flows_and_keeps_old_ones() {
    let mut ct = Conntrack::new(2, Timeouts::default());
    let now = Instant::now();
    ct.insert(key(1), TASK, now).unwrap();
    ct.insert(key(2), TASK, now).unwrap();
    assert_eq!(ct.insert(key(3), TASK, now), Err(Refusal::Full));
    assert!(ct.get(&key(1), now).is_some());
    assert_eq!(ct.active_to(TASK), 2);
}

proptest::proptest! {
    /// `touch` (the per-packet path, with its shortcut for established
    /// flows) moves an entry exactly as the full state machine does.
    #[test]
    fn touch_and_update_agree(packets in proptest::collection::vec((0u8..64, proptest::bool::ANY), 1..60)) {
        for protocol in [TCP, UDP] {
            let (mut a, mut b) = (Conntrack::new(10, Timeouts::default()), Conntrack::new(10, Timeouts::default()));
            let now = Instant::now();
            let k = Key { protocol, ..key(1) };
            a.insert(k, TASK, now).unwrap();
            b.insert(k, TASK, now).unwrap();
            for &(flags, from_client) in &packets {
                let touched = a.touch(&k, flags, from_client, now);
                b.update(&k, flags, from_client, now);
                proptest::prop_assert_eq!(touched, b.get(&k, now));
                proptest::prop_assert_eq!(a.flows.find(&k.words()).and_then(|i| a.flows.at(i)).map(|s| s.value.fins),
                    b.flows.find(&k.words()).and_then(|i| b.flows.at(i)).map(|s| s.value.fins));
                proptest::prop_assert_eq!(a.active_to(TASK), b.active_to(TASK));
            }
        }
    }

    /// Whatever happens to the entries (inserts past a growth, removals,
    /// packets, sweeps whole and in steps, time jumps): the open counts
    /// least-connections reads match a count over the table, every entry
    /// is found by its key, and its replies find it.
    #[test]
    fn the_table_stays_consistent(ops in proptest::collection::vec((0u8..6, 0u16..120, 0u8..3, 0u8..64), 1..300)) {
        let mut ct = Conntrack::new(100, Timeouts { tcp_closed: Duration::from_secs(1), ..Timeouts::default() });
        let t0 = Instant::now();
        let mut now = t0;
        for (op, port, task, flags) in ops {
            let backend = Ipv4Addr::new(10, 0, 1, task);
            let k = key(port);
            match op {
                0 => { let _ = ct.insert(k, backend, now); }
                1 => ct.update(&k, flags, flags % 2 == 0, now),
                2 => { let _ = ct.touch(&k, flags, flags % 2 == 1, now); }
                3 => ct.remove(&k),
                4 => { now += Duration::from_millis(u64::from(flags) * 50); ct.expire(now); }
                _ => { now += Duration::from_secs(u64::from(flags % 20)); ct.sweep(now); }
            }
            let entries = ct.entries();
            for task in 0..3 {
                let b = Ipv4Addr::new(10, 0, 1, task);
                let scan = entries.iter().filter(|(_, e)| e.backend == b && e.state != TcpState::Closed).count() as u32;
                proptest::prop_assert_eq!(ct.active_to(b), scan);
            }
            for (k, e) in &entries {
                proptest::prop_assert!(ct.flows.find(&k.words()).is_some(), "{:?} not found", k);
                let r = reply_of(k, e.backend, e.backend_port);
                proptest::prop_assert_eq!(ct.client_key(&r), Some(*k));
            }
        }
    }
}

#[test]
fn a_growing_table_finishes_moving_on_expiry_turns_and_loses_no_flow() {
    let mut ct = Conntrack::new(100_000, Timeouts::default());
    let now = Instant::now();
    let mut port = 1;
    // The flow table and the reply index grow at different sizes: fill
    // until one has just begun, let expiry turns alone finish its moves,
    // then the same for the other.
    type Growing = fn(&Conntrack) -> bool;
    let tables: [(&str, Growing); 2] = [
        ("flows", |ct| ct.flows.growing()),
        ("replies", |ct| {
            ct.replies.as_ref().is_some_and(|r| r.growing())
        }),
    ];
    for (name, growing) in tables {
        let from = port;
        while port < from + 2000 || growing(&ct) {
            ct.insert(key(port), TASK, now).unwrap();
            port += 1;
        }
        while !growing(&ct) {
            ct.insert(key(port), TASK, now).unwrap();
            port += 1;
        }
        let mut turns = 0;
        while growing(&ct) {
            assert!(
                turns < 100,
                "a growing {name} table moves its keys in a few turns"
            );
            ct.expire(now);
            turns += 1;
        }
        assert!(turns > 1, "moving the {name} keys took more than one turn");
    }
    for p in 1..port {
        let k = key(p);
        assert_eq!(ct.get(&k, now).map(|e| e.backend), Some(TASK), "flow {p}");
        assert_eq!(
            ct.reply(&reply_of(&k, TASK, 80), now).map(|(k, _)| k),
            Some(k),
            "reply of flow {p}"
        );
    }
}
