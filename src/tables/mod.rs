//! The tables the packet path reads: networks (by VNI), their endpoints (by IP
//! and by MAC), the agent's container ports, and the VTEPs allowed to send us
//! VXLAN.
//!
//! A [`Tables`] value is an immutable snapshot. The control side builds a new
//! one whenever the cluster view changes and publishes it through a
//! [`TablesCell`]; the dataplane checks a generation counter once per batch and
//! only then takes the lock to clone the `Arc`, so readers never lock per packet.
//!
//! Hashers: every key here (VNIs, IPs and MACs of endpoints) is assigned by the
//! cluster, not chosen by a packet; a lookup with a key from the wire can only
//! miss, so the default SipHash is more than enough and collision floods do not
//! apply (the conntrack table, which is keyed by wire 5-tuples, is different).

use crate::wire::{vxlan::Vni, Mac};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Index of a container port (a TAP owned by the agent) in the dataplane.
pub type PortId = u32;

/// Where frames for an endpoint go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A container on this host, behind one of our TAPs.
    Local(PortId),
    /// A container on another host (an agent or a plain VXLAN VTEP).
    Remote(SocketAddrV4),
}

/// One endpoint of a network: a container or a static endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub location: Location,
}

/// One overlay network as the dataplane sees it.
#[derive(Debug, Clone)]
pub struct NetworkTable {
    pub vni: Vni,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: Mac,
    pub by_ip: HashMap<Ipv4Addr, Endpoint>,
    pub by_mac: HashMap<Mac, Location>,
}

impl NetworkTable {
    pub fn new(vni: Vni, gateway_ip: Ipv4Addr) -> Self {
        NetworkTable {
            vni,
            gateway_ip,
            gateway_mac: Mac::for_gateway(gateway_ip),
            by_ip: HashMap::new(),
            by_mac: HashMap::new(),
        }
    }

    /// Adds an endpoint; a later insert for the same IP or MAC replaces it.
    pub fn insert(&mut self, ep: Endpoint) {
        self.by_ip.insert(ep.ip, ep);
        self.by_mac.insert(ep.mac, ep.location);
    }

    /// The MAC that answers ARP for `ip` in this network, if any.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<Mac> {
        if ip == self.gateway_ip {
            return Some(self.gateway_mac);
        }
        self.by_ip.get(&ip).map(|e| e.mac)
    }
}

/// A container port: which network it is on and who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub vni: Vni,
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// One immutable snapshot of everything the pipeline looks up.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub networks: HashMap<Vni, NetworkTable>,
    pub ports: HashMap<PortId, Port>,
    /// VTEPs we accept VXLAN from, and the UDP port each listens on.
    pub peers: HashMap<Ipv4Addr, u16>,
}

/// The published snapshot plus a generation counter for cheap change checks.
#[derive(Default)]
pub struct TablesCell {
    generation: AtomicU64,
    current: RwLock<Arc<Tables>>,
}

impl TablesCell {
    pub fn new(t: Tables) -> Self {
        TablesCell {
            generation: AtomicU64::new(1),
            current: RwLock::new(Arc::new(t)),
        }
    }

    /// Replaces the snapshot; readers pick it up at their next batch.
    pub fn publish(&self, t: Tables) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        *cur = Arc::new(t);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current snapshot and its generation.
    pub fn load(&self) -> (u64, Arc<Tables>) {
        let g = self.generation();
        let t = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (g, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_and_endpoints_answer_arp() {
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let mut n = NetworkTable::new(Vni::new(4096).unwrap(), gw);
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        n.insert(Endpoint {
            ip,
            mac: Mac::for_ip(ip),
            location: Location::Local(3),
        });
        assert_eq!(n.mac_of(gw), Some(Mac::for_gateway(gw)));
        assert_eq!(n.mac_of(ip), Some(Mac::for_ip(ip)));
        assert_eq!(n.mac_of(Ipv4Addr::new(10, 0, 0, 9)), None);
        assert_eq!(n.by_mac[&Mac::for_ip(ip)], Location::Local(3));
    }

    #[test]
    fn publish_bumps_generation() {
        let cell = TablesCell::new(Tables::default());
        let (g1, _) = cell.load();
        let mut t = Tables::default();
        t.peers.insert(Ipv4Addr::new(192, 168, 100, 117), 4789);
        cell.publish(t);
        let (g2, t2) = cell.load();
        assert!(g2 > g1);
        assert_eq!(t2.peers.len(), 1);
    }
}
