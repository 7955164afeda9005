//! The control side of one host: it keeps the dataplane's tables in step with
//! the cluster, and attaches and detaches containers.
//!
//! A loop runs every [`TICK`]: it reads the cluster view, replicates objects,
//! and when anything changed builds new [`Tables`](crate::tables::Tables) and publishes them.
//! Attach and detach change local state, publish or withdraw the endpoint in
//! gossip and rebuild the tables at once, without waiting for the tick.
//!
//! - `attach`: `container attach` and `detach`.
//! - `tables`: the dataplane tables built from the view.
//! - `host`: the ingress TUN and the host's rules for published ports.

mod attach;
mod host;
mod tables;

pub use tables::build_tables;

use crate::api::types::ContainerOut;
use crate::cluster::model::{ContainerEndpoint, View};
use crate::cluster::Cluster;
use crate::dns::{self, names::NameTable};
use crate::io::Dataplane;
use crate::netns::ingress::HostRouting;
use crate::tables::PortId;
use crate::wire::Mac;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a detached task may take to finish its connections, by default
/// (as Docker's stop grace period).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// How long a command waits for an object made elsewhere to reach this host.
pub const SETTLE: Duration = Duration::from_millis(1500);
/// How often the control loop looks at the cluster view.
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks between two looks at the host's addresses (a second).
const ADDRESS_TICKS: u64 = 10;
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
    /// What this host publishes for it in gossip.
    pub endpoint: ContainerEndpoint,
    /// Which namespace it was at attach ([`crate::netns::identity`]): when
    /// the path holds another, or none, the container is gone.
    #[serde(default)]
    pub ns_id: Option<(u64, u64)>,
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
    /// How long a detached task may take to finish its connections.
    pub drain_timeout: Duration,
    /// The balancer's counters per VIP and task, on this host.
    pub lb_stats: crate::pipeline::lb::stats::StatsRegistry,
    /// The DNS listener of each local container namespace.
    listeners: Mutex<HashMap<String, dns::listener::Listener>>,
    /// Namespaces an attach or detach is working on ([`Agent::claim`]).
    claims: std::sync::Mutex<std::collections::HashSet<String>>,
    claims_released: tokio::sync::Notify,
    /// The host's ingress rules, once set up ([`Agent::start_ingress`]).
    host_routing: std::sync::Mutex<Option<HostRouting>>,
}

impl Agent {
    pub fn new(
        cluster: Arc<Cluster>,
        dataplane: Dataplane,
        underlay_mtu: u32,
        dns_ttl: u32,
        upstreams: Vec<std::net::SocketAddr>,
        drain_timeout: Duration,
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
            lb_stats: Default::default(),
            drain_timeout,
            listeners: Mutex::new(HashMap::new()),
            claims: Default::default(),
            claims_released: Default::default(),
            host_routing: std::sync::Mutex::new(None),
        })
    }

    /// Publishes the dataplane tables and the DNS names for `view`.
    fn publish(&self, view: &View, local: &BTreeMap<PortId, Attachment>) {
        let mut tables = build_tables(
            view,
            local,
            &self.cluster.self_id,
            self.cluster.config.vxlan_port,
            &self.lb_stats,
        );
        let routing = self.host_routing.lock().unwrap_or_else(|p| p.into_inner());
        tables.egress = routing.as_ref().is_some_and(HostRouting::egress);
        tables.own_door = routing
            .is_some()
            .then(|| host::ingress_address(self.cluster.config.advertise));
        drop(routing);
        self.dataplane.tables.publish(tables);
        self.apply_host_plan(view);
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

    /// The view, once `ready` holds for it or after [`SETTLE`] at most.
    pub async fn view_with(&self, ready: impl Fn(&View) -> bool) -> View {
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            let view = self.cluster.view().await;
            if ready(&view) || std::time::Instant::now() >= deadline {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the control loop forever.
    pub async fn run(self: Arc<Self>) {
        let mut last: Option<View> = None;
        let mut addresses = None;
        for turn in 0u64.. {
            let view = self.cluster.view().await;
            self.cluster.replicate(&view).await;
            self.cluster.prune_reservations(&view).await;
            if last.as_ref() != Some(&view) {
                let local = self.local.lock().await;
                // Looked at again under the lock: an attach may have
                // published a newer view meanwhile, which must not be undone.
                let view = self.cluster.view().await;
                self.publish(&view, &local);
                drop(local);
                last = Some(view);
            } else if turn % ADDRESS_TICKS == 0 {
                // The host's addresses change without the cluster knowing:
                // published ports follow them.
                let now = crate::netns::ingress::host_addresses(crate::io::tun::NAME);
                if now.is_some() && now != addresses {
                    // As above: the newest view, under the lock.
                    let local = self.local.lock().await;
                    let view = self.cluster.view().await;
                    self.apply_host_plan_with(&view, now.clone());
                    drop(local);
                    addresses = now;
                }
            }
            if turn % ADDRESS_TICKS == 3 {
                self.reap_gone();
            }
            if turn % ADDRESS_TICKS == ADDRESS_TICKS / 2 {
                // Others may have removed the host's rules (a network
                // manager restarting): put them back.
                self.repair_host_rules();
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Rebuilds and publishes the tables now, from a fresh view.
    async fn refresh(&self, local: &BTreeMap<PortId, Attachment>) {
        let view = self.cluster.view().await;
        self.publish(&view, local);
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

    /// Stops every container's DNS listener and removes the resolv.conf it
    /// wrote (the agent is stopping: nothing would answer them).
    pub async fn stop_dns(&self) {
        let listeners: Vec<_> = self.listeners.lock().await.drain().collect();
        for (_, l) in listeners {
            l.stop().await;
        }
    }

    /// Removes what a killed agent left in its containers' namespaces: the
    /// DNS settings that point at a listener gone with it (its attachments
    /// went with its TAPs). Then the saved list is emptied.
    pub fn remove_stale_attachments(&self) {
        let path = self.state_dir.join("attachments.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let left: Vec<Attachment> = serde_json::from_slice(&bytes).unwrap_or_default();
        for a in &left {
            tracing::warn!(
                netns = %a.netns,
                ip = %a.ip,
                "this container's interface went with the agent that stopped: attach it again"
            );
            if let Some(name) = crate::netns::name_of(&a.netns) {
                dns::listener::remove_stale_resolv_conf(name);
            }
        }
        let _ = std::fs::write(&path, b"[]");
    }

    /// Writes the local attachments to the state directory (for a later
    /// restart to adopt; see `io::tap`).
    fn save(&self, local: &BTreeMap<PortId, Attachment>) {
        let list: Vec<&Attachment> = local.values().collect();
        let path = self.state_dir.join("attachments.json");
        match serde_json::to_vec_pretty(&list) {
            Ok(b) => {
                // Written aside and renamed: a crash mid-write leaves the
                // last whole list, not a truncated one read back as empty.
                let tmp = path.with_extension("json.new");
                let saved = std::fs::write(&tmp, b).and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = saved {
                    tracing::warn!(path = %path.display(), error = %e, "cannot save attachments");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode attachments"),
        }
    }
}
