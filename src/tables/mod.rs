//! The tables the packet path reads: networks (by VNI), their endpoints (by IP
//! and by MAC), the agent's container ports, and the VTEPs allowed to send us
//! VXLAN.
//!
//! A [`Tables`] value is an immutable snapshot. The control side builds a new
//! one whenever the cluster view changes and publishes it through a
//! [`TablesCell`]; the dataplane checks a generation counter once per batch and
//! only then takes the lock to clone the `Arc`, so readers never lock per packet.
//!
//! Hashers: every key stored here (VNIs, IPs and MACs of endpoints, VTEP
//! addresses) is assigned by the cluster, never inserted because of a packet.
//! A lookup with a key from the wire costs at most the probe length of what is
//! stored, which no sender controls, so a fast unkeyed hash ([`FastHasher`]) is
//! safe here. The conntrack table, filled from wire 5-tuples, needs a keyed one.

use crate::wire::{vxlan::Vni, Mac};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A multiply-rotate hash (the one rustc uses) for keys the cluster assigns.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FastHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A map keyed by cluster-assigned values.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

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
    pub by_ip: FastMap<Ipv4Addr, Endpoint>,
    pub by_mac: FastMap<Mac, Location>,
    /// Service VIPs on this network -> index in [`Tables::vips`].
    pub vips: FastMap<Ipv4Addr, usize>,
}

impl NetworkTable {
    pub fn new(vni: Vni, gateway_ip: Ipv4Addr) -> Self {
        NetworkTable {
            vni,
            gateway_ip,
            gateway_mac: Mac::for_gateway(gateway_ip),
            by_ip: FastMap::default(),
            by_mac: FastMap::default(),
            vips: FastMap::default(),
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
        if self.vips.contains_key(&ip) {
            return Some(Mac::for_ip(ip));
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

/// A VTEP: the UDP port it listens on, and whether it is a mesh agent (which
/// understands mesh's VXLAN flag) or a plain VTEP such as a Linux vxlan device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub port: u16,
    pub agent: bool,
}

/// A service's virtual IP on one network, and the tasks behind it there.
#[derive(Debug, Clone)]
pub struct VipTable {
    pub service: String,
    pub vip: Ipv4Addr,
    pub vni: Vni,
    pub scheduler: String,
    /// The tasks, sorted by address (every host lists them alike).
    pub backends: Vec<crate::pipeline::lb::Backend>,
    /// The VIP's counters, and each task's (same order as `backends`).
    pub stats: Arc<crate::pipeline::lb::stats::VipStats>,
    pub backend_stats: Vec<Arc<crate::pipeline::lb::stats::BackendStats>>,
}

impl VipTable {
    /// A VIP over `backends` with fresh counters.
    pub fn new(
        service: &str,
        vip: Ipv4Addr,
        vni: Vni,
        scheduler: &str,
        backends: Vec<crate::pipeline::lb::Backend>,
    ) -> VipTable {
        let backend_stats = backends.iter().map(|_| Arc::default()).collect();
        VipTable {
            service: service.into(),
            vip,
            vni,
            scheduler: scheduler.into(),
            backends,
            stats: Arc::default(),
            backend_stats,
        }
    }

    /// Counts a packet of `bytes` to or from `backend` (a new flow if `new_flow`).
    pub fn count(&self, backend: Ipv4Addr, bytes: usize, new_flow: bool) {
        self.stats.traffic.count(bytes, new_flow);
        if let Some(i) = self.backends.iter().position(|b| b.ip == backend) {
            if let Some(s) = self.backend_stats.get(i) {
                s.count(bytes, new_flow);
            }
        }
    }
}

/// A port published on every host: the service's VIP table (whose tasks
/// serve it) and the tasks' port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub vip: usize,
    pub target: u16,
}

/// One immutable snapshot of everything the pipeline looks up.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub networks: FastMap<Vni, NetworkTable>,
    pub ports: FastMap<PortId, Port>,
    /// For a container on several networks: per port, the addresses of its
    /// other ports. It may send from any of them on any of its interfaces
    /// (a reply follows its default route, whatever address it is from).
    pub sibling_ips: FastMap<PortId, Box<[Ipv4Addr]>>,
    /// VTEPs we accept VXLAN from.
    pub peers: FastMap<Ipv4Addr, Peer>,
    /// Every service VIP, on every network.
    pub vips: Vec<VipTable>,
    /// Published ports by (IP protocol, port).
    pub published: FastMap<(u8, u16), Published>,
    /// Every endpoint's address -> its network: where traffic from the host
    /// stack to a container goes.
    pub routed: FastMap<Ipv4Addr, Vni>,
    /// Whether the host masquerades containers' egress (else it is dropped:
    /// it would leave with overlay addresses).
    pub egress: bool,
    /// Every other agent host's ingress (TUN) address -> its VXLAN address.
    /// The host's own traffic to a container comes from that address, so a
    /// container's packets to one (its answers) go straight to that host.
    pub host_doors: FastMap<Ipv4Addr, SocketAddrV4>,
    /// This host's own ingress address, while its TUN is up.
    pub own_door: Option<Ipv4Addr>,
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
        t.peers.insert(
            Ipv4Addr::new(192, 168, 100, 117),
            Peer {
                port: 4789,
                agent: true,
            },
        );
        cell.publish(t);
        let (g2, t2) = cell.load();
        assert!(g2 > g1);
        assert_eq!(t2.peers.len(), 1);
    }
}
