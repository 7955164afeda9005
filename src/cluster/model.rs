//! What the cluster replicates, and the merged view every host computes.
//!
//! Each node's gossip key/value store holds:
//! - `node`: the node's own record ([`NodeRecord`]);
//! - `ep:NETID:IP`: each container attached on that node ([`ContainerEndpoint`]);
//! - `obj:net:ID` and `obj:sep:NETID:IP`: cluster-wide objects (networks and
//!   static endpoints) as [`Versioned`] values. Every node copies the newest
//!   version of every object into its own store, so objects outlive the node
//!   that wrote them; a removal is a tombstone with a higher version.
//!
//! [`View::build`] merges all of that into one value. It is a pure function of
//! the nodes' key/values and liveness, so it is tested without a network.

use super::ipam::Subnet;
use crate::wire::Mac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub const KEY_NODE: &str = "node";
pub const PREFIX_ENDPOINT: &str = "ep:";
pub const PREFIX_OBJECT: &str = "obj:";

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub hostname: String,
    pub address: Ipv4Addr,
    pub vxlan_port: u16,
    /// The port of its cluster listener (gossip and requests to the
    /// leader); 0 in a record that does not say, where the reader's own is
    /// assumed.
    #[serde(default)]
    pub gossip_port: u16,
    /// Whether it has caught up with the cluster since it started. One that
    /// has not knows too little to decide anything, so it does not lead yet.
    #[serde(default = "yes")]
    pub synced: bool,
    /// The prefix length of its address's network (the underlay: overlay
    /// subnets stay out of it); 0 in a record that does not say.
    #[serde(default)]
    pub underlay_prefix: u8,
}

fn yes() -> bool {
    true
}

/// An overlay network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub vni: u32,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
}

#[cfg(test)]
impl Network {
    /// Tests' network: overlay, 10.0.0.0/24 with gateway 10.0.0.1.
    pub(crate) fn for_tests(id: &str, name: &str, vni: u32) -> Network {
        Network {
            id: id.into(),
            name: name.into(),
            driver: "overlay".into(),
            vni,
            subnet: Subnet::new(Ipv4Addr::new(10, 0, 0, 0), 24).expect("a /24"),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
        }
    }
}

/// An endpoint behind a VTEP that runs no agent (`meshctl endpoint add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticEndpoint {
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub vtep: Ipv4Addr,
}

/// How a service's name resolves: to one virtual IP per network, balanced
/// by the agents, or to every task's IP (DNS round-robin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

/// A published port: PUBLISHED on every host goes to TARGET on the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
}

impl PortSpec {
    /// Whether publishing this would take a port of an agent listening on
    /// `gossip` (TCP and UDP) and `vxlan` (UDP).
    pub fn is_agents(&self, gossip: u16, vxlan: u16) -> bool {
        match self.protocol {
            Protocol::Tcp => self.published == gossip,
            Protocol::Udp => self.published == gossip || self.published == vxlan,
        }
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::str::FromStr for PortSpec {
    type Err = String;
    /// `PUBLISHED:TARGET[/tcp|/udp]`, as `docker service create --publish` takes it.
    fn from_str(s: &str) -> Result<PortSpec, String> {
        let bad = || {
            format!("invalid --publish '{s}': expected PUBLISHED:TARGET[/tcp|/udp], like 8000:80")
        };
        let (ports, protocol) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Tcp),
        };
        let (p, t) = ports.split_once(':').ok_or_else(bad)?;
        let published: u16 = p.parse().map_err(|_| bad())?;
        let target: u16 = t.parse().map_err(|_| bad())?;
        if published == 0 || target == 0 {
            return Err(bad());
        }
        Ok(PortSpec {
            published,
            target,
            protocol,
        })
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.published,
            self.target,
            self.protocol.name()
        )
    }
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A service: a name, the networks it is on, and how it is reached. Its
/// tasks are the containers attached with `--service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: String,
    /// Network IDs, in the order given.
    pub networks: Vec<String>,
    pub endpoint_mode: EndpointMode,
    pub scheduler: String,
    pub ports: Vec<PortSpec>,
    /// The virtual IP on each network (vip mode), by network ID.
    pub vips: BTreeMap<String, Ipv4Addr>,
}

/// A cluster-wide object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Object {
    Network(Network),
    StaticEndpoint(StaticEndpoint),
    Service(Service),
}

/// An object with its version; `object: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub version: u64,
    pub object: Option<Object>,
}

impl Object {
    pub fn key(&self) -> String {
        match self {
            Object::Network(n) => network_key(&n.id),
            Object::StaticEndpoint(s) => static_key(&s.network_id, s.ip),
            Object::Service(s) => service_key(&s.id),
        }
    }
}

pub fn network_key(id: &str) -> String {
    format!("{PREFIX_OBJECT}net:{id}")
}

pub fn static_key(network_id: &str, ip: Ipv4Addr) -> String {
    format!("{PREFIX_OBJECT}sep:{network_id}:{ip}")
}

pub fn service_key(id: &str) -> String {
    format!("{PREFIX_OBJECT}svc:{id}")
}

pub fn endpoint_key(network_id: &str, ip: Ipv4Addr) -> String {
    format!("{PREFIX_ENDPOINT}{network_id}:{ip}")
}

/// A container attached on some node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEndpoint {
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub name: String,
    pub netns: String,
    #[serde(default)]
    pub node_id: String,
    /// The service this container is a task of, by ID.
    #[serde(default)]
    pub service: Option<String>,
    /// Its weight for weighted schedulers.
    #[serde(default = "one")]
    pub weight: u32,
    /// Being detached: no new connections, established ones finish.
    #[serde(default)]
    pub draining: bool,
}

impl ContainerEndpoint {
    /// The container behind the endpoint: one per node and namespace,
    /// whatever networks it is attached to.
    pub fn container(&self) -> (&str, &str) {
        (&self.node_id, &self.netns)
    }
}

fn one() -> u32 {
    1
}

/// A node as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub record: NodeRecord,
    pub ready: bool,
}

/// One node's gossip state, as input to [`View::build`].
pub struct NodeInput<'a> {
    pub id: &'a str,
    pub live: bool,
    pub key_values: Vec<(&'a str, &'a str)>,
}

/// The merged picture of the cluster on this host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub self_id: String,
    pub nodes: Vec<NodeView>,
    /// Live networks by ID.
    pub networks: BTreeMap<String, Network>,
    pub statics: Vec<StaticEndpoint>,
    /// Live services by ID.
    pub services: BTreeMap<String, Service>,
    /// Containers on Ready nodes.
    pub containers: Vec<ContainerEndpoint>,
    /// Containers of nodes that are Down (paused, partitioned, crashed):
    /// out of every table, but their addresses are not handed out again
    /// while gossip remembers them, or two containers would share one
    /// when the node comes back.
    pub down_containers: Vec<ContainerEndpoint>,
    /// The newest version of every object key, tombstones included.
    pub objects: BTreeMap<String, Versioned>,
}

impl View {
    pub fn build(self_id: &str, nodes: &[NodeInput<'_>]) -> View {
        let mut v = View {
            self_id: self_id.to_string(),
            ..View::default()
        };
        for n in nodes {
            let mut record = None;
            for (k, val) in &n.key_values {
                if *k == KEY_NODE {
                    record = serde_json::from_str::<NodeRecord>(val).ok();
                } else if k.starts_with(PREFIX_OBJECT) {
                    let Ok(obj) = serde_json::from_str::<Versioned>(val) else {
                        continue;
                    };
                    match v.objects.get(*k) {
                        Some(cur) if cur.version >= obj.version => {}
                        _ => {
                            v.objects.insert(k.to_string(), obj);
                        }
                    }
                }
            }
            if let Some(record) = record {
                v.nodes.push(NodeView {
                    id: n.id.to_string(),
                    record,
                    ready: n.live || n.id == self_id,
                });
            }
        }
        for obj in v.objects.values() {
            match &obj.object {
                Some(Object::Network(net)) => {
                    v.networks.insert(net.id.clone(), net.clone());
                }
                Some(Object::StaticEndpoint(s)) => v.statics.push(s.clone()),
                Some(Object::Service(s)) => {
                    v.services.insert(s.id.clone(), s.clone());
                }
                None => {}
            }
        }
        for n in nodes {
            let ready = v.nodes.iter().any(|nv| nv.id == n.id && nv.ready);
            for (k, val) in &n.key_values {
                if !k.starts_with(PREFIX_ENDPOINT) {
                    continue;
                }
                if let Ok(mut ep) = serde_json::from_str::<ContainerEndpoint>(val) {
                    ep.node_id = n.id.to_string();
                    if ready {
                        v.containers.push(ep);
                    } else {
                        v.down_containers.push(ep);
                    }
                }
            }
        }
        v.nodes.sort_by(|a, b| {
            a.record
                .address
                .cmp(&b.record.address)
                .then(a.id.cmp(&b.id))
        });
        v.containers
            .sort_by(|a, b| (&a.network_id, a.ip).cmp(&(&b.network_id, b.ip)));
        v
    }

    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        self.networks.values().find(|n| n.name == name)
    }

    /// A network by name, or by ID (or a unique ID prefix), as Docker accepts.
    pub fn find_network(&self, name_or_id: &str) -> Option<&Network> {
        self.network_by_name(name_or_id).or_else(|| {
            let mut m = self
                .networks
                .values()
                .filter(|n| n.id.starts_with(name_or_id));
            match (m.next(), m.next()) {
                (Some(n), None) if !name_or_id.is_empty() => Some(n),
                _ => None,
            }
        })
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.values().find(|s| s.name == name)
    }

    /// A service by name, or by ID (or a unique ID prefix).
    pub fn find_service(&self, name_or_id: &str) -> Option<&Service> {
        self.service_by_name(name_or_id).or_else(|| {
            let mut m = self
                .services
                .values()
                .filter(|s| s.id.starts_with(name_or_id));
            match (m.next(), m.next()) {
                (Some(s), None) if !name_or_id.is_empty() => Some(s),
                _ => None,
            }
        })
    }

    /// The tasks of a service: containers attached with `--service`.
    pub fn tasks<'a>(
        &'a self,
        service_id: &'a str,
    ) -> impl Iterator<Item = &'a ContainerEndpoint> + 'a {
        self.containers
            .iter()
            .filter(move |c| c.service.as_deref() == Some(service_id))
    }

    /// The node every allocation goes through: the Ready node with the
    /// lowest ID among those that have caught up with the cluster.
    pub fn leader(&self) -> Option<&NodeView> {
        self.nodes
            .iter()
            .filter(|n| n.ready && n.record.synced)
            .min_by(|a, b| a.id.cmp(&b.id))
    }

    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The highest object version known, for the next write.
    pub fn max_version(&self) -> u64 {
        self.objects.values().map(|o| o.version).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
