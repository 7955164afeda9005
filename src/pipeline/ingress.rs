//! Step 2d: the host's door. Traffic between the host's own stack (through
//! the ingress TUN: `io::tun`, set up by `netns::ingress`) and the overlay.
//!
//! 1. Ingress (`Ingress::on_host`): a client reaches a published port on
//!    this host. The flow is tracked here, a task is picked by the service's
//!    scheduler, and only the destination changes (address and port): the
//!    task sees the client's real address and port (no SNAT, unlike Swarm's
//!    ingress sandbox). The frame leaves with the network gateway's MAC as
//!    its source, which tells the task's host that it was routed.
//! 2. Return paths (`Ingress::learn_return`): the task's host notes which
//!    host such a routed flow came through, and sends the task's replies back
//!    there (`Ingress::on_container`) instead of out of its own host, so
//!    the client gets them from the address it connected to.
//! 3. Egress (`Ingress::on_container`): whatever else a container sends
//!    to its gateway for an address outside the overlay goes to this host's
//!    stack, which masquerades it (as Swarm's docker_gwbridge does); the
//!    replies come back in through the TUN addressed to the container, and
//!    are routed to it like any packet from the host to a container.
//!
//! Both tables here are keyed by 5-tuples from the wire, so they are
//! [`Conntrack`]s (keyed hash, bounded, TCP states, timeouts).

use super::counters::{bump, Counters};
use super::flow::{flow_of, Flow};
use super::lb::conntrack::{Conntrack, TcpState};
use super::lb::icmp;
use super::lb::nat::{self, Side};
use super::vip::{refuse_counted, Balancer, BalancerConfig};
use super::{encap, DropReason, Packet, Verdict};
use crate::tables::{Endpoint, Location, NetworkTable, Tables, VipTable};
use crate::wire::{ethernet, ipv4, l4, Mac};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

/// The ingress state of one dataplane thread.
pub struct Ingress {
    /// Flows that entered through this host's published ports.
    pub flows: Conntrack,
    /// Flows another host's ingress brought to our tasks. The key is the
    /// flow as it reaches the task (client -> task); the entry's backend is
    /// the VTEP of the host it came through.
    pub returns: Conntrack,
    /// Flows this host's stack opened to containers from its door (see
    /// `doors`), keyed as they left it.
    host_flows: Conntrack,
    counters: Arc<Counters>,
}

impl Ingress {
    pub fn new(config: BalancerConfig, counters: Arc<Counters>) -> Ingress {
        Ingress {
            flows: Conntrack::new(config.conntrack_max, config.timeouts),
            returns: Conntrack::keyed_only(config.conntrack_max, config.timeouts),
            host_flows: Conntrack::keyed_only(config.conntrack_max, config.timeouts),
            counters,
        }
    }

    /// A packet from the host stack. The caller has put an Ethernet header
    /// in front of it (addresses zero), so the frame code applies; a
    /// [`Verdict::ToHost`] answer goes back without that header.
    pub(super) fn on_host(
        &mut self,
        now: Instant,
        balancer: &mut Balancer,
        tables: &Tables,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        let ip = ipv4::Packet::new_checked(&pkt.bytes()[ethernet::HEADER_LEN..])
            .map_err(|_| DropReason::Malformed)?;
        let dst = ip.dst();
        // To a container: the host's own traffic, or replies to egress that
        // the host's NAT has turned back to the container's address.
        if let Some(vni) = tables.routed.get(&dst) {
            let net = tables.networks.get(vni).ok_or(DropReason::UnknownVni)?;
            let ep = net.by_ip.get(&dst).ok_or(DropReason::UnknownDestination)?;
            if tables.own_door == Some(ip.src()) {
                self.note_host_flow(now, pkt.bytes());
            }
            set_macs(pkt, ep.mac, net.gateway_mac);
            return deliver(pkt, net, ep.location);
        }
        // An ICMP error about a task's reply, from the client's side (the
        // host's rules steer those here): to the task.
        if let Some(q) = icmp::quoted(pkt.bytes()) {
            return self.icmp_error_to_task(now, tables, &q, pkt);
        }
        let Some(f) = flow_of(pkt.bytes())? else {
            return Err(DropReason::UnsupportedProtocol);
        };
        let Some(publ) = tables.published.get(&(f.protocol, f.ports.dst)) else {
            return Err(DropReason::NoRoute);
        };
        let vip = tables.vips.get(publ.vip).ok_or(DropReason::NoBackend)?;
        let key = f.key();
        let tcp = f.protocol == ipv4::protocol::TCP;
        let (entry, new_flow) = match self.flows.touch(&key, f.flags, true, now) {
            Some(e) => (e, false),
            None => {
                if tcp && f.flags & l4::tcp_flags::RST != 0 {
                    return Err(DropReason::NoRoute);
                }
                // A segment of a flow we do not know: reset it, so the
                // client learns now instead of hanging.
                if tcp && f.flags & l4::tcp_flags::SYN == 0 {
                    bump(&vip.stats.reset_untracked);
                    return self.refuse(pkt, DropReason::UntrackedFlow);
                }
                let flows = &self.flows;
                let flow = f.scheduler_key();
                let Some(i) = balancer.pick(publ.vip, &vip.backends, &flow, |b| flows.active_to(b))
                else {
                    bump(&vip.stats.refused_no_task);
                    return self.refuse(pkt, DropReason::NoBackend);
                };
                let backend = vip.backends[i].ip;
                let Ok(e) = self.flows.track(key, backend, publ.target, f.flags, now) else {
                    bump(&vip.stats.refused_table_full);
                    return self.refuse(pkt, DropReason::ConntrackFull);
                };
                (e, true)
            }
        };
        let Some((net, ep)) = task_endpoint(tables, vip, entry.backend) else {
            // The task left: forget the flow, reset the client.
            self.flows.remove(&key);
            return self.refuse(pkt, DropReason::NoBackend);
        };
        vip.count(entry.backend, pkt.len(), new_flow);
        let frame = pkt.bytes_mut();
        nat::rewrite(frame, Side::Destination, entry.backend, ep.mac, false);
        nat::rewrite_port(frame, Side::Destination, entry.backend_port, false);
        set_macs(pkt, ep.mac, net.gateway_mac);
        deliver(pkt, net, ep.location)
    }

    /// A frame a local container sent to its gateway (`net`'s): a reply of
    /// an ingress flow, back to the host stack or to the host it came
    /// through, or egress to the host stack.
    pub(super) fn on_container(
        &mut self,
        now: Instant,
        tables: &Tables,
        net: &NetworkTable,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        require_ipv4(pkt)?;
        if let Some(v) = self.icmp_error_from_task(now, tables, net, pkt)? {
            return Ok(v);
        }
        if let Some(f) = flow_of(pkt.bytes())? {
            if self.reverse(now, tables, &f, pkt) {
                return Ok(Verdict::ToHost);
            }
            // Keyed as the flow came in: client -> task.
            let k = f.reversed().key();
            if let Some(e) = self.returns.touch(&k, f.flags, false, now) {
                let peer = tables.peers.get(&e.backend).ok_or(DropReason::NoRoute)?;
                encap::encap(pkt, net.vni)?;
                return Ok(Verdict::ToUnderlay(SocketAddrV4::new(e.backend, peer.port)));
            }
        }
        let ip = ipv4::Packet::new_checked(&pkt.bytes()[ethernet::HEADER_LEN..])
            .map_err(|_| DropReason::Malformed)?;
        // To a host's door: an answer to its stack's own traffic, if that
        // host (this one, or the door's) finds the flow it opened.
        if tables.own_door == Some(ip.dst()) {
            return self.at_own_door(now, pkt);
        }
        if let Some(&door) = tables.host_doors.get(&ip.dst()) {
            encap::encap(pkt, net.vni)?;
            return Ok(Verdict::ToUnderlay(door));
        }
        // Networks are isolated from each other, as in Swarm: the host
        // stack would only send it back here.
        if tables.routed.contains_key(&ip.dst()) || !tables.egress {
            return Err(DropReason::NoRoute);
        }
        bump(&self.counters.egress);
        Ok(Verdict::ToHost)
    }

    /// A frame another agent routed to us (to our gateway MAC): a task's
    /// reply to a flow that entered here, or a container's answer to this
    /// host's own traffic. Anything else is dropped: handed to the host it
    /// would leave with the task's address.
    pub(super) fn on_underlay(
        &mut self,
        now: Instant,
        tables: &Tables,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        require_ipv4(pkt)?;
        // A published port's client may be this host itself, from its door
        // (`curl 127.0.0.1:8000`): those flows' replies are looked for first.
        let translated = match icmp::quoted(pkt.bytes()) {
            Some(q) => self.translate_error(now, &q, pkt),
            None => match flow_of(pkt.bytes())? {
                Some(f) => self.reverse(now, tables, &f, pkt).then_some(true),
                None => None,
            },
        };
        match translated {
            Some(true) => Ok(Verdict::ToHost),
            Some(false) => Err(DropReason::NoRoute),
            None => {
                let ip = ipv4::Packet::new_checked(&pkt.bytes()[ethernet::HEADER_LEN..])
                    .map_err(|_| DropReason::Malformed)?;
                if tables.own_door == Some(ip.dst()) {
                    self.at_own_door(now, pkt)
                } else {
                    Err(DropReason::NoRoute)
                }
            }
        }
    }

    /// A container's packet to this host's door: to the host's stack if it
    /// answers a flow that stack opened, else dropped.
    fn at_own_door(&mut self, now: Instant, pkt: &Packet<'_>) -> Result<Verdict, DropReason> {
        if self.answers_host(now, pkt.bytes()) {
            Ok(Verdict::ToHost)
        } else {
            Err(DropReason::UntrackedFlow)
        }
    }

    /// Translates an ICMP error about an ingress flow (its quoted packet
    /// `q` is client -> task) back to what the client knows. `None`: no
    /// such flow; `Some(false)`: the error could not be translated.
    fn translate_error(&mut self, now: Instant, q: &Flow, pkt: &mut Packet<'_>) -> Option<bool> {
        let (key, _) = self.flows.reply(&q.reversed().reply_key(), now)?;
        Some(icmp::translate_back(pkt.bytes_mut(), key.vip, key.port))
    }

    /// An ICMP error from the client's side quoting `q`, a reply of an
    /// ingress flow (a router on the way to the client could not forward
    /// it, and tells the path MTU): to the flow's task, translated, so that
    /// its stack lowers the path MTU instead of resending into a black hole.
    fn icmp_error_to_task(
        &mut self,
        now: Instant,
        tables: &Tables,
        q: &Flow,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        let e = self
            .flows
            .get(&q.reversed().key(), now)
            .ok_or(DropReason::UntrackedFlow)?;
        let vip = tables
            .published
            .get(&(q.protocol, q.ports.src))
            .and_then(|p| tables.vips.get(p.vip))
            .ok_or(DropReason::NoBackend)?;
        let (net, ep) = task_endpoint(tables, vip, e.backend).ok_or(DropReason::NoBackend)?;
        if !icmp::translate_to_task(pkt.bytes_mut(), e.backend, e.backend_port) {
            return Err(DropReason::Malformed);
        }
        set_macs(pkt, ep.mac, net.gateway_mac);
        deliver(pkt, net, ep.location)
    }

    /// An ICMP error a task sent about a packet of an ingress flow: back to
    /// the host the flow came through, translated where it entered (else it
    /// would leave with the task's address, and the client could not match
    /// it). `None`: not such an error.
    fn icmp_error_from_task(
        &mut self,
        now: Instant,
        tables: &Tables,
        net: &NetworkTable,
        pkt: &mut Packet<'_>,
    ) -> Result<Option<Verdict>, DropReason> {
        let Some(q) = icmp::quoted(pkt.bytes()) else {
            return Ok(None);
        };
        if let Some(translated) = self.translate_error(now, &q, pkt) {
            return Ok(translated.then_some(Verdict::ToHost));
        }
        let Some(e) = self.returns.get(&q.key(), now) else {
            return Ok(None);
        };
        let peer = tables.peers.get(&e.backend).ok_or(DropReason::NoRoute)?;
        encap::encap(pkt, net.vni)?;
        Ok(Some(Verdict::ToUnderlay(SocketAddrV4::new(
            e.backend, peer.port,
        ))))
    }

    /// Gives a task's reply of an ingress flow the address and port the
    /// client connected to. True if the frame belonged to one.
    fn reverse(&mut self, now: Instant, tables: &Tables, f: &Flow, pkt: &mut Packet<'_>) -> bool {
        if self.flows.is_empty() {
            return false;
        }
        let Some((key, _)) = self.flows.touch_reply(&f.reply_key(), f.flags, now) else {
            return false;
        };
        if let Some(vip) = tables
            .published
            .get(&(key.protocol, key.port))
            .and_then(|p| tables.vips.get(p.vip))
        {
            vip.count(f.src, pkt.len(), false);
        }
        let partial = pkt.csum_partial;
        let frame = pkt.bytes_mut();
        nat::rewrite(frame, Side::Source, key.vip, Mac([0; 6]), partial);
        nat::rewrite_port(frame, Side::Source, key.port, partial);
        true
    }

    /// Notes the host a routed frame for a local task came through (`vtep`),
    /// so the task's replies go back that way.
    pub(super) fn learn_return(&mut self, now: Instant, vtep: Ipv4Addr, frame: &[u8]) {
        let Ok(Some(f)) = flow_of(frame) else {
            return;
        };
        let k = f.key();
        match self.returns.touch(&k, f.flags, true, now) {
            Some(e) if e.backend == vtep => {}
            // The same tuple through another host while this one is open
            // (a client may use one source port towards two hosts): the
            // open flow keeps its path.
            Some(e) if e.state != TcpState::Closed => {
                bump(&self.counters.return_path_clashes);
            }
            _ => {
                if self.returns.track(k, vtep, k.port, f.flags, now).is_err() {
                    bump(&self.counters.return_path_full);
                }
            }
        }
    }

    /// Refuses the flow with a RST or port unreachable back to the host (the
    /// reason is counted here; if no answer can be made, by the caller's drop).
    fn refuse(&mut self, pkt: &mut Packet<'_>, reason: DropReason) -> Result<Verdict, DropReason> {
        refuse_counted(&self.counters, pkt, reason).map(|()| Verdict::ToHost)
    }

    /// Expires idle flows (see [`Conntrack::expire`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.flows.expire(now);
        self.returns.expire(now);
        self.host_flows.expire(now);
    }
}

/// Task `backend` of the published port served by `vip`: its network and
/// endpoint. Usually on the VIP's own network; a service on several
/// networks has tasks on the others too (see `agent::tables`).
#[inline]
fn task_endpoint<'t>(
    tables: &'t Tables,
    vip: &VipTable,
    backend: Ipv4Addr,
) -> Option<(&'t NetworkTable, &'t Endpoint)> {
    if let Some(net) = tables.networks.get(&vip.vni) {
        if let Some(ep) = net.by_ip.get(&backend) {
            return Some((net, ep));
        }
    }
    let net = tables.networks.get(tables.routed.get(&backend)?)?;
    Some((net, net.by_ip.get(&backend)?))
}

fn set_macs(pkt: &mut Packet<'_>, dst: Mac, src: Mac) {
    let f = pkt.bytes_mut();
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
}

fn deliver(
    pkt: &mut Packet<'_>,
    net: &NetworkTable,
    location: Location,
) -> Result<Verdict, DropReason> {
    match location {
        Location::Local(p) => Ok(Verdict::ToTap(p)),
        Location::Remote(vtep) => {
            encap::encap(pkt, net.vni)?;
            Ok(Verdict::ToUnderlay(vtep))
        }
    }
}

/// Routed traffic is IPv4 only: a frame to the gateway MAC with another
/// EtherType (IPv6, say) is not parsed as IPv4 whatever its bytes look like.
fn require_ipv4(pkt: &Packet<'_>) -> Result<(), DropReason> {
    match ethernet::Frame::new_checked(pkt.bytes()) {
        Ok(eth) if eth.ethertype() == ethernet::ethertype::IPV4 => Ok(()),
        Ok(_) => Err(DropReason::UnsupportedProtocol),
        Err(_) => Err(DropReason::Malformed),
    }
}

mod doors;
#[cfg(test)]
mod tests;
