//! The control side of one host: it keeps the dataplane's tables in step with
//! the cluster, and attaches and detaches containers.
//!
//! A loop runs every [`TICK`]: it reads the cluster view, replicates objects,
//! and when anything changed builds new [`Tables`] and publishes them.
//! Attach and detach change local state, publish or withdraw the endpoint in
//! gossip and rebuild the tables at once, without waiting for the tick.

use crate::api::types::{AttachRequest, ContainerOut, DetachRequest};
use crate::cluster::model::{ContainerEndpoint, View};
use crate::cluster::registry::{self, Mutation, Outcome};
use crate::cluster::Cluster;
use crate::dns::{self, names::NameTable};
use crate::io::tap;
use crate::io::Dataplane;
use crate::netns;
use crate::tables::{Endpoint, Location, NetworkTable, Peer, Port, PortId, Tables};
use crate::wire::{vxlan::Vni, Mac};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How often the control loop looks at the cluster view.
pub const TICK: Duration = Duration::from_millis(100);
/// What VXLAN costs on the underlay: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;

/// A container attached on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    pub port: PortId,
    pub netns: String,
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub name: String,
    pub ifname: String,
}

/// One host's agent.
pub struct Agent {
    pub cluster: Arc<Cluster>,
    pub dataplane: Dataplane,
    /// The MTU given to containers: the underlay's minus VXLAN's overhead.
    pub container_mtu: u32,
    state_dir: PathBuf,
    local: Mutex<BTreeMap<PortId, Attachment>>,
    /// What every container's DNS handler shares: names, upstreams, counters.
    pub dns: Arc<dns::handler::Shared>,
    /// The DNS listener of each local container namespace.
    listeners: Mutex<HashMap<String, dns::listener::Listener>>,
}

impl Agent {
    pub fn new(
        cluster: Arc<Cluster>,
        dataplane: Dataplane,
        underlay_mtu: u32,
        dns_ttl: u32,
        upstreams: Vec<std::net::SocketAddr>,
    ) -> Arc<Agent> {
        let state_dir = cluster.config.state_dir.clone();
        let dns = Arc::new(dns::handler::Shared {
            names: std::sync::RwLock::new(Arc::new(NameTable::default())),
            forwarder: dns::forward::Forwarder::new(upstreams),
            ttl: dns_ttl,
            stats: dns::DnsStats::default(),
        });
        Arc::new(Agent {
            cluster,
            dataplane,
            container_mtu: underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            state_dir,
            local: Mutex::new(BTreeMap::new()),
            dns,
            listeners: Mutex::new(HashMap::new()),
        })
    }

    /// Publishes the dataplane tables and the DNS names for `view`.
    fn publish(&self, view: &View, local: &BTreeMap<PortId, Attachment>) {
        let tables = build_tables(
            view,
            local,
            &self.cluster.self_id,
            self.cluster.config.vxlan_port,
        );
        self.dataplane.tables.publish(tables);
        let mut scopes: HashMap<String, Vec<String>> = HashMap::new();
        for a in local.values() {
            scopes
                .entry(a.netns.clone())
                .or_default()
                .push(a.network_id.clone());
        }
        let names = Arc::new(NameTable::build(view, scopes));
        *self.dns.names.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// The cluster as this host sees it now. Built fresh on each call (it is
    /// cheap), so a command sees the effect of the one before it.
    pub async fn view(&self) -> View {
        self.cluster.view().await
    }

    /// Runs the control loop forever.
    pub async fn run(self: Arc<Self>) {
        let mut last: Option<View> = None;
        loop {
            let view = self.cluster.view().await;
            self.cluster.replicate(&view).await;
            if last.as_ref() != Some(&view) {
                let local = self.local.lock().await;
                self.publish(&view, &local);
                drop(local);
                last = Some(view);
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Rebuilds and publishes the tables now, from a fresh view.
    async fn refresh(&self, local: &BTreeMap<PortId, Attachment>) {
        let view = self.cluster.view().await;
        self.publish(&view, local);
    }

    /// `meshctl container attach`: gives the netns its interface on the network.
    pub async fn attach(&self, req: AttachRequest) -> Result<crate::api::types::AttachOut, String> {
        let ifname = req.ifname.clone().unwrap_or_else(|| "eth0".into());
        let name = req.name.clone().unwrap_or_else(|| default_name(&req.netns));
        registry::check_name(&name)?;
        if let Some(svc) = &req.service {
            return Err(format!(
                "--service {svc}: services are not supported by this agent yet"
            ));
        }
        let path = netns::resolve(&req.netns);
        if !path.exists() {
            return Err(netns::NetnsError::NotFound(req.netns.clone()).to_string());
        }
        let view = self.cluster.view().await;
        let net = view
            .find_network(&req.network)
            .ok_or_else(|| format!("network {} not found", req.network))?
            .clone();
        let service = match &req.service {
            Some(s) => {
                let svc = view
                    .find_service(s)
                    .ok_or_else(|| format!("service {s} not found"))?;
                if !svc.networks.contains(&net.id) {
                    return Err(format!(
                        "service {} is not on network {}: pick one of its networks",
                        svc.name, net.name
                    ));
                }
                Some(svc.clone())
            }
            None => None,
        };
        if req.weight == Some(0) {
            return Err("--weight must be at least 1".into());
        }
        let mut local = self.local.lock().await;
        if local
            .values()
            .any(|a| a.netns == req.netns && a.network_id == net.id)
        {
            return Err(format!(
                "netns {} is already attached to network {}",
                req.netns, net.name
            ));
        }
        if local
            .values()
            .any(|a| a.netns == req.netns && a.ifname == ifname)
        {
            return Err(format!(
                "netns {} already has an interface {ifname} from mesh: pass --ifname",
                req.netns
            ));
        }
        let ip = match self
            .cluster
            .mutate(Mutation::ReserveIp {
                network: net.id.clone(),
                ip: req.ip,
            })
            .await?
        {
            Outcome::Ip { ip, .. } => ip,
            other => return Err(format!("the leader answered {other:?} to an IP request")),
        };
        let mac = Mac::for_ip(ip);
        let (mtu, prefix, gateway, dev) = (
            self.container_mtu,
            net.subnet.prefix_len(),
            net.gateway,
            ifname.clone(),
        );
        let mut listeners = self.listeners.lock().await;
        let need_dns = !listeners.contains_key(&req.netns);
        let (fd, dns_sockets) = netns::run_in(&path, move || {
            if netns::link_exists(&dev) {
                return Err(netns::NetnsError::Config(format!(
                    "the namespace already has an interface {dev}: pass --ifname"
                )));
            }
            let fd = tap::create(&dev)?;
            netns::link_set_mac(&dev, mac)?;
            netns::link_set_mtu(&dev, mtu)?;
            netns::addr_add(&dev, ip, prefix)?;
            netns::link_set_up(&dev)?;
            netns::link_set_up("lo")?;
            // A namespace on several networks keeps the first one's default route.
            if let Err(e) = netns::route_add_default(&dev, gateway) {
                if !e.to_string().contains("File exists") {
                    return Err(e);
                }
            }
            let dns_sockets = if need_dns {
                let s = dns::listener::bind_here().map_err(|e| {
                    netns::NetnsError::Config(format!(
                        "cannot serve DNS on {}: {e}",
                        dns::listener::DNS_ADDR
                    ))
                })?;
                Some(s)
            } else {
                None
            };
            Ok((fd, dns_sockets))
        })
        .map_err(|e| e.to_string())?;
        let port = (1..)
            .find(|p| !local.contains_key(p))
            .unwrap_or(PortId::MAX);
        self.dataplane
            .add_port(port, fd)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(sockets) = dns_sockets {
            match dns::listener::Listener::start(&req.netns, sockets, self.dns.clone()) {
                Ok(l) => {
                    listeners.insert(req.netns.clone(), l);
                }
                Err(e) => {
                    let _ = self.dataplane.remove_port(port).await;
                    return Err(format!("cannot serve DNS in {}: {e}", req.netns));
                }
            }
        }
        drop(listeners);
        let att = Attachment {
            port,
            netns: req.netns.clone(),
            network_id: net.id.clone(),
            ip,
            mac,
            name: name.clone(),
            ifname: ifname.clone(),
        };
        let ep = ContainerEndpoint {
            network_id: net.id.clone(),
            ip,
            mac,
            name,
            netns: req.netns.clone(),
            node_id: self.cluster.self_id.clone(),
            service: service.as_ref().map(|s| s.id.clone()),
            weight: req.weight.unwrap_or(1),
        };
        local.insert(port, att);
        self.cluster.publish_endpoint(&ep).await;
        self.refresh(&local).await;
        self.save(&local);
        tracing::info!(netns = %req.netns, network = %net.name, %ip, port, "container attached");
        Ok(crate::api::types::AttachOut {
            ip,
            mac: mac.to_string(),
            ifname,
        })
    }

    /// `meshctl container detach`: removes the interface and the endpoint.
    pub async fn detach(&self, req: DetachRequest) -> Result<(), String> {
        let view = self.view().await;
        let mut local = self.local.lock().await;
        let found = local
            .values()
            .find(|a| {
                a.netns == req.netns
                    && view
                        .find_network(&req.network)
                        .is_some_and(|n| n.id == a.network_id)
            })
            .map(|a| a.port);
        let Some(port) = found else {
            return Err(format!(
                "netns {} is not attached to network {} on this host",
                req.netns, req.network
            ));
        };
        let Some(att) = local.remove(&port) else {
            return Err("attachment vanished".into());
        };
        self.cluster
            .withdraw_endpoint(&att.network_id, att.ip)
            .await;
        self.refresh(&local).await;
        self.dataplane
            .remove_port(port)
            .await
            .map_err(|e| e.to_string())?;
        if !local.values().any(|a| a.netns == att.netns) {
            if let Some(l) = self.listeners.lock().await.remove(&att.netns) {
                l.stop();
            }
        }
        self.save(&local);
        tracing::info!(netns = %att.netns, ip = %att.ip, "container detached");
        Ok(())
    }

    /// Every container in the cluster, for `container ls`.
    pub fn containers(&self, view: &View) -> Vec<ContainerOut> {
        view.containers
            .iter()
            .map(|c| ContainerOut {
                name: c.name.clone(),
                netns: c.netns.clone(),
                network: view
                    .networks
                    .get(&c.network_id)
                    .map_or_else(|| c.network_id.clone(), |n| n.name.clone()),
                ip: c.ip,
                mac: c.mac.to_string(),
                node: c.node_id.clone(),
                address: view.node(&c.node_id).map(|n| n.record.address),
            })
            .collect()
    }

    /// Writes the local attachments to the state directory (for a later
    /// restart to adopt; see `io::tap`).
    fn save(&self, local: &BTreeMap<PortId, Attachment>) {
        let list: Vec<&Attachment> = local.values().collect();
        let path = self.state_dir.join("attachments.json");
        match serde_json::to_vec_pretty(&list) {
            Ok(b) => {
                if let Err(e) = std::fs::write(&path, b) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot save attachments");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode attachments"),
        }
    }
}

fn default_name(netns: &str) -> String {
    let base = netns.rsplit('/').next().unwrap_or(netns);
    if registry::check_name(base).is_ok() {
        base.to_string()
    } else {
        "container".into()
    }
}

/// The dataplane tables for `view`, with this host's ports.
pub fn build_tables(
    view: &View,
    local: &BTreeMap<PortId, Attachment>,
    self_id: &str,
    vxlan_port: u16,
) -> Tables {
    let mut t = Tables::default();
    let mut vni_of = BTreeMap::new();
    for net in view.networks.values() {
        let Some(vni) = Vni::new(net.vni) else {
            continue;
        };
        vni_of.insert(net.id.as_str(), vni);
        t.networks.insert(vni, NetworkTable::new(vni, net.gateway));
    }
    for node in view.nodes.iter().filter(|n| n.ready && n.id != self_id) {
        t.peers.insert(
            node.record.address,
            Peer {
                port: node.record.vxlan_port,
                agent: true,
            },
        );
    }
    for c in &view.containers {
        let Some(vni) = vni_of.get(c.network_id.as_str()) else {
            continue;
        };
        let location = if c.node_id == self_id {
            match local
                .values()
                .find(|a| a.network_id == c.network_id && a.ip == c.ip)
            {
                Some(a) => Location::Local(a.port),
                None => continue,
            }
        } else {
            match view.node(&c.node_id) {
                Some(n) => {
                    Location::Remote(SocketAddrV4::new(n.record.address, n.record.vxlan_port))
                }
                None => continue,
            }
        };
        if let Some(net) = t.networks.get_mut(vni) {
            net.insert(Endpoint {
                ip: c.ip,
                mac: c.mac,
                location,
            });
        }
    }
    for s in &view.statics {
        let Some(vni) = vni_of.get(s.network_id.as_str()) else {
            continue;
        };
        t.peers.entry(s.vtep).or_insert(Peer {
            port: vxlan_port,
            agent: false,
        });
        if let Some(net) = t.networks.get_mut(vni) {
            net.insert(Endpoint {
                ip: s.ip,
                mac: s.mac,
                location: Location::Remote(SocketAddrV4::new(s.vtep, vxlan_port)),
            });
        }
    }
    // Local ports go in last: our own attachments are the truth for this host,
    // even before gossip shows them back to us.
    for a in local.values() {
        let Some(vni) = vni_of.get(a.network_id.as_str()) else {
            continue;
        };
        t.ports.insert(
            a.port,
            Port {
                vni: *vni,
                ip: a.ip,
                mac: a.mac,
            },
        );
        if let Some(net) = t.networks.get_mut(vni) {
            net.insert(Endpoint {
                ip: a.ip,
                mac: a.mac,
                location: Location::Local(a.port),
            });
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::{Network, NodeRecord, NodeView, StaticEndpoint};

    #[test]
    fn tables_place_endpoints_locally_remotely_and_behind_static_vteps() {
        let mut view = View {
            self_id: "a".into(),
            ..View::default()
        };
        for (id, last, ready) in [("a", 116, true), ("b", 117, true), ("c", 118, false)] {
            view.nodes.push(NodeView {
                id: id.into(),
                record: NodeRecord {
                    hostname: "h".into(),
                    address: Ipv4Addr::new(192, 168, 100, last),
                    vxlan_port: 4789,
                },
                ready,
            });
        }
        view.networks.insert(
            "n".into(),
            Network {
                id: "n".into(),
                name: "demo".into(),
                driver: "overlay".into(),
                vni: 4096,
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
            },
        );
        let ep = |last: u8, node: &str| ContainerEndpoint {
            network_id: "n".into(),
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: Mac::for_ip(Ipv4Addr::new(10, 0, 0, last)),
            name: "c".into(),
            netns: "c".into(),
            node_id: node.into(),
            service: None,
            weight: 1,
        };
        view.containers = vec![ep(2, "a"), ep(3, "b")];
        view.statics.push(StaticEndpoint {
            network_id: "n".into(),
            ip: Ipv4Addr::new(10, 0, 0, 200),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            vtep: Ipv4Addr::new(192, 168, 100, 120),
        });
        let mut local = BTreeMap::new();
        local.insert(
            1,
            Attachment {
                port: 1,
                netns: "c1".into(),
                network_id: "n".into(),
                ip: Ipv4Addr::new(10, 0, 0, 2),
                mac: Mac::for_ip(Ipv4Addr::new(10, 0, 0, 2)),
                name: "c1".into(),
                ifname: "eth0".into(),
            },
        );
        let t = build_tables(&view, &local, "a", 4789);
        let net = &t.networks[&Vni::new(4096).unwrap()];
        assert_eq!(
            net.by_ip[&Ipv4Addr::new(10, 0, 0, 2)].location,
            Location::Local(1)
        );
        assert_eq!(
            net.by_ip[&Ipv4Addr::new(10, 0, 0, 3)].location,
            Location::Remote("192.168.100.117:4789".parse().unwrap())
        );
        assert_eq!(
            net.by_ip[&Ipv4Addr::new(10, 0, 0, 200)].location,
            Location::Remote("192.168.100.120:4789".parse().unwrap())
        );
        assert!(t.peers.contains_key(&Ipv4Addr::new(192, 168, 100, 117)));
        assert!(t.peers.contains_key(&Ipv4Addr::new(192, 168, 100, 120)));
        assert!(
            !t.peers.contains_key(&Ipv4Addr::new(192, 168, 100, 118)),
            "a Down node is no peer"
        );
        assert_eq!(t.ports[&1].vni.get(), 4096);
    }
}
