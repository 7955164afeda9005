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
mod tests {
    use super::*;

    fn rec(last: u8) -> String {
        serde_json::to_string(&NodeRecord {
            hostname: "h".into(),
            address: Ipv4Addr::new(192, 168, 100, last),
            vxlan_port: 4789,
            gossip_port: 7946,
            synced: true,
            underlay_prefix: 24,
        })
        .unwrap()
    }

    fn net(id: &str, name: &str, vni: u32) -> Network {
        Network::for_tests(id, name, vni)
    }

    fn versioned(version: u64, object: Option<Object>) -> String {
        serde_json::to_string(&Versioned { version, object }).unwrap()
    }

    #[test]
    fn newest_version_wins_and_tombstones_hide() {
        let a_node = rec(116);
        let b_node = rec(117);
        let old = versioned(1, Some(Object::Network(net("n1", "demo", 4096))));
        let gone = versioned(2, None);
        let other = versioned(3, Some(Object::Network(net("n2", "web", 4097))));
        let key1 = network_key("n1");
        let key2 = network_key("n2");
        let nodes = [
            NodeInput {
                id: "a",
                live: true,
                key_values: vec![("node", &a_node), (&key1, &old), (&key2, &other)],
            },
            NodeInput {
                id: "b",
                live: true,
                key_values: vec![("node", &b_node), (&key1, &gone)],
            },
        ];
        let v = View::build("a", &nodes);
        assert_eq!(v.networks.len(), 1);
        assert_eq!(v.network_by_name("web").unwrap().vni, 4097);
        assert_eq!(v.objects[&key1].version, 2);
        assert_eq!(v.max_version(), 3);
    }

    #[test]
    fn containers_of_down_nodes_leave_the_view() {
        let a_node = rec(116);
        let b_node = rec(117);
        let ep = serde_json::to_string(&ContainerEndpoint {
            network_id: "n1".into(),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            mac: Mac::for_ip(Ipv4Addr::new(10, 0, 0, 2)),
            name: "c1".into(),
            netns: "c1".into(),
            node_id: String::new(),
            service: None,
            weight: 1,
            draining: false,
        })
        .unwrap();
        let k = endpoint_key("n1", Ipv4Addr::new(10, 0, 0, 2));
        let up = [
            NodeInput {
                id: "a",
                live: true,
                key_values: vec![("node", &a_node)],
            },
            NodeInput {
                id: "b",
                live: true,
                key_values: vec![("node", &b_node), (&k, &ep)],
            },
        ];
        let v = View::build("a", &up);
        assert_eq!(v.containers.len(), 1);
        assert_eq!(v.containers[0].node_id, "b");
        let down = [
            NodeInput {
                id: "a",
                live: true,
                key_values: vec![("node", &a_node)],
            },
            NodeInput {
                id: "b",
                live: false,
                key_values: vec![("node", &b_node), (&k, &ep)],
            },
        ];
        let v = View::build("a", &down);
        assert!(v.containers.is_empty());
        assert!(!v.node("b").unwrap().ready);
        assert_eq!(v.leader().unwrap().id, "a");
    }

    #[test]
    fn a_node_that_has_not_caught_up_does_not_lead() {
        let rec_of = |last: u8, synced: bool| {
            serde_json::to_string(&NodeRecord {
                hostname: "h".into(),
                address: Ipv4Addr::new(192, 168, 100, last),
                vxlan_port: 4789,
                gossip_port: 7950,
                synced,
                underlay_prefix: 24,
            })
            .unwrap()
        };
        let (a, b_new, b_synced) = (rec_of(116, true), rec_of(117, false), rec_of(117, true));
        let nodes = |b: &str| {
            let v = [
                NodeInput {
                    id: "b",
                    live: true,
                    key_values: vec![("node", &a)],
                },
                NodeInput {
                    id: "a",
                    live: true,
                    key_values: vec![("node", b)],
                },
            ];
            // Its own view says the same: it does not lead itself either.
            (View::build("b", &v), View::build("a", &v))
        };
        let (theirs, own) = nodes(&b_new);
        assert_eq!(theirs.leader().unwrap().id, "b");
        assert_eq!(own.leader().unwrap().id, "b");
        let (theirs, own) = nodes(&b_synced);
        assert_eq!(theirs.leader().unwrap().id, "a");
        assert_eq!(own.leader().unwrap().id, "a");
        assert_eq!(theirs.node("a").unwrap().record.gossip_port, 7950);
        // Alone and not caught up: no leader at all.
        let alone = [NodeInput {
            id: "a",
            live: true,
            key_values: vec![("node", &b_new)],
        }];
        assert!(View::build("a", &alone).leader().is_none());
        // A record from an agent that says neither: synced, port unknown (0).
        let old: NodeRecord =
            serde_json::from_str(r#"{"hostname":"h","address":"192.168.100.5","vxlan_port":4789}"#)
                .unwrap();
        assert!(old.synced);
        assert_eq!(old.gossip_port, 0);
    }

    #[test]
    fn published_ports_parse_like_docker() {
        let p: PortSpec = "8000:80".parse().unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (8000, 80, Protocol::Tcp)
        );
        assert_eq!(
            "53:5353/udp".parse::<PortSpec>().unwrap().to_string(),
            "53:5353/udp"
        );
        for bad in ["8000", "8000:80/sctp", "0:80", "x:80", "70000:80", "8000:"] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn find_network_by_name_or_unique_id_prefix() {
        let mut v = View::default();
        v.networks
            .insert("abc123".into(), net("abc123", "demo", 4096));
        v.networks
            .insert("abd456".into(), net("abd456", "web", 4097));
        assert_eq!(v.find_network("demo").unwrap().id, "abc123");
        assert_eq!(v.find_network("abd").unwrap().name, "web");
        assert!(v.find_network("ab").is_none());
        assert!(v.find_network("").is_none());
    }
}
