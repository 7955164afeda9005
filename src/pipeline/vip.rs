//! Step 2c: service VIPs. A frame from a container to a VIP is balanced here,
//! on the client's host: its flow is tracked ([`super::lb::conntrack`]), a task is
//! picked for a new flow by the service's scheduler ([`super::lb::Scheduler`]), and
//! the destination becomes that task ([`super::lb::nat`]); the task's replies get the
//! VIP back as their source before they reach the client. ICMP echo to a VIP
//! is answered here; a VIP without tasks refuses at once (TCP RST, ICMP port
//! unreachable), and so does a TCP segment of a flow that is not tracked.

use super::counters::{bump, Counters};
use super::flow::{flow_of, Flow};
use super::lb::conntrack::{Conntrack, Timeouts};
use super::lb::nat::{self, Side};
use super::lb::{FlowKey, Scheduler};
use super::{DropReason, Packet};
use crate::tables::{Location, NetworkTable, Tables};
use crate::wire::vxlan::Vni;
use crate::wire::{ethernet, ipv4, l4, Mac};
use std::sync::Arc;
use std::time::Instant;

/// The balancer's settings, from the agent's flags.
#[derive(Debug, Clone, Copy)]
pub struct BalancerConfig {
    pub conntrack_max: usize,
    pub timeouts: Timeouts,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            conntrack_max: 1 << 20,
            timeouts: Timeouts::default(),
        }
    }
}

/// The balancer's mutable state: the dataplane thread's own.
pub struct Balancer {
    pub conntrack: Conntrack,
    /// One scheduler per entry of `Tables::vips`, rebuilt with the tables.
    schedulers: Vec<Scheduler>,
    /// What each scheduler was built for (VIP, scheduler name, tasks), so an
    /// unchanged VIP keeps its scheduler's state across new tables.
    built_for: Vec<(
        std::net::Ipv4Addr,
        String,
        Vec<crate::pipeline::lb::Backend>,
    )>,
    active: Vec<u32>,
    counters: Arc<Counters>,
}

/// What happened to a frame sent to a VIP.
pub(super) enum VipOutcome {
    /// Translated: deliver to the task.
    Forward(Location),
    /// A reply made here, back to the sender.
    Reply,
}

impl Balancer {
    pub fn new(config: BalancerConfig, tables: &Tables, counters: Arc<Counters>) -> Balancer {
        let mut b = Balancer {
            conntrack: Conntrack::new(config.conntrack_max, config.timeouts),
            schedulers: vec![],
            built_for: vec![],
            // A VIP's open-flow counts per task, filled per new flow: room
            // for this many tasks, so that the packet path does not grow it.
            active: Vec::with_capacity(1024),
            counters,
        };
        b.set_tables(tables);
        b
    }

    /// Rebuilds the schedulers for new tables (a Maglev table is built here,
    /// off the per-packet path). A VIP whose tasks did not change keeps its
    /// scheduler as it was: tables change for many reasons (any container
    /// anywhere), and round-robin must not start over each time.
    pub fn set_tables(&mut self, tables: &Tables) {
        let mut old: Vec<Option<Scheduler>> = std::mem::take(&mut self.schedulers)
            .into_iter()
            .map(Some)
            .collect();
        let built_for = std::mem::take(&mut self.built_for);
        for v in &tables.vips {
            // The first match not taken yet: a published port's pool may
            // list the same VIP and tasks as its first network's VIP, and
            // each keeps its own (tables list them in the same order).
            let kept = built_for
                .iter()
                .zip(old.iter_mut())
                .find(|((vip, name, backends), s)| {
                    s.is_some() && *vip == v.vip && *name == v.scheduler && *backends == v.backends
                })
                .and_then(|(_, s)| s.take());
            let s = kept.unwrap_or_else(|| {
                Scheduler::named(&v.scheduler, &v.backends)
                    .unwrap_or(Scheduler::RoundRobin { next: 0 })
            });
            self.schedulers.push(s);
            self.built_for
                .push((v.vip, v.scheduler.clone(), v.backends.clone()));
        }
    }

    /// Handles a frame to `vip` (index `idx` in the tables) from a container.
    pub(super) fn balance(
        &mut self,
        now: Instant,
        tables: &Tables,
        net: &NetworkTable,
        idx: usize,
        pkt: &mut Packet<'_>,
    ) -> Result<VipOutcome, DropReason> {
        let vip = tables.vips.get(idx).ok_or(DropReason::UnknownDestination)?;
        let ip = ipv4::Packet::new_checked(&pkt.bytes()[ethernet::HEADER_LEN..])
            .map_err(|_| DropReason::Malformed)?;
        if ip.protocol() == ipv4::protocol::ICMP {
            if let Some(q) = super::lb::icmp::quoted(pkt.bytes()) {
                let from = ip.src();
                return self.icmp_error_to_task(now, net, from, &q, pkt);
            }
            return if nat::echo_reply(pkt.bytes_mut()) {
                pkt.reflected = true;
                Ok(self.replied(pkt))
            } else {
                Err(DropReason::NoRoute)
            };
        }
        let first = ip.is_first_fragment();
        let Some(f) = flow_of(pkt.bytes())? else {
            return Err(if first {
                DropReason::UnsupportedProtocol
            } else {
                DropReason::Malformed
            });
        };
        let (key, flags) = (f.key(), f.flags);
        let tcp = f.protocol == ipv4::protocol::TCP;
        let mut new_flow = false;
        let backend = match self.conntrack.touch(&key, flags, true, now) {
            Some(e) => e.backend,
            None => {
                if tcp && flags & l4::tcp_flags::RST != 0 {
                    return Err(DropReason::NoRoute);
                }
                // A segment of a flow we do not know (expired, or the agent
                // restarted): reset it so the peer learns now.
                if tcp && flags & l4::tcp_flags::SYN == 0 {
                    bump(&vip.stats.reset_untracked);
                    return self.refuse(pkt, DropReason::UntrackedFlow);
                }
                let flow = f.scheduler_key();
                let ct = &self.conntrack;
                let Some(i) = pick(
                    &mut self.schedulers,
                    &mut self.active,
                    idx,
                    &vip.backends,
                    &flow,
                    |b| ct.active_to(b),
                ) else {
                    bump(&vip.stats.refused_no_task);
                    return self.refuse(pkt, DropReason::NoBackend);
                };
                let Some(i) = not_the_sender(&vip.backends, i, &flow) else {
                    return self.refuse(pkt, DropReason::Hairpin);
                };
                let backend = vip.backends[i].ip;
                if self
                    .conntrack
                    .track(key, backend, key.port, flags, now)
                    .is_err()
                {
                    bump(&vip.stats.refused_table_full);
                    return self.refuse(pkt, DropReason::ConntrackFull);
                }
                new_flow = true;
                backend
            }
        };
        let Some(ep) = net.by_ip.get(&backend) else {
            // The task left this network: forget the flow, reset the client.
            self.conntrack.remove(&key);
            return self.refuse(pkt, DropReason::NoBackend);
        };
        vip.count(backend, pkt.len(), new_flow);
        let partial = pkt.csum_partial;
        nat::rewrite(pkt.bytes_mut(), Side::Destination, backend, ep.mac, partial);
        Ok(VipOutcome::Forward(ep.location))
    }

    /// Gives a task's reply to a client (in network `vni`) the VIP as its
    /// source. Returns true if the frame belonged to a tracked flow.
    #[inline]
    pub(super) fn reverse(
        &mut self,
        now: Instant,
        tables: &Tables,
        vni: Vni,
        pkt: &mut Packet<'_>,
    ) -> bool {
        // Most frames, when no VIP flow is open, cost only this.
        !self.conntrack.is_empty() && self.reverse_tracked(now, tables, vni, pkt)
    }

    fn reverse_tracked(
        &mut self,
        now: Instant,
        tables: &Tables,
        vni: Vni,
        pkt: &mut Packet<'_>,
    ) -> bool {
        if let Some(q) = super::lb::icmp::quoted(pkt.bytes()) {
            return self.reverse_icmp_error(now, &q, pkt);
        }
        // The frame has been switched, so it is IPv4 (`switch` checked).
        let Ok(Some(f)) = flow_of(pkt.bytes()) else {
            return false;
        };
        let r = f.reply_key();
        let Some((key, _)) = self.conntrack.touch_reply(&r, f.flags, now) else {
            return false;
        };
        let net = tables.networks.get(&vni);
        if let Some(vip) = net
            .and_then(|n| n.vips.get(&key.vip))
            .and_then(|i| tables.vips.get(*i))
        {
            vip.count(r.backend, pkt.len(), false);
        }
        let partial = pkt.csum_partial;
        nat::rewrite(
            pkt.bytes_mut(),
            Side::Source,
            key.vip,
            Mac::for_ip(key.vip),
            partial,
        );
        true
    }

    /// An ICMP error a task sent about a packet of a VIP flow: it comes from
    /// the VIP and quotes the packet as the client sent it.
    fn reverse_icmp_error(&mut self, now: Instant, q: &Flow, pkt: &mut Packet<'_>) -> bool {
        let Some((key, _)) = self.conntrack.reply(&q.reversed().reply_key(), now) else {
            return false;
        };
        let frame = pkt.bytes_mut();
        if !super::lb::icmp::translate_back(frame, key.vip, key.port) {
            return false;
        }
        frame[6..12].copy_from_slice(&Mac::for_ip(key.vip).0);
        true
    }

    /// An ICMP error a client (`from`) sent to the VIP about a task's reply
    /// (`q`, quoted as the client got it: from the VIP): to that task,
    /// quoting the reply as the task sent it, so its socket learns of it.
    fn icmp_error_to_task(
        &mut self,
        now: Instant,
        net: &NetworkTable,
        from: std::net::Ipv4Addr,
        q: &Flow,
        pkt: &mut Packet<'_>,
    ) -> Result<VipOutcome, DropReason> {
        // Only the client itself speaks for its flow (no router sits
        // between it and the VIP): another container's error about it is
        // a forgery.
        if from != q.dst {
            return Err(DropReason::Spoofed);
        }
        let e = self
            .conntrack
            .get(&q.reversed().key(), now)
            .ok_or(DropReason::UntrackedFlow)?;
        let ep = net.by_ip.get(&e.backend).ok_or(DropReason::NoBackend)?;
        let frame = pkt.bytes_mut();
        if !super::lb::icmp::translate_to_task(frame, e.backend, e.backend_port) {
            return Err(DropReason::Malformed);
        }
        frame[0..6].copy_from_slice(&ep.mac.0);
        Ok(VipOutcome::Forward(ep.location))
    }

    /// Answers the sender at once: TCP RST, or ICMP port unreachable for UDP.
    fn refuse(
        &mut self,
        pkt: &mut Packet<'_>,
        reason: DropReason,
    ) -> Result<VipOutcome, DropReason> {
        refuse_counted(&self.counters, pkt, reason).map(|()| VipOutcome::Reply)
    }

    fn replied(&mut self, pkt: &mut Packet<'_>) -> VipOutcome {
        pkt.plain = true;
        pkt.csum_partial = false;
        VipOutcome::Reply
    }

    /// Picks a task of VIP table `idx` for a new flow (see [`pick`]).
    pub(super) fn pick(
        &mut self,
        idx: usize,
        backends: &[crate::pipeline::lb::Backend],
        flow: &FlowKey,
        open_flows: impl Fn(std::net::Ipv4Addr) -> u32,
    ) -> Option<usize> {
        pick(
            &mut self.schedulers,
            &mut self.active,
            idx,
            backends,
            flow,
            open_flows,
        )
    }

    /// Expires idle flows (see [`Conntrack::expire`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conntrack.expire(now);
    }
}

/// Picks a task with scheduler `idx` for a new flow. Only least-connections
/// reads open-flow counts, and counting scans a table: they are taken for
/// that scheduler alone.
fn pick(
    schedulers: &mut [Scheduler],
    active: &mut Vec<u32>,
    idx: usize,
    backends: &[crate::pipeline::lb::Backend],
    flow: &FlowKey,
    open_flows: impl Fn(std::net::Ipv4Addr) -> u32,
) -> Option<usize> {
    active.clear();
    if matches!(schedulers.get(idx), Some(Scheduler::LeastConnections)) {
        active.extend(backends.iter().map(|b| open_flows(b.ip)));
    }
    schedulers.get_mut(idx)?.pick(backends, flow, active)
}

/// The backend a task's own connection to its service's VIP goes to: the
/// pick `i`, unless that is the task itself. The frame cannot be handed
/// back to its sender (from and to one address, its kernel drops it, and
/// the answer would not pass the balancer), so another task takes it,
/// chosen by the flow's hash (a retransmitted SYN finds its entry anyway);
/// with no other task, `None`: it is refused at once, not left to hang.
fn not_the_sender(
    backends: &[crate::pipeline::lb::Backend],
    i: usize,
    flow: &FlowKey,
) -> Option<usize> {
    let n = backends.len();
    if backends.get(i)?.ip != flow.src {
        return Some(i);
    }
    if n < 2 {
        return None;
    }
    let skip = crate::pipeline::lb::flow_hash(flow) % (n as u64 - 1);
    Some((i + 1 + skip as usize) % n)
}

/// Turns the frame into the answer that refuses it and counts `reason` (a
/// refusal is a drop with an answer); without an answer to make, `reason`
/// is given back for the caller's drop to count.
pub(super) fn refuse_counted(
    counters: &Counters,
    pkt: &mut Packet<'_>,
    reason: DropReason,
) -> Result<(), DropReason> {
    if refusal(pkt) {
        bump(&counters.drops[reason as usize]);
        Ok(())
    } else {
        Err(reason)
    }
}

/// Turns the frame into the answer that refuses it: a TCP RST, or ICMP port
/// unreachable for UDP, back to its sender. False if there is none to make.
pub(super) fn refusal(pkt: &mut Packet<'_>) -> bool {
    let ip_at = pkt.start + ethernet::HEADER_LEN;
    let proto = pkt.buf.get(ip_at + 9).copied().unwrap_or(0);
    let end = match proto {
        ipv4::protocol::TCP => nat::tcp_reset(pkt.bytes_mut()).map(|len| pkt.start + len),
        ipv4::protocol::UDP => nat::port_unreachable(pkt.buf, pkt.start, pkt.end),
        _ => None,
    };
    match end {
        Some(end) => {
            pkt.end = end;
            pkt.plain = true;
            pkt.csum_partial = false;
            true
        }
        None => false,
    }
}
