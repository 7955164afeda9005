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
//! Caught up means: some other member is live, and neither the set of live
//! members nor the objects in the view (how many, the newest version) have
//! changed for [`STABLE`]. A node that founded
//! the cluster and restarted (no `--join`) also counts as caught up after
//! [`ALONE`] without hearing from anyone: it may be the only member left. A
//! joiner never decides alone: the cluster it joined exists.
//!
//! Then it says so in its record, and waits [`STABLE`] again before it
//! decides anything: the leader until then learns from gossip that the lead
//! moves (within a few rounds) and stops deciding, and the addresses it
//! promised last show up in the view as their containers, so the two never
//! decide at the same time.

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
        // Live members, objects, newest version: caught up once it holds.
        let (mut seen, mut since) = ((Vec::new(), 0, 0), Instant::now());
        let mut warned = false;
        loop {
            tokio::time::sleep(GOSSIP_INTERVAL).await;
            let view = self.view().await;
            let live: Vec<String> = view
                .nodes
                .iter()
                .filter(|n| n.ready && n.id != self.self_id)
                .map(|n| n.id.clone())
                .collect();
            let now = (live, view.objects.len(), view.max_version());
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
            if !seen.0.is_empty() && since.elapsed() >= STABLE {
                tracing::info!(members = seen.0.len() + 1, "caught up with the cluster");
                break;
            }
            if !joined && start.elapsed() >= ALONE {
                tracing::warn!(
                    "no other member heard from in {}s; deciding alone",
                    ALONE.as_secs()
                );
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
        // Others may take it as leader from now on; it decides only once
        // the leader before it has heard and stopped.
        tokio::time::sleep(STABLE).await;
        self.synced.store(true, Ordering::Release);
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
