//! The cluster: membership, failure detection and replicated state by gossip
//! (chitchat), plus the few requests that need one decider (joins and
//! allocations, see [`registry`]).
//!
//! - Founding: an agent without `--join` makes a token and a cluster ID.
//! - Joining: the joiner presents the token over TCP to a member ([`rpc`]); a
//!   wrong or missing token is refused before any gossip starts.
//! - State: every node publishes itself and its containers in its own gossip
//!   store and copies the newest cluster-wide objects ([`model`]).
//! - Changes that must be unique (VNIs, subnets, IPs, names) are decided by the
//!   leader, the Ready node with the lowest ID, one at a time.

mod catchup;
pub mod ipam;
pub mod model;
pub mod registry;
mod reservations;
pub mod rpc;
pub mod token;

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use model::{ContainerEndpoint, NodeInput, NodeRecord, View};
use registry::{Mutation, Outcome};
use rpc::{Request, Response};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use token::Token;

/// How often gossip rounds run: fast enough that a change is everywhere
/// within a second on a small cluster.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(100);
/// How a node refuses a change it was asked to decide while its own view
/// names another leader (the asker then asks again).
const NOT_LEADER: &str = "this agent is not the cluster leader";

/// How this node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub advertise: Ipv4Addr,
    pub gossip_port: u16,
    pub vxlan_port: u16,
    pub joins: Vec<String>,
    pub join_token: Option<String>,
    pub state_dir: PathBuf,
    /// The prefix length of `advertise`'s network (0: unknown).
    pub underlay_prefix: u8,
}

/// Errors founding or joining a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--join needs --join-token: print it with `meshctl cluster join-token` on a member")]
    MissingToken,
    #[error("{0}")]
    BadToken(String),
    #[error("join refused by {0}: {1}")]
    Refused(SocketAddr, String),
    #[error(
        "cannot join: no member answered at {0} (is mesh-agent running there, and TCP {1} open?)"
    )]
    NoMember(String, u16),
    #[error("cannot resolve join address '{0}': {1}")]
    Resolve(String, String),
    #[error("state directory {0}: {1}")]
    State(PathBuf, std::io::Error),
    #[error("cannot listen on {0}: {1} (is another mesh-agent running?)")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot start gossip: {0}")]
    Gossip(String),
}

/// This node's membership in the cluster.
pub struct Cluster {
    pub self_id: String,
    pub config: ClusterConfig,
    token: Token,
    chitchat: ChitchatHandle,
    /// What this node says about itself (`synced` as it started).
    record: NodeRecord,
    /// Whether it has caught up with the cluster since it started ([`catchup`]).
    synced: AtomicBool,
    /// IPs promised to attaches (leader only), until they show in the view.
    reservations: tokio::sync::Mutex<reservations::Reservations>,
}

impl Cluster {
    /// Founds or joins the cluster and starts gossip and the request listener.
    pub async fn start(
        config: ClusterConfig,
        hostname: String,
    ) -> Result<Arc<Cluster>, ClusterError> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| ClusterError::State(config.state_dir.clone(), e))?;
        let id_path = config.state_dir.join("node-id");
        // A node that founds a new cluster knows all there is from the start.
        let founding = config.joins.is_empty() && !id_path.exists();
        let self_id = load_or_create(&id_path, token::new_id)?;
        let gossip_addr = SocketAddr::new(IpAddr::V4(config.advertise), config.gossip_port);
        let mut seeds = Vec::new();
        let token = if config.joins.is_empty() {
            let t = load_or_create(&config.state_dir.join("join-token"), || {
                Token::generate().to_string()
            })?;
            Token::parse(&t).map_err(ClusterError::BadToken)?
        } else {
            let given = config
                .join_token
                .as_deref()
                .ok_or(ClusterError::MissingToken)?;
            let token = Token::parse(given).map_err(ClusterError::BadToken)?;
            seeds = join(&config, &token).await?;
            write_state(&config.state_dir.join("join-token"), &token.to_string())?;
            token
        };
        let listener = tokio::net::TcpListener::bind(gossip_addr)
            .await
            .map_err(|e| ClusterError::Listen(gossip_addr, e))?;
        let record = NodeRecord {
            hostname,
            address: config.advertise,
            vxlan_port: config.vxlan_port,
            gossip_port: config.gossip_port,
            synced: founding,
            underlay_prefix: config.underlay_prefix,
        };
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(self_id.clone(), generation, gossip_addr),
            cluster_id: token.cluster_id.clone(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: gossip_addr,
            seed_nodes: seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig::new(
                8.0,
                100,
                Duration::from_secs(2),
                Duration::from_millis(500),
                Duration::from_secs(3600),
            ),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|n| n.get(model::KEY_NODE).is_some())),
            protocol_version: ProtocolVersion::V0,
        };
        let record_json =
            serde_json::to_string(&record).map_err(|e| ClusterError::Gossip(e.to_string()))?;
        let chitchat = spawn_chitchat(
            chitchat_config,
            vec![(model::KEY_NODE.to_string(), record_json)],
            &UdpTransport,
        )
        .await
        .map_err(|e| ClusterError::Gossip(format!("{e:#}")))?;
        let cluster = Arc::new(Cluster {
            self_id,
            config,
            token,
            chitchat,
            record,
            synced: AtomicBool::new(founding),
            reservations: tokio::sync::Mutex::new(Default::default()),
        });
        if !founding {
            let c = cluster.clone();
            let joined = !c.config.joins.is_empty();
            tokio::spawn(async move { c.catch_up(joined).await });
        }
        let c = cluster.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        let c = c.clone();
                        tokio::spawn(async move { rpc::serve_one(s, |req| c.answer(req)).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tracing::info!(node = %cluster.self_id, cluster = %cluster.token.cluster_id, %gossip_addr, "cluster started");
        Ok(cluster)
    }

    /// The token a joining agent must present.
    pub fn join_token(&self) -> String {
        self.token.to_string()
    }

    /// The merged view of the cluster now.
    pub async fn view(&self) -> View {
        let chitchat = self.chitchat.chitchat();
        let guard = chitchat.lock().await;
        let live: HashSet<&ChitchatId> = guard.live_nodes().collect();
        // A restarted node appears once per generation: keep the newest.
        let mut newest: HashMap<&str, &ChitchatId> = HashMap::new();
        for id in guard.node_states().keys() {
            let e = newest.entry(&id.node_id).or_insert(id);
            if id.generation_id > e.generation_id {
                *e = id;
            }
        }
        let inputs: Vec<NodeInput<'_>> = newest
            .values()
            .filter_map(|id| {
                let state = guard.node_state(id)?;
                Some(NodeInput {
                    id: &id.node_id,
                    live: live.contains(id),
                    key_values: state.key_values().collect(),
                })
            })
            .collect();
        View::build(&self.self_id, &inputs)
    }

    /// Ends the promises of addresses whose containers show in `view` (on
    /// the leader; elsewhere there are none). Called every control-loop
    /// turn: a container attached and gone again before the next decision
    /// would otherwise leave its address promised for the whole TTL, and a
    /// re-attach with `--ip` of it refused.
    pub async fn prune_reservations(&self, view: &View) {
        if let Ok(mut r) = self.reservations.try_lock() {
            r.prune(view, Instant::now());
        }
    }

    /// Copies objects newer than our own copies into our gossip store, so they
    /// survive the node that wrote them.
    pub async fn replicate(&self, view: &View) {
        let chitchat = self.chitchat.chitchat();
        let mut guard = chitchat.lock().await;
        let me = guard.self_node_state();
        for (key, obj) in &view.objects {
            let mine = me
                .get(key)
                .and_then(|v| serde_json::from_str::<model::Versioned>(v).ok());
            if mine.is_none_or(|m| m.version < obj.version) {
                if let Ok(v) = serde_json::to_string(obj) {
                    me.set(key.clone(), v);
                }
            }
        }
    }

    /// Publishes a container attached on this node.
    pub async fn publish_endpoint(&self, ep: &ContainerEndpoint) {
        let Ok(v) = serde_json::to_string(ep) else {
            return;
        };
        let chitchat = self.chitchat.chitchat();
        chitchat
            .lock()
            .await
            .self_node_state()
            .set(model::endpoint_key(&ep.network_id, ep.ip), v);
    }

    /// Withdraws a container of this node.
    pub async fn withdraw_endpoint(&self, network_id: &str, ip: Ipv4Addr) {
        let chitchat = self.chitchat.chitchat();
        chitchat
            .lock()
            .await
            .self_node_state()
            .delete(&model::endpoint_key(network_id, ip));
    }

    /// Asks the leader to make a cluster-wide change, then waits (bounded)
    /// until this node's view shows it, so the next command here sees it too.
    pub async fn mutate(&self, m: Mutation) -> Result<Outcome, String> {
        // While the lead moves (a node has just caught up), the one asked
        // may already see the new leader: ask again, as gossip settles.
        let lead_moves = Instant::now() + Duration::from_secs(3);
        let outcome = loop {
            match self.ask_leader(&m).await {
                Err(e) if e.starts_with(NOT_LEADER) && Instant::now() < lead_moves => {
                    tracing::debug!(error = %e, "asking the new leader");
                    tokio::time::sleep(GOSSIP_INTERVAL * 2).await;
                }
                r => break r?,
            }
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let v = self.view().await;
            let visible = match (&m, &outcome) {
                (_, Outcome::Network(n)) => v.networks.contains_key(&n.id),
                (_, Outcome::Service(s)) => v.services.contains_key(&s.id),
                (_, Outcome::Removed { key }) => {
                    v.objects.get(key).is_some_and(|o| o.object.is_none())
                }
                (_, Outcome::StaticEndpoint(s)) => v.statics.contains(s),
                (_, Outcome::Ip { .. } | Outcome::Released { .. }) => true,
            };
            if visible {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(outcome)
    }

    /// Has the leader in this node's view decide `m` (this node itself, or
    /// another over [`rpc`]).
    async fn ask_leader(&self, m: &Mutation) -> Result<Outcome, String> {
        let mut view = self.view().await;
        if view.leader().is_none() && !self.synced() {
            // Just started: the others are not in the view yet.
            self.wait_caught_up().await?;
            view = self.view().await;
        }
        let leader = view
            .leader()
            .ok_or("no Ready node to decide the change; is the cluster up?")?;
        if leader.id == self.self_id {
            return self.decide(m.clone()).await;
        }
        // The leader's own port (0: a record that does not say; ours).
        let port = match leader.record.gossip_port {
            0 => self.config.gossip_port,
            p => p,
        };
        let addr = SocketAddr::new(IpAddr::V4(leader.record.address), port);
        let req = Request::Mutate {
            token: self.token.to_string(),
            mutation: m.clone(),
        };
        match rpc::call(addr, &req)
            .await
            .map_err(|e| format!("the cluster leader did not answer: {e}"))?
        {
            Response::Done { outcome } => Ok(outcome),
            Response::Refused { error } => Err(error),
            Response::Joined => Err(format!("the leader at {addr} sent an unexpected answer")),
        }
    }

    /// The leader's side of [`Cluster::mutate`]: one change at a time.
    async fn decide(&self, m: Mutation) -> Result<Outcome, String> {
        // Taken as leader (by itself or another) a moment before it acts as one.
        self.wait_caught_up().await?;
        // A removal refused for attached containers may race their detach on
        // another host, still on its way here: give gossip a moment first.
        // So may an address asked for by name (`attach --ip`) that a
        // container detached elsewhere a moment ago.
        if matches!(
            m,
            Mutation::RemoveService { .. }
                | Mutation::RemoveNetwork { .. }
                | Mutation::ReserveIp { ip: Some(_), .. }
        ) {
            let deadline = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < deadline {
                let view = self.view().await;
                let busy = match &m {
                    Mutation::RemoveService { name } => view
                        .find_service(name)
                        .is_some_and(|s| view.tasks(&s.id).next().is_some()),
                    Mutation::RemoveNetwork { name } => view
                        .find_network(name)
                        .is_some_and(|n| view.containers.iter().any(|c| c.network_id == n.id)),
                    Mutation::ReserveIp {
                        network,
                        ip: Some(ip),
                        ..
                    } => view.find_network(network).is_some_and(|n| {
                        view.containers
                            .iter()
                            .any(|c| c.network_id == n.id && c.ip == *ip)
                    }),
                    _ => false,
                };
                if !busy {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut reservations = self.reservations.lock().await;
        let view = self.view().await;
        // Asked by another agent whose view names us leader while ours
        // names someone else (leadership moving): deciding here too could
        // promise one address twice.
        if let Some(l) = view.leader().filter(|l| l.id != self.self_id) {
            return Err(format!(
                "{NOT_LEADER} ({} is, in its view); try again in a second",
                l.record.address
            ));
        }
        let now = Instant::now();
        reservations.prune(&view, now);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let version = wall.max(view.max_version() + 1);
        // Two attaches of one name at once, on two hosts: each host's own
        // check saw neither; the second to get here is refused.
        if let Mutation::ReserveIp {
            network,
            name: Some(name),
            node: Some(node),
            ..
        } = &m
        {
            if let Some(net) = view.find_network(network) {
                if reservations.name_held(&net.id, name, node, now) {
                    return Err(format!(
                        "name {name} is being taken on network {} by another attach: pass another --name",
                        net.name
                    ));
                }
            }
        }
        let taken = reservations.taken();
        let plan = registry::plan(&view, &taken, &m, version, &token::new_id())?;
        let chitchat = self.chitchat.chitchat();
        let mut guard = chitchat.lock().await;
        for (key, obj) in &plan.writes {
            let v = serde_json::to_string(obj).map_err(|e| e.to_string())?;
            guard.self_node_state().set(key.clone(), v);
        }
        // After the last wait: a decide dropped at its limit holds nothing.
        match (&plan.outcome, &m) {
            (
                Outcome::Ip { network_id, ip },
                Mutation::ReserveIp {
                    owner, name, node, ..
                },
            ) => {
                let named = name.as_deref().zip(node.as_deref());
                reservations.hold(network_id, *ip, owner, named, now);
            }
            (Outcome::Released { network_id, ip }, Mutation::ReleaseIp { owner, .. })
                if !reservations.release(network_id, *ip, owner) =>
            {
                tracing::debug!(%ip, "a release of an address no longer promised to its asker: kept");
            }
            _ => {}
        }
        tracing::info!(?m, "cluster change decided");
        Ok(plan.outcome)
    }

    /// Answers a request from another agent.
    async fn answer(&self, req: Request) -> Response {
        let check = |t: &str| Token::parse(t).ok().is_some_and(|t| t.matches(&self.token));
        match req {
            Request::Join { token } if check(&token) => Response::Joined,
            Request::Mutate { token, mutation } if check(&token) => {
                // Past the limit, decide is dropped before it wrote anything
                // (its writes follow its last wait), so "nothing changed" holds.
                match tokio::time::timeout(rpc::DECIDE_LIMIT, self.decide(mutation)).await {
                    Ok(Ok(outcome)) => Response::Done { outcome },
                    Ok(Err(error)) => Response::Refused { error },
                    Err(_) => Response::Refused {
                        error: format!(
                            "the cluster leader could not decide within {:?} (it is still \
                             catching up with the cluster); nothing was changed, try again",
                            rpc::DECIDE_LIMIT
                        ),
                    },
                }
            }
            Request::Join { .. } | Request::Mutate { .. } => {
                tracing::warn!("refused a request with an invalid join token");
                Response::Refused {
                    error: "invalid join token".into(),
                }
            }
        }
    }
}

/// Presents the token to the given members; returns their gossip addresses.
async fn join(config: &ClusterConfig, token: &Token) -> Result<Vec<SocketAddr>, ClusterError> {
    let mut addrs = Vec::new();
    for j in &config.joins {
        let with_port = if j.contains(':') {
            j.clone()
        } else {
            format!("{j}:{}", config.gossip_port)
        };
        let resolved = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| ClusterError::Resolve(j.clone(), e.to_string()))?;
        addrs.extend(resolved.filter(SocketAddr::is_ipv4));
    }
    // Members may still be starting: retry for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for addr in &addrs {
            match rpc::call(
                *addr,
                &Request::Join {
                    token: token.to_string(),
                },
            )
            .await
            {
                Ok(Response::Joined) => return Ok(addrs),
                Ok(Response::Refused { error }) => return Err(ClusterError::Refused(*addr, error)),
                Ok(Response::Done { .. }) => {
                    return Err(ClusterError::Refused(*addr, "unexpected answer".into()))
                }
                Err(e) => tracing::debug!(error = %e, "join attempt failed"),
            }
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::NoMember(
                config.joins.join(", "),
                config.gossip_port,
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn load_or_create(
    path: &std::path::Path,
    make: impl FnOnce() -> String,
) -> Result<String, ClusterError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let v = make();
            write_state(path, &v)?;
            Ok(v)
        }
    }
}

fn write_state(path: &std::path::Path, value: &str) -> Result<(), ClusterError> {
    std::fs::write(path, format!("{value}\n"))
        .map_err(|e| ClusterError::State(path.to_path_buf(), e))
}
