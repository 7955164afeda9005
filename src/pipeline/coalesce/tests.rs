//! The coalescer against hand-built segments: what it joins, what it keeps
//! apart, and that the kernel's segmentation of its output gives the input back.

use super::super::offload::tests::{checksums_ok, materialize, tcp_frame};
use super::super::offload::{complete_checksum, segment_tcp4};
use super::*;
use crate::wire::l4::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};

/// (port, vnet, whole frame) for each write; unjoined frames get vnet flags 0xff.
type Out = Vec<(PortId, VnetHeader, Vec<u8>)>;

/// Runs frames (each its own "buffer") through a coalescer of 4 slots.
fn run_partial(frames: &[(PortId, Vec<u8>)], partial: bool) -> (Out, Vec<bool>) {
    let mut c = Coalescer::new(4);
    let mut out: Out = vec![];
    let mut taken = vec![];
    for (i, (port, f)) in frames.iter().enumerate() {
        let mut sink = |p: PortId, v: &VnetHeader, head: &[u8], parts: &[Part]| {
            out.push((p, *v, join(frames, head, parts)))
        };
        let t = c.offer(
            *port,
            f,
            Part {
                buf: i as u32,
                start: 0,
                len: f.len() as u32,
            },
            partial,
            &mut sink,
        );
        if !t {
            out.push((
                *port,
                VnetHeader {
                    flags: 0xff,
                    ..VnetHeader::default()
                },
                f.clone(),
            ));
        }
        taken.push(t);
    }
    c.flush(
        &mut |p: PortId, v: &VnetHeader, head: &[u8], parts: &[Part]| {
            out.push((p, *v, join(frames, head, parts)))
        },
    );
    (out, taken)
}

fn run(frames: &[(PortId, Vec<u8>)]) -> (Out, Vec<bool>) {
    run_partial(frames, false)
}

fn join(frames: &[(PortId, Vec<u8>)], head: &[u8], parts: &[Part]) -> Vec<u8> {
    let mut v = head.to_vec();
    for p in parts {
        let f = &frames[p.buf as usize].1;
        v.extend_from_slice(&f[p.start as usize..(p.start + p.len) as usize]);
    }
    v
}

fn data(seq: u32, len: usize, flags: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
    tcp_frame(seq, flags, &payload)
}

#[test]
fn a_damaged_segment_with_a_complete_checksum_is_never_joined() {
    let mut bad = data(2386, 1386, ACK);
    let last = bad.len() - 1;
    bad[last] ^= 0x40; // a bit flipped on the way: the checksum no longer holds
    let segs = [data(1000, 1386, ACK), bad.clone(), data(3772, 1386, ACK)];
    let frames: Vec<_> = segs.iter().map(|f| (1, f.clone())).collect();
    let (out, taken) = run(&frames);
    assert_eq!(taken, vec![true, false, true]);
    // The damaged one goes alone and unchanged, between the two runs, for
    // the container's stack to drop; the good ones are not joined across it.
    assert_eq!(out.len(), 3);
    assert_eq!(out[1].2, bad);
    assert_eq!(out[1].1.flags, 0xff, "written as it came");
    // With partial checksums (from an agent) there is nothing to check yet.
    let (_, taken) = run_partial(&frames, true);
    assert_eq!(taken, vec![true, true, true]);
}

#[test]
fn in_order_segments_become_one_gso_frame_that_segments_back() {
    let segs = [
        data(1000, 1386, ACK),
        data(2386, 1386, ACK),
        data(3772, 500, ACK | PSH),
    ];
    let (out, _) = run(&segs.iter().map(|s| (7, s.clone())).collect::<Vec<_>>());
    assert_eq!(out.len(), 1);
    let (port, vnet, frame) = &out[0];
    assert_eq!(*port, 7);
    assert_eq!(vnet.gso_type, virtio::GSO_TCPV4);
    assert_eq!(vnet.flags, virtio::F_NEEDS_CSUM);
    assert_eq!(
        (
            vnet.gso_size,
            vnet.hdr_len,
            vnet.csum_start,
            vnet.csum_offset
        ),
        (1386, 66, 34, 16)
    );
    assert_eq!(frame.len(), 66 + 1386 * 2 + 500);
    assert_eq!(frame[47], ACK | PSH);
    // What the kernel would do with it: cut it again, finish the checksums.
    let mut datagram = vec![0u8; 8];
    datagram.extend_from_slice(frame);
    let mut headers = vec![0u8; 1000];
    let seg = segment_tcp4(&datagram, 1386, true, 0, &mut headers).unwrap();
    let back = materialize(&datagram, &seg, &headers);
    assert_eq!(back.len(), 3);
    for (i, (b, s)) in back.iter().zip(segs.iter()).enumerate() {
        let b = &b[8..];
        assert!(checksums_ok(b));
        // IP IDs (and so IP checksums) are renumbered; all else matches.
        assert!(b[..18] == s[..18] && b[26..] == s[26..], "segment {i}");
    }
}

#[test]
fn single_segments_pass_without_gso() {
    let (out, taken) = run(&[(1, data(1, 100, ACK))]);
    assert_eq!(taken, vec![true]);
    assert_eq!(out[0].1, VnetHeader::default());
    assert_eq!(out[0].2, data(1, 100, ACK));
}

#[test]
fn a_single_partial_segment_asks_the_kernel_to_finish_its_checksum() {
    let mut f = data(1, 100, ACK);
    let pseudo = pseudo_header_sum(&f[14..34], ipv4::protocol::TCP, 32 + 100) as u16;
    f[50..52].copy_from_slice(&pseudo.to_be_bytes());
    let (mut out, _) = run_partial(&[(1, f)], true);
    let (_, vnet, frame) = &mut out[0];
    assert_eq!(
        (vnet.flags, vnet.csum_start, vnet.csum_offset),
        (virtio::F_NEEDS_CSUM, 34, 16)
    );
    complete_checksum(frame, 34, 16).unwrap();
    assert_eq!(*frame, data(1, 100, ACK));
}

#[test]
fn gaps_retransmissions_and_flags_end_a_run_in_order() {
    for odd in [
        data(1000, 100, SYN | ACK),
        data(1000, 100, ACK | FIN),
        data(1000, 100, RST | ACK),
        data(1000, 100, ACK | URG),
        data(1000, 0, ACK),
    ] {
        let (out, taken) = run(&[(1, data(900, 100, ACK)), (1, odd.clone())]);
        assert_eq!(taken, vec![true, false]);
        assert_eq!(out.len(), 2, "pending data first, then the odd frame");
        assert_eq!(out[0].2, data(900, 100, ACK));
        assert_eq!(out[1].2, odd);
    }
    // A gap (2000 where 1100 was due) and a retransmission each start a new run.
    let (out, _) = run(&[
        (1, data(1000, 100, ACK)),
        (1, data(2000, 100, ACK)),
        (1, data(1000, 100, ACK)),
    ]);
    let seqs: Vec<u32> = out.iter().map(|(_, _, f)| be32(f, 38)).collect();
    assert_eq!(seqs, vec![1000, 2000, 1000]);
}

#[test]
fn a_push_or_a_short_segment_closes_the_run() {
    let (out, _) = run(&[(1, data(0, 100, ACK | PSH)), (1, data(100, 100, ACK))]);
    assert_eq!(out.len(), 2);
    let (out, _) = run(&[
        (1, data(0, 100, ACK)),
        (1, data(100, 50, ACK)),
        (1, data(150, 50, ACK)),
    ]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].2.len(), 66 + 150);
}

#[test]
fn flows_and_ports_are_kept_apart() {
    let mut other = data(100, 100, ACK);
    other[35] ^= 1; // another source port
                    // Partial checksums (as from an agent): the changed header bytes are
                    // judged, not a checksum they no longer match.
    let (out, _) = run_partial(
        &[
            (1, data(0, 100, ACK)),
            (2, data(100, 100, ACK)),
            (1, other),
            (1, data(100, 100, ACK)),
        ],
        true,
    );
    assert_eq!(out.len(), 3);
    let big = out
        .iter()
        .find(|(p, v, _)| *p == 1 && v.gso_type == virtio::GSO_TCPV4)
        .unwrap();
    assert_eq!(big.2.len(), 66 + 200);
}

#[test]
fn a_changed_window_ends_the_run_before_the_next_one_starts() {
    let mut moved = data(100, 100, ACK);
    moved[34 + 15] ^= 1; // another window, same connection
    let frames = [(1, data(0, 100, ACK)), (1, moved), (1, data(200, 100, ACK))];
    let (out, _) = run_partial(&frames, true);
    let seqs: Vec<u32> = out.iter().map(|(_, _, f)| be32(f, 38)).collect();
    assert_eq!(
        seqs,
        vec![0, 100, 200],
        "each run flushed before the next begins"
    );
}

/// Every header byte of a second segment, changed one bit at a time: the
/// bytes that name the flow (MACs, EtherType, IP version, TOS, TTL,
/// protocol, addresses, ports, ACK number, data offset, flags, window,
/// options) keep it out of the first segment's run; those that change from
/// segment to segment (IP ID and checksum, TCP checksum, urgent pointer,
/// PSH) do not.
#[test]
fn each_header_byte_that_names_the_flow_is_compared() {
    let first = data(0, 100, ACK);
    let header = 66;
    // IP total length, fragment field and sequence number are left out:
    // changing them makes another segment, not another flow.
    let skipped = [16, 17, 20, 21, 38, 39, 40, 41];
    let ignored = [18, 19, 24, 25, 50, 51, 52, 53];
    for at in (0..header).filter(|b| !skipped.contains(b)) {
        for bit in [0x01u8, 0x08, 0x10, 0x80] {
            let mut second = data(100, 100, ACK);
            second[at] ^= bit;
            // Partial checksums: the header is judged, not its checksum.
            let (out, _) = run_partial(&[(1, first.clone()), (1, second)], true);
            let joined = out.len() == 1;
            let psh = at == 47 && bit == PSH;
            let expect = ignored.contains(&at) || psh;
            assert_eq!(joined, expect, "byte {at}, bit {bit:#04x}: joined {joined}");
        }
    }
}

#[test]
fn more_flows_than_slots_flush_the_oldest() {
    let frames: Vec<(PortId, Vec<u8>)> = (0..10).map(|i| (i, data(0, 10, ACK))).collect();
    let (out, taken) = run(&frames);
    assert!(taken.iter().all(|t| *t));
    assert_eq!(out.len(), 10);
}

#[test]
fn a_run_stops_at_its_part_limit() {
    let frames: Vec<(PortId, Vec<u8>)> = (0..MAX_PARTS as u32 + 1)
        .map(|i| (1, data(i * 10, 10, ACK)))
        .collect();
    let (out, _) = run(&frames);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].2.len(), 66 + 10 * MAX_PARTS);
}

proptest::proptest! {
    #[test]
    fn arbitrary_frames_never_panic(frames in proptest::collection::vec((0u32..3, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)), 0..20), seed in 0usize..5) {
        let base = data(0, 50, ACK);
        let frames: Vec<(PortId, Vec<u8>)> = frames.into_iter().enumerate().map(|(i, (port, f))| {
            if (i + seed) % 2 == 0 {
                // Mostly-valid frames with a few bytes changed reach deeper.
                let mut g = base.clone();
                for (j, b) in f.iter().enumerate().take(4) {
                    let at = (usize::from(*b) * 7 + j) % g.len();
                    g[at] = *b;
                }
                (port, g)
            } else {
                (port, f)
            }
        }).collect();
        let (out, _) = run(&frames);
        let total: usize = frames.iter().map(|(_, f)| f.len()).sum();
        proptest::prop_assert!(out.iter().map(|(_, _, f)| f.len()).sum::<usize>() <= total);
    }
}
