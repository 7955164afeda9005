//! ns per frame through the sans-IO pipeline: classify + encap of a 1500-byte
//! frame to a remote container, decap + deliver of one from the underlay, and
//! an ARP reply. No kernel involved: this is the packet core's own cost.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
// The compiler's black box: criterion's (without its default features) reads
// results back byte by byte, which the per-frame numbers would include.
use mesh::pipeline::coalesce::{Coalescer, Part};
use mesh::pipeline::offload::segment_tcp4;
use mesh::pipeline::{Counters, Input, Packet, Pipeline, Verdict, HEADROOM};
use mesh::tables::{Endpoint, Location, NetworkTable, Peer, Port, Tables};
use mesh::wire::virtio::VnetHeader;
use mesh::wire::{arp, ethernet, ipv4, vxlan, vxlan::Vni, Mac};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

const FRAME: usize = 1514;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

/// A network of 200 endpoints (some local, most remote), like a busy host.
fn tables() -> Tables {
    let vni = Vni::new(4096).expect("24-bit");
    let mut net = NetworkTable::new(vni, ip(1));
    let mut t = Tables::default();
    for last in 2..202u8 {
        let location = if last < 10 {
            Location::Local(u32::from(last))
        } else {
            Location::Remote(SocketAddrV4::new(
                Ipv4Addr::new(192, 168, 100, 100 + last % 20),
                4789,
            ))
        };
        net.insert(Endpoint {
            ip: ip(last),
            mac: Mac::for_ip(ip(last)),
            location,
        });
        if last < 10 {
            t.ports.insert(
                u32::from(last),
                Port {
                    vni,
                    ip: ip(last),
                    mac: Mac::for_ip(ip(last)),
                },
            );
        }
    }
    for h in 100..120u8 {
        t.peers.insert(
            Ipv4Addr::new(192, 168, 100, h),
            Peer {
                port: 4789,
                agent: true,
            },
        );
    }
    t.networks.insert(vni, net);
    t
}

fn tcp_frame(src: u8, dst: u8) -> Vec<u8> {
    tcp_frame_len(src, dst, FRAME, 1)
}

/// A TCP/IPv4 frame of `len` bytes with sequence number `seq` and ACK set.
fn tcp_frame_len(src: u8, dst: u8, len: usize, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; len];
    ethernet::emit(
        &mut f,
        Mac::for_ip(ip(dst)),
        Mac::for_ip(ip(src)),
        ethernet::ethertype::IPV4,
    )
    .expect("room");
    let r = ipv4::Repr {
        src: ip(src),
        dst: ip(dst),
        protocol: ipv4::protocol::TCP,
        ttl: 64,
        ident: 7,
        dont_fragment: true,
        payload_len: len - 34,
    };
    r.emit(&mut f[14..]).expect("room");
    f[38..42].copy_from_slice(&seq.to_be_bytes());
    f[14 + 20 + 12] = 0x50;
    f[14 + 20 + 13] = 0x10;
    f
}

fn bench(c: &mut Criterion) {
    let mut p = Pipeline::new(Arc::new(tables()), Arc::new(Counters::default()));
    let now = Instant::now();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));

    let frame = tcp_frame(2, 150);
    let mut buf = vec![0u8; HEADROOM + FRAME];
    g.bench_function("classify+encap 1500B", |b| {
        b.iter(|| {
            buf[HEADROOM..].copy_from_slice(&frame[..]);
            let mut pkt = Packet::new(&mut buf, HEADROOM, FRAME);
            let v = p.process(now, Input::Tap(2), &mut pkt);
            debug_assert!(matches!(v, Verdict::ToUnderlay(_)));
            black_box(v)
        })
    });

    let mut datagram = vec![0u8; vxlan::HEADER_LEN];
    vxlan::emit(&mut datagram, Vni::new(4096).expect("24-bit")).expect("room");
    datagram.extend_from_slice(&tcp_frame(150, 3));
    let from = SocketAddrV4::new(Ipv4Addr::new(192, 168, 100, 110), 4789);
    let mut buf = vec![0u8; HEADROOM + datagram.len()];
    g.bench_function("decap+deliver 1500B", |b| {
        b.iter(|| {
            buf[HEADROOM..].copy_from_slice(&datagram);
            let mut pkt = Packet::new(&mut buf, HEADROOM, datagram.len());
            let v = p.process(now, Input::Underlay(from), &mut pkt);
            debug_assert!(matches!(v, Verdict::ToTap(3)));
            black_box(v)
        })
    });

    let mut request = vec![0u8; 42];
    ethernet::emit(
        &mut request,
        Mac::BROADCAST,
        Mac::for_ip(ip(2)),
        ethernet::ethertype::ARP,
    )
    .expect("room");
    arp::Repr {
        operation: arp::OP_REQUEST,
        sender_mac: Mac::for_ip(ip(2)),
        sender_ip: ip(2),
        target_mac: Mac::ZERO,
        target_ip: ip(150),
    }
    .emit(&mut request[14..])
    .expect("room");
    let mut buf = vec![0u8; HEADROOM + 42];
    g.bench_function("arp reply", |b| {
        b.iter(|| {
            buf[HEADROOM..].copy_from_slice(&request);
            let mut pkt = Packet::new(&mut buf, HEADROOM, 42);
            black_box(p.process(now, Input::Tap(2), &mut pkt))
        })
    });
    g.finish();

    // A 64 KB TSO super-frame: classify, encap, cut into 47 segments (only
    // headers are written; the payload is sent from where it was read). The
    // frame is placed once: processing it again rewrites the same headers.
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(65_000));
    const MSS: usize = 1396;
    let super_frame = tcp_frame_len(2, 150, 34 + 20 + 65_000, 1);
    let mut buf = vec![0u8; HEADROOM + super_frame.len()];
    buf[HEADROOM..].copy_from_slice(&super_frame);
    let mut headers = vec![0u8; 128 * 142];
    for (name, full) in [
        ("segment+encap 64KB, to an agent", false),
        ("segment+encap 64KB, full checksums", true),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut pkt = Packet::new(&mut buf, HEADROOM, super_frame.len());
                let v = p.process(now, Input::Tap(2), &mut pkt);
                debug_assert!(matches!(v, Verdict::ToUnderlay(_)));
                black_box(segment_tcp4(pkt.bytes(), MSS, full, 0, &mut headers).expect("fits"))
            })
        });
    }

    // The same 64 KB arriving as 47 VXLAN datagrams in one GRO buffer:
    // decap each, coalesce into one GSO frame for the TAP (headers only).
    let mut gro = vec![0u8; HEADROOM];
    let mut datagrams = vec![];
    let mut seq = 1u32;
    let mut left = 65_000usize;
    while left > 0 {
        let n = left.min(MSS);
        let at = gro.len();
        let mut d = vec![0u8; vxlan::HEADER_LEN];
        vxlan::emit(&mut d, Vni::new(4096).expect("24-bit")).expect("room");
        d.extend_from_slice(&tcp_frame_len(150, 3, 54 + n, seq));
        gro.extend_from_slice(&d);
        datagrams.push((at, d.len()));
        seq = seq.wrapping_add(n as u32);
        left -= n;
    }
    let mut coalescer = Coalescer::new(8);
    g.bench_function("decap+coalesce 64KB", |b| {
        b.iter(|| {
            let mut parts = 0usize;
            let mut sink = |_: u32, _: &VnetHeader, _: &[u8], p: &[Part]| parts += p.len();
            for &(at, len) in &datagrams {
                let mut pkt = Packet::new(&mut gro, at, len);
                if let Verdict::ToTap(port) = p.process(now, Input::Underlay(from), &mut pkt) {
                    let here = Part {
                        buf: 0,
                        start: pkt.start as u32,
                        len: pkt.len() as u32,
                    };
                    let (s, e) = (pkt.start, pkt.end);
                    coalescer.offer(port, &gro[s..e], here, true, &mut sink);
                }
            }
            coalescer.flush(&mut sink);
            black_box(parts)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
