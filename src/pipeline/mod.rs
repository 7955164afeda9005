//! The packet core, sans-IO.
//!
//! [`Pipeline::process`] takes one frame (from a container's TAP or a VXLAN
//! datagram from the underlay) and the time, rewrites it in its buffer, and
//! returns a [`Verdict`] that says where to transmit it. It never touches a
//! file descriptor and never allocates, locks or panics; a frame it will not
//! carry is dropped with a [`DropReason`] and counted.
//!
//! The steps, in the order a frame meets them:
//! 1. classify: which port or VNI it came from, and is the sender allowed ([`Pipeline::process`])
//! 2. ARP: answered from the tables ([`arp`]); anything else is switched ([`switch`])
//! 3. encap: VXLAN header in front, to the VTEP of the destination's host ([`encap`])
//! 4. decap: on the receiving host, VXLAN header off, to the container's TAP

pub mod arp;
pub mod coalesce;
pub mod counters;
pub mod encap;
pub mod lb;
pub mod offload;
pub mod switch;

pub use counters::{Counters, DropReason};

use crate::tables::{Location, PortId, Tables};
use crate::wire::ethernet;
use counters::bump;
use std::net::SocketAddrV4;
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
}

impl<'a> Packet<'a> {
    /// `len` bytes at `start`, clamped to the buffer.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Self {
        let start = start.min(buf.len());
        let end = start.saturating_add(len).min(buf.len());
        Packet { buf, start, end }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Where a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// An Ethernet frame read from a container's TAP.
    Tap(PortId),
    /// A UDP datagram (VXLAN header + Ethernet frame) from the underlay.
    Underlay(SocketAddrV4),
}

/// What to do with the packet now in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the Ethernet frame to this container's TAP.
    ToTap(PortId),
    /// Send the VXLAN datagram to this VTEP.
    ToUnderlay(SocketAddrV4),
    /// Nothing to send; the reason has been counted.
    Drop(DropReason),
}

/// One dataplane thread's view of the packet core: the current tables and the
/// counters it owns.
pub struct Pipeline {
    tables: Arc<Tables>,
    counters: Arc<Counters>,
}

impl Pipeline {
    pub fn new(tables: Arc<Tables>, counters: Arc<Counters>) -> Self {
        Pipeline { tables, counters }
    }

    /// Swaps in a new snapshot of the tables (between batches).
    pub fn set_tables(&mut self, tables: Arc<Tables>) {
        self.tables = tables;
    }

    /// True if `ip` is a mesh agent's VTEP (not a plain VXLAN device).
    pub fn peer_is_agent(&self, ip: std::net::Ipv4Addr) -> bool {
        self.tables.peers.get(&ip).is_some_and(|p| p.agent)
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Processes one frame. `now` will drive connection tracking and timers.
    pub fn process(&mut self, _now: Instant, input: Input, pkt: &mut Packet<'_>) -> Verdict {
        let verdict = match input {
            Input::Tap(port) => {
                bump(&self.counters.from_tap);
                self.on_tap(port, pkt)
            }
            Input::Underlay(src) => {
                bump(&self.counters.from_underlay);
                self.on_underlay(src, pkt)
            }
        };
        match verdict {
            Ok(v @ Verdict::ToTap(_)) => {
                bump(&self.counters.to_tap);
                v
            }
            Ok(v @ Verdict::ToUnderlay(_)) => {
                bump(&self.counters.to_underlay);
                v
            }
            Ok(Verdict::Drop(r)) | Err(r) => {
                bump(&self.counters.drops[r as usize]);
                Verdict::Drop(r)
            }
        }
    }

    fn on_tap(&mut self, port: PortId, pkt: &mut Packet<'_>) -> Result<Verdict, DropReason> {
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
        match switch::from_container(net, pkt.bytes())? {
            Location::Local(p) if p == port => Err(DropReason::Hairpin),
            Location::Local(p) => Ok(Verdict::ToTap(p)),
            Location::Remote(vtep) => {
                encap::encap(pkt, net.vni)?;
                Ok(Verdict::ToUnderlay(vtep))
            }
        }
    }

    fn on_underlay(
        &mut self,
        src: SocketAddrV4,
        pkt: &mut Packet<'_>,
    ) -> Result<Verdict, DropReason> {
        let tables = &*self.tables;
        let peer_port = tables
            .peers
            .get(src.ip())
            .ok_or(DropReason::NotMember)?
            .port;
        let vni = encap::decap(pkt)?;
        let net = tables.networks.get(&vni).ok_or(DropReason::UnknownVni)?;
        let eth = ethernet::Frame::new_checked(pkt.bytes()).map_err(|_| DropReason::Malformed)?;
        if eth.ethertype() == ethernet::ethertype::ARP {
            // A VTEP without an agent (a kernel vxlan device) floods its ARP
            // requests to us: answer from the tables, back to that VTEP.
            let len = arp::answer(net, pkt.bytes_mut())?;
            pkt.end = pkt.start + len;
            bump(&self.counters.arp_replies);
            encap::encap(pkt, vni)?;
            return Ok(Verdict::ToUnderlay(SocketAddrV4::new(*src.ip(), peer_port)));
        }
        let port = switch::from_underlay(net, pkt.bytes())?;
        Ok(Verdict::ToTap(port))
    }
}

#[cfg(test)]
mod tests;
