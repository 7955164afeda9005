//! The host side of ingress: the TUN in the host's namespace, the rules
//! that steer published ports and overlay subnets to it (see
//! [`crate::netns::ingress`]), kept in step with the cluster's services and
//! networks.

use super::Agent;
use crate::cluster::model::{PortSpec, View};
use crate::netns::ingress::{HostPlan, HostRouting, PublishedPort};
use std::net::Ipv4Addr;

impl Agent {
    /// Opens the ingress TUN in this (the host's) namespace, steers the
    /// published ports to it and hands it to the dataplane.
    pub async fn start_ingress(&self) -> Result<(), String> {
        let tun = crate::io::tun::NAME;
        let fd = crate::io::tun::create(tun).map_err(|e| e.to_string())?;
        let advertise = self.cluster.config.advertise;
        let saved = self.state_dir.join("host-sysctls.json");
        let routing =
            HostRouting::setup(tun, ingress_address(advertise), self.container_mtu, &saved)
                .map_err(|e| format!("cannot set up ingress: {e}"))?;
        self.dataplane
            .set_host(fd)
            .await
            .map_err(|e| e.to_string())?;
        *self.host_routing.lock().unwrap_or_else(|p| p.into_inner()) = Some(routing);
        let view = self.cluster.view().await;
        self.apply_host_plan(&view);
        Ok(())
    }

    /// Removes the ingress rules (the TUN goes when the process exits).
    pub fn stop_ingress(&self) {
        if let Some(mut r) = self
            .host_routing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.teardown();
        }
    }

    /// Why `port` cannot be published: it is one this agent listens on.
    pub fn reserved_port(&self, p: &PortSpec) -> Option<String> {
        let c = &self.cluster.config;
        p.is_agents(c.gossip_port, c.vxlan_port).then(|| {
            format!(
                "port {}/{} is mesh-agent's own (gossip {}, VXLAN {}): publish another",
                p.published,
                p.protocol.name(),
                c.gossip_port,
                c.vxlan_port
            )
        })
    }

    /// Steers the view's published ports and overlay subnets to the TUN.
    pub(super) fn apply_host_plan(&self, view: &View) {
        let addresses = crate::netns::ingress::host_addresses(crate::io::tun::NAME);
        self.apply_host_plan_with(view, addresses);
    }

    /// [`Agent::apply_host_plan`] with the host's addresses already read
    /// (`None`: they could not be, keep the ones steered now).
    pub(super) fn apply_host_plan_with(
        &self,
        view: &View,
        addresses: Option<std::collections::BTreeSet<Ipv4Addr>>,
    ) {
        let mut guard = self.host_routing.lock().unwrap_or_else(|p| p.into_inner());
        let Some(routing) = guard.as_mut() else {
            return;
        };
        let advertise = self.cluster.config.advertise;
        // Published ports answer on every address of the host (its own
        // list, plus the two that must never be missing).
        let mut addresses = addresses.unwrap_or_else(|| routing.addresses().clone());
        addresses.extend([advertise, Ipv4Addr::LOCALHOST]);
        let mut plan = HostPlan {
            vxlan_port: self.cluster.config.vxlan_port,
            addresses,
            ..HostPlan::default()
        };
        for s in view.services.values() {
            for p in &s.ports {
                if let Some(why) = self.reserved_port(p) {
                    tracing::warn!(service = %s.name, "not published here: {why}");
                    continue;
                }
                plan.published.insert(PublishedPort {
                    protocol: p.protocol.name(),
                    port: p.published,
                });
            }
        }
        for n in view.networks.values() {
            // Routing a subnet that holds a node's address, or one of this
            // host's own (a LAN on another NIC), to the TUN would cut that
            // node or that LAN off: leave it to the host (no egress for it).
            let node_inside = std::iter::once(advertise)
                .chain(view.nodes.iter().map(|m| m.record.address))
                .chain(plan.addresses.iter().copied())
                .find(|a| n.subnet.contains(*a));
            if let Some(a) = node_inside {
                tracing::warn!(network = %n.name, subnet = %n.subnet, address = %a,
                    "the overlay subnet holds a node's or this host's address: no egress or host routes for it here");
                continue;
            }
            plan.subnets
                .insert((n.subnet.addr(), n.subnet.prefix_len()));
        }
        // `ip` and `nft` run as child processes (a few ms, only when the plan
        // changed).
        if let Err(e) = blocking(|| routing.apply(&plan)) {
            tracing::warn!(error = %e, "ingress rules not fully applied");
        }
    }

    /// Puts back the ingress rules if something else removed them (see
    /// `netns::ingress::repair`).
    pub(super) fn repair_host_rules(&self) {
        let mut guard = self.host_routing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(routing) = guard.as_mut() {
            blocking(|| routing.repair());
        }
    }
}

/// Runs `f`, which waits on a child process (`ip`, `nft`: a few ms), telling
/// the runtime that this worker blocks meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The ingress TUN's own address: link-local, and different on every host
/// (from the last two bytes of the advertised address), so that the tasks
/// can tell apart the hosts' local clients (`curl 127.0.0.1:PORT` comes from
/// this address).
pub fn ingress_address(advertise: Ipv4Addr) -> Ipv4Addr {
    let o = advertise.octets();
    match Ipv4Addr::new(169, 254, o[2], o[3]) {
        // Not the cloud metadata address.
        a if a == Ipv4Addr::new(169, 254, 169, 254) => Ipv4Addr::new(169, 254, 169, 253),
        a => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingress_address_follows_the_host_and_avoids_the_metadata_address() {
        let a = |s: &str| ingress_address(s.parse().unwrap());
        assert_eq!(a("192.168.100.116"), Ipv4Addr::new(169, 254, 100, 116));
        assert_ne!(a("192.168.100.116"), a("192.168.100.117"));
        assert_eq!(a("10.1.169.254"), Ipv4Addr::new(169, 254, 169, 253));
    }
}
