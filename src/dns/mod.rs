//! The embedded DNS: 127.0.0.11 inside every container.
//!
//! - [`names`]: the names a container may resolve, built from the cluster view.
//! - [`handler`]: the records for a name from those names (hickory-proto's
//!   types), and what every container's server shares.
//! - [`answer`]: what to answer to one query, or to forward it ([`forward`]).
//! - [`udp`] and [`tcp`]: our own loops per container, one per transport
//!   (UDP answers inline; TCP bounds a container's connections).
//! - [`listener`]: the UDP and TCP sockets bound inside each container's
//!   namespace, served from the agent's runtime.

pub mod answer;
pub mod forward;
pub mod handler;
pub mod listener;
pub mod names;
pub mod tcp;
pub mod udp;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Forwards one container may have in flight at once, so that a container
/// whose queries go unanswered upstream cannot take every forward slot of
/// the agent (see [`forward::Forwarder`]) from the others.
pub const MAX_FORWARDS_PER_CONTAINER: usize = 64;

/// One container's DNS server: its name (which picks the networks in
/// scope) and its share of the forwards.
#[derive(Debug)]
pub struct Container {
    pub netns: String,
    forwards: Arc<Semaphore>,
}

impl Container {
    pub fn new(netns: &str) -> Container {
        Container {
            netns: netns.to_string(),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS_PER_CONTAINER)),
        }
    }

    /// A forward slot of this container, if it has one left.
    pub fn forward_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.forwards.clone().try_acquire_owned().ok()
    }
}

/// Default TTL of our answers: short, so a client that caches sees a scale
/// change within seconds (Swarm's 600 s is the complaint this avoids).
pub const DEFAULT_TTL: u32 = 2;

/// Counters of the embedded DNS, across all containers.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub queries: AtomicU64,
    pub answered: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_failed: AtomicU64,
    pub overloaded: AtomicU64,
    pub malformed: AtomicU64,
    /// TCP connections closed at once: the container had too many open.
    pub refused: AtomicU64,
}

impl DnsStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("dns_queries", self.queries.load(Relaxed)),
            ("dns_answered", self.answered.load(Relaxed)),
            ("dns_forwarded", self.forwarded.load(Relaxed)),
            ("dns_forward_failed", self.forward_failed.load(Relaxed)),
            ("dns_overloaded", self.overloaded.load(Relaxed)),
            ("dns_malformed", self.malformed.load(Relaxed)),
            ("dns_tcp_refused", self.refused.load(Relaxed)),
        ]
    }
}
