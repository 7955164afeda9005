//! Counters of the balancer, per VIP and per task behind it, on this host
//! (each host balances the flows of its own clients). The control side makes
//! them and keeps them across table rebuilds; the dataplane thread is their
//! only writer, so a bump is a plain load and store.

use crate::pipeline::counters::bump;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Traffic through a VIP, or to one task behind it.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub connections: AtomicU64,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

/// A VIP's traffic, and the flows it refused, by reason.
#[derive(Debug, Default)]
pub struct VipStats {
    pub traffic: BackendStats,
    pub refused_no_task: AtomicU64,
    pub refused_table_full: AtomicU64,
    pub reset_untracked: AtomicU64,
}

impl BackendStats {
    pub fn count(&self, bytes: usize, new_flow: bool) {
        bump(&self.packets);
        self.bytes
            .store(self.bytes.load(Relaxed).wrapping_add(bytes as u64), Relaxed);
        if new_flow {
            bump(&self.connections);
        }
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("connections", self.connections.load(Relaxed)),
            ("packets", self.packets.load(Relaxed)),
            ("bytes", self.bytes.load(Relaxed)),
        ]
    }
}

impl VipStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.traffic.snapshot();
        v.extend([
            ("refused_no_task", self.refused_no_task.load(Relaxed)),
            ("refused_table_full", self.refused_table_full.load(Relaxed)),
            ("reset_untracked", self.reset_untracked.load(Relaxed)),
        ]);
        v
    }
}

/// Every VIP's and task's counters, by VIP and task address.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    vips: Mutex<HashMap<Ipv4Addr, Arc<VipStats>>>,
    backends: Mutex<HashMap<(Ipv4Addr, Ipv4Addr), Arc<BackendStats>>>,
}

impl StatsRegistry {
    /// The counters of `vip`, made on first use.
    pub fn vip(&self, vip: Ipv4Addr) -> Arc<VipStats> {
        self.vips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vip)
            .or_default()
            .clone()
    }

    /// The counters of task `backend` behind `vip`, made on first use.
    pub fn backend(&self, vip: Ipv4Addr, backend: Ipv4Addr) -> Arc<BackendStats> {
        self.backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((vip, backend))
            .or_default()
            .clone()
    }
}
