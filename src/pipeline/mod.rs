//! The packet core, sans-IO.
//!
//! [`Pipeline::process`] takes one frame (from a container's TAP, a VXLAN
//! datagram from the underlay, or a packet from the host's ingress TUN) and
//! the time, rewrites it in its buffer, and
//! returns a [`Verdict`] that says where to transmit it. It never touches a
//! file descriptor and never allocates, locks or panics; a frame it will not
//! carry is dropped with a [`DropReason`] and counted.
//!
//! The steps, in the order a frame meets them:
//! 1. classify: which port or VNI it came from, and is the sender allowed ([`Pipeline::process`])
//! 2. ARP: answered from the tables ([`arp`]); anything else is switched ([`switch`])
//! 3. encap: VXLAN header in front, to the VTEP of the destination's host ([`encap`])
//! 4. decap: on the receiving host, VXLAN header off, to the container's TAP
//!
//! Beside them: IPv4 fragments after the first follow it ([`fragments`]);
//! the rest of a burst from the underlay reuses the first datagram's lookups
//! (`burst`); service VIPs are balanced on the client's host ([`vip`],
//! [`lb`]); published ports, the task's replies and egress cross between the
//! host stack and the overlay in [`ingress`]; super-frames are cut and joined
//! in [`offload`] and [`coalesce`].

pub mod arp;
mod burst;
pub mod coalesce;
pub mod counters;
pub mod encap;
pub mod flow;
pub mod fragments;
pub mod ingress;
pub mod lb;
pub mod offload;
mod prefetch;
pub mod switch;
pub mod vip;

pub use counters::{Counters, DropReason};

use crate::tables::{Location, PortId, Tables};
use crate::wire::ethernet;
use counters::bump;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

/// Room kept in front of every frame in a buffer: the VXLAN header (8) and,
/// later, a virtio-net header (12), rounded up.
pub const HEADROOM: usize = 64;

/// A frame in a caller-owned buffer: the bytes are `buf[start..end]`. The
/// pipeline moves `start` to add or strip headers in place.
pub struct Packet<'a> {
    pub buf: &'a mut [u8],
    pub start: usize,
    pub end: usize,
    /// In: the TCP/UDP checksum holds only the pseudo-header sum (the
    /// kernel's CHECKSUM_PARTIAL), so rewrites must keep it that way.
    pub csum_partial: bool,
    /// Out: the frame was made here (a RST, an ICMP reply): write it plain,
    /// without the offload metadata the input came with.
    pub plain: bool,
    /// Out: the frame was answered with itself, turned around (an ICMP echo
    /// reply): the later fragments of its datagram are turned around alike.
    pub reflected: bool,
}

impl<'a> Packet<'a> {
    /// `len` bytes at `start`, clamped to the buffer.
    #[inline]
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Self {
        let start = start.min(buf.len());
        let end = start.saturating_add(len).min(buf.len());
        Packet {
            buf,
            start,
            end,
            csum_partial: false,
            plain: false,
            reflected: false,
        }
    }
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Where a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// An Ethernet frame read from a container's TAP.
    Tap(PortId),
    /// A UDP datagram (VXLAN header + Ethernet frame) from the underlay.
    Underlay(SocketAddrV4),
    /// An IPv4 packet from the host stack (the ingress TUN), with room for
    /// an Ethernet header in front of `start`.
    Host,
}

impl Input {
    /// Where the IPv4 header of a frame read from here starts, if it is
    /// IPv4: behind the VXLAN and Ethernet headers, the Ethernet header, or
    /// at once (the host stack's packets).
    #[inline]
    pub fn ip_offset(self) -> usize {
        match self {
            Input::Tap(_) => ethernet::HEADER_LEN,
            Input::Underlay(_) => crate::wire::vxlan::HEADER_LEN + ethernet::HEADER_LEN,
            Input::Host => 0,
        }
    }
}

/// What to do with the packet now in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the Ethernet frame to this container's TAP.
    ToTap(PortId),
    /// Send the VXLAN datagram to this VTEP.
    ToUnderlay(SocketAddrV4),
    /// Hand the IPv4 packet inside this Ethernet frame to the host stack.
    ToHost,
    /// Nothing to send; the reason has been counted.
    Drop(DropReason),
}

/// One dataplane thread's view of the packet core: the current tables and the
/// counters it owns.
pub struct Pipeline {
    tables: Arc<Tables>,
    counters: Arc<Counters>,
    balancer: vip::Balancer,
    ingress: ingress::Ingress,
    /// The table lookups of the last datagram switched to a container.
    memo: Option<burst::Memo>,
    /// What the first fragments of recent datagrams became.
    fragments: fragments::Fragments,
}

impl Pipeline {
    pub fn new(tables: Arc<Tables>, counters: Arc<Counters>) -> Self {
        Self::with_balancer(tables, counters, vip::BalancerConfig::default())
    }

    pub fn with_balancer(
        tables: Arc<Tables>,
        counters: Arc<Counters>,
        config: vip::BalancerConfig,
    ) -> Self {
        let balancer = vip::Balancer::new(config, &tables, counters.clone());
        let ingress = ingress::Ingress::new(config, counters.clone());
        Pipeline {
            tables,
            counters,
            balancer,
            ingress,
            memo: None,
            fragments: fragments::Fragments::default(),
        }
    }

    /// Swaps in a new snapshot of the tables (between batches).
    pub fn set_tables(&mut self, tables: Arc<Tables>) {
        self.balancer.set_tables(&tables);
        self.tables = tables;
        self.memo = None;
    }

    /// Forgets what pointed at port `port`, which was just removed: a port
    /// number is soon another container's.
    pub fn forget_port(&mut self, port: crate::tables::PortId) {
        self.fragments.forget_port(port);
        self.memo = None;
    }

    /// Whether later fragments that came before their first wait to be
    /// sent ([`Pipeline::released`]); check after a batch.
    #[inline]
    pub fn has_released(&self) -> bool {
        self.fragments.has_released()
    }

    /// Hands each later fragment whose first has now come to `send`, made
    /// what the first became (its verdict and bytes), after the first went.
    pub fn released(&mut self, mut send: impl FnMut(Verdict, &[u8])) {
        let counters = &self.counters;
        self.fragments.released(|v, bytes| {
            let _ = Self::count_in(counters, Ok(v));
            send(v, bytes)
        });
    }

    /// Timers: expires idle tracked flows (bounded work; call once per batch).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.balancer.handle_timeout(now);
        self.ingress.handle_timeout(now);
    }

    /// Flows tracked now.
    pub fn tracked_flows(&self) -> usize {
        self.balancer.conntrack.len()
    }

    /// True if `ip` is a mesh agent's VTEP (not a plain VXLAN device).
    pub fn peer_is_agent(&self, ip: std::net::Ipv4Addr) -> bool {
        self.tables.peers.get(&ip).is_some_and(|p| p.agent)
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Processes one frame. `now` will drive connection tracking and timers.
    #[inline(always)]
    pub fn process(&mut self, now: Instant, input: Input, pkt: &mut Packet<'_>) -> Verdict {
        // The rest of a burst from the underlay takes a short way (see
        // `burst`), without the whole of the packet core around it.
        if let Input::Underlay(src) = input {
            // Compared where it lies: a copy of the memo on the stack, read
            // back at once in other widths, stalled every datagram on
            // store forwarding (a fifth of this function's time).
            let memo = self.memo.as_ref().filter(|m| m.matches(src, pkt.bytes()));
            if let Some(way) = memo.map(|m| m.way) {
                bump(&self.counters.from_underlay);
                let verdict = way
                    .decap(pkt)
                    .map(|()| self.deliver_local(now, src, way, pkt));
                return self.count(verdict);
            }
        }
        self.process_any(now, input, pkt)
    }

    #[inline(never)]
    fn process_any(&mut self, now: Instant, input: Input, pkt: &mut Packet<'_>) -> Verdict {
        bump(match input {
            Input::Tap(_) => &self.counters.from_tap,
            Input::Underlay(_) => &self.counters.from_underlay,
            Input::Host => &self.counters.from_host,
        });
        let verdict = match fragments::part_of(input, pkt.bytes()) {
            fragments::Part::Whole => self.dispatch(now, input, pkt),
            fragments::Part::Later(id) => match self.fragments.follow(id, pkt, now) {
                Some(verdict) => {
                    bump(&self.counters.fragments_followed);
                    verdict
                }
                None => self.unmatched_fragment(now, input, id, pkt),
            },
            fragments::Part::First(id) => {
                let verdict = self.dispatch(now, input, pkt);
                match verdict {
                    Ok(v) if !pkt.plain || pkt.reflected => {
                        let n = self.fragments.note(id, v, pkt, now);
                        counters::add(&self.counters.fragments_followed, n as u64);
                    }
                    _ => self.fragments.forget(&id),
                }
                verdict
            }
            fragments::Part::Overlapping => Err(DropReason::Malformed),
        };
        self.count(verdict)
    }

    /// A later fragment with no note of its first: judged on its own, and
    /// kept as it came in case its first is still to come (see `fragments`).
    fn unmatched_fragment(
        &mut self,
        now: Instant,
        input: Input,
        id: fragments::Id,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        bump(&self.counters.fragments_unmatched);
        let parked = self.fragments.park(id, pkt, now);
        let verdict = self.dispatch(now, input, pkt);
        let Some(i) = parked else {
            return verdict;
        };
        bump(&self.counters.fragments_parked);
        match verdict {
            // To the host stack it waits for its first: a copy follows it.
            Ok(Verdict::ToHost) => Err(DropReason::FragmentHeld),
            Ok(v) => {
                self.fragments.went(i, v, pkt);
                Ok(v)
            }
            Err(r) => Err(r),
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        input: Input,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        match input {
            Input::Tap(port) => self.on_tap(now, port, pkt),
            Input::Underlay(src) => self.on_underlay(now, src, pkt),
            Input::Host => self.on_host(now, pkt),
        }
    }

    /// Counts where a frame goes, or why it does not.
    #[inline]
    fn count(&self, verdict: Result<Verdict, DropReason>) -> Verdict {
        Self::count_in(&self.counters, verdict)
    }

    #[inline]
    fn count_in(counters: &Counters, verdict: Result<Verdict, DropReason>) -> Verdict {
        match verdict {
            Ok(v @ Verdict::ToTap(_)) => {
                bump(&counters.to_tap);
                v
            }
            Ok(v @ Verdict::ToUnderlay(_)) => {
                bump(&counters.to_underlay);
                v
            }
            Ok(Verdict::ToHost) => {
                bump(&counters.to_host);
                Verdict::ToHost
            }
            Ok(Verdict::Drop(r)) | Err(r) => {
                bump(&counters.drops[r as usize]);
                Verdict::Drop(r)
            }
        }
    }

    fn on_tap(
        &mut self,
        now: Instant,
        port: PortId,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        let tables = &*self.tables;
        let me = tables.ports.get(&port).ok_or(DropReason::UnknownPort)?;
        let net = tables.networks.get(&me.vni).ok_or(DropReason::UnknownVni)?;
        let eth = ethernet::Frame::new_checked(pkt.bytes()).map_err(|_| DropReason::Malformed)?;
        if eth.src() != me.mac {
            return Err(DropReason::Spoofed);
        }
        if eth.ethertype() == ethernet::ethertype::ARP {
            let len = arp::answer(net, pkt.bytes_mut())?;
            pkt.end = pkt.start + len;
            bump(&self.counters.arp_replies);
            return Ok(Verdict::ToTap(port));
        }
        // A container sends from its own address only: with another task's
        // it could forge a reply of that task's ingress flow, or a RST in
        // a VIP client's name that closes the client's tracked flow.
        // Its own: the port's, or (a container on several networks) one of
        // its other ports', for a reply follows the default route whatever
        // address it is from.
        if eth.ethertype() == ethernet::ethertype::IPV4 {
            // The IPv4 source address, without parsing the rest yet.
            const SRC: std::ops::Range<usize> =
                ethernet::HEADER_LEN + 12..ethernet::HEADER_LEN + 16;
            let src: [u8; 4] = pkt
                .bytes()
                .get(SRC)
                .and_then(|s| s.try_into().ok())
                .ok_or(DropReason::Malformed)?;
            let src = Ipv4Addr::from(src);
            let own = src == me.ip
                || tables
                    .sibling_ips
                    .get(&port)
                    .is_some_and(|ips| ips.contains(&src));
            if !own {
                return Err(DropReason::Spoofed);
            }
        }
        if eth.dst() == net.gateway_mac {
            return self.ingress.on_container(now, tables, net, pkt);
        }
        if let Some(idx) = vip_of(net, pkt.bytes()) {
            return match self.balancer.balance(now, tables, net, idx, pkt)? {
                vip::VipOutcome::Reply => Ok(Verdict::ToTap(port)),
                vip::VipOutcome::Forward(Location::Local(p)) if p == port => {
                    Err(DropReason::Hairpin)
                }
                vip::VipOutcome::Forward(Location::Local(p)) => Ok(Verdict::ToTap(p)),
                vip::VipOutcome::Forward(Location::Remote(vtep)) => {
                    encap::encap(pkt, net.vni)?;
                    Ok(Verdict::ToUnderlay(vtep))
                }
            };
        }
        match switch::from_container(net, pkt.bytes())? {
            Location::Local(p) if p == port => Err(DropReason::Hairpin),
            Location::Local(p) => {
                self.balancer.reverse(now, tables, net.vni, pkt);
                Ok(Verdict::ToTap(p))
            }
            Location::Remote(vtep) => {
                encap::encap(pkt, net.vni)?;
                Ok(Verdict::ToUnderlay(vtep))
            }
        }
    }

    fn on_underlay(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        let tables = &*self.tables;
        let peer = *tables.peers.get(src.ip()).ok_or(DropReason::NotMember)?;
        let vni = encap::decap(pkt, peer.agent)?;
        let net = tables.networks.get(&vni).ok_or(DropReason::UnknownVni)?;
        let eth = ethernet::Frame::new_checked(pkt.bytes()).map_err(|_| DropReason::Malformed)?;
        if eth.ethertype() == ethernet::ethertype::ARP {
            // A VTEP without an agent (a kernel vxlan device) floods its ARP
            // requests to us: answer from the tables, back to that VTEP.
            let len = arp::answer(net, pkt.bytes_mut())?;
            pkt.end = pkt.start + len;
            bump(&self.counters.arp_replies);
            encap::encap(pkt, vni)?;
            return Ok(Verdict::ToUnderlay(SocketAddrV4::new(*src.ip(), peer.port)));
        }
        let (dst_mac, src_mac) = (eth.dst(), eth.src());
        if dst_mac == net.gateway_mac {
            // Only another agent routes to us (a plain VTEP has no business
            // reaching this host's stack through the overlay).
            if !peer.agent {
                return Err(DropReason::NoRoute);
            }
            return self.ingress.on_underlay(now, tables, pkt);
        }
        let port = switch::from_underlay(net, pkt.bytes())?;
        // Routed here by another host's ingress: replies go back through it.
        let way = burst::Way {
            port,
            vni,
            routed: src_mac == net.gateway_mac && peer.agent,
            agent: peer.agent,
        };
        let datagram = &pkt.buf[pkt.start - crate::wire::vxlan::HEADER_LEN..pkt.end];
        self.memo = burst::Memo::new(src, datagram, way);
        Ok(self.deliver_local(now, src, way, pkt))
    }

    /// The last step of a frame from the underlay to a container: the flow
    /// is noted where it needs to be, and a task's reply to a VIP client
    /// gets the VIP back as its source.
    #[inline]
    fn deliver_local(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        way: burst::Way,
        pkt: &mut Packet<'_>,
    ) -> Verdict {
        if way.routed {
            self.ingress.learn_return(now, *src.ip(), pkt.bytes());
        }
        self.balancer.reverse(now, &self.tables, way.vni, pkt);
        Verdict::ToTap(way.port)
    }

    /// A packet from the host stack: an Ethernet header goes in front (the
    /// pipeline's frames all have one), then ingress decides.
    fn on_host(&mut self, now: Instant, pkt: &mut Packet<'_>) -> Result<Verdict, DropReason> {
        if pkt.start < ethernet::HEADER_LEN {
            return Err(DropReason::NoHeadroom);
        }
        pkt.start -= ethernet::HEADER_LEN;
        let head = &mut pkt.buf[pkt.start..pkt.start + ethernet::HEADER_LEN];
        head[..12].fill(0);
        head[12..].copy_from_slice(&ethernet::ethertype::IPV4.to_be_bytes());
        let tables = &*self.tables;
        self.ingress.on_host(now, &mut self.balancer, tables, pkt)
    }
}

/// The index of the VIP a frame is addressed to, if its network has VIPs and
/// it is IPv4 to one of them.
fn vip_of(net: &crate::tables::NetworkTable, frame: &[u8]) -> Option<usize> {
    if net.vips.is_empty() {
        return None;
    }
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    if eth.ethertype() != ethernet::ethertype::IPV4 {
        return None;
    }
    let ip = crate::wire::ipv4::Packet::new_checked(eth.payload()).ok()?;
    net.vips.get(&ip.dst()).copied()
}

#[cfg(test)]
mod tests;
