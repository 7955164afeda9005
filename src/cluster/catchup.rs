//! Catching up with the cluster after a start.
//!
//! A node that has just joined, or restarted, sees only itself until gossip
//! brings it the others (chitchat counts a peer live after its second
//! heartbeat). In that moment it would be the Ready node with the lowest ID
//! in its own view, and so the leader: a `network create` run as soon as its
//! API answers would be decided against an empty cluster (the first VNI and
//! subnet again, duplicate names, an address already in use). So a node
//! publishes `synced: false` in its record until it has caught up, and no
//! one (itself included) takes an unsynced node as leader; a change asked
//! of it meanwhile waits for it, bounded.
//!
//! Caught up means: some other member is live, and the set of live members
//! has not changed for [`STABLE`] (every member's state has arrived by then:
//! a member is live only after several gossip rounds). A node that founded
//! the cluster and restarted (no `--join`) also counts as caught up after
//! [`ALONE`] without hearing from anyone: it may be the only member left. A
//! joiner never decides alone: the cluster it joined exists.

use super::{model, Cluster, GOSSIP_INTERVAL};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the live members must stay the same.
const STABLE: Duration = Duration::from_secs(1);
/// How long a restarted founder waits for anyone before it decides alone.
const ALONE: Duration = Duration::from_secs(10);
/// How long a change waits for this node to catch up before it is refused.
const WAIT: Duration = Duration::from_secs(12);

impl Cluster {
    /// Whether this node has caught up with the cluster since it started.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Watches gossip until this node has caught up, then says so in its
    /// record. `joined`: it started with `--join`.
    pub(super) async fn catch_up(&self, joined: bool) {
        let start = Instant::now();
        let (mut live, mut since) = (Vec::new(), Instant::now());
        let mut warned = false;
        loop {
            tokio::time::sleep(GOSSIP_INTERVAL).await;
            let view = self.view().await;
            let now: Vec<String> = view
                .nodes
                .iter()
                .filter(|n| n.ready && n.id != self.self_id)
                .map(|n| n.id.clone())
                .collect();
            if now != live {
                (live, since) = (now, Instant::now());
            }
            if !live.is_empty() && since.elapsed() >= STABLE {
                tracing::info!(members = live.len() + 1, "caught up with the cluster");
                break;
            }
            if !joined && start.elapsed() >= ALONE {
                tracing::info!("no other member heard from; deciding alone");
                break;
            }
            if !warned && start.elapsed() >= ALONE {
                warned = true;
                tracing::warn!(
                    "no gossip from any member yet: cluster changes asked here wait for it; \
                     is UDP {} open between the hosts?",
                    self.config.gossip_port
                );
            }
        }
        self.synced.store(true, Ordering::Release);
        let mut record = self.record.clone();
        record.synced = true;
        if let Ok(v) = serde_json::to_string(&record) {
            let chitchat = self.chitchat.chitchat();
            chitchat
                .lock()
                .await
                .self_node_state()
                .set(model::KEY_NODE.to_string(), v);
        }
    }

    /// Waits (bounded) until this node has caught up with the cluster.
    pub(super) async fn wait_caught_up(&self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        while !self.synced() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "this agent has not caught up with the cluster yet (no gossip from any \
                     member); check that UDP {} is open between the hosts, then try again",
                    self.config.gossip_port
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
