//! `container attach` and `container detach`: the TAP in the container's
//! namespace, its address and route, its DNS listener, and its endpoint in
//! gossip; undone in reverse on detach.

use super::{Agent, Attachment};
use crate::api::types::{AttachOut, AttachRequest, DetachRequest};
use crate::cluster::model::ContainerEndpoint;
use crate::cluster::registry::{self, Mutation, Outcome};
use crate::dns;
use crate::io::tap;
use crate::netns;
use crate::tables::PortId;
use crate::wire::Mac;
use std::sync::{Arc, PoisonError};

impl Agent {
    /// `meshctl container attach`: gives the netns its interface on the network.
    pub async fn attach(&self, mut req: AttachRequest) -> Result<AttachOut, String> {
        if req.netns.trim().is_empty() {
            return Err(
                "--netns is empty: give a namespace's name (ip netns add NAME) or path".into(),
            );
        }
        req.netns = netns::canonical(&req.netns);
        let ifname = req.ifname.clone().unwrap_or_else(|| "eth0".into());
        netns::check_ifname(&ifname).map_err(|e| e.to_string())?;
        let name = req.name.clone().unwrap_or_else(|| default_name(&req.netns));
        registry::check_name(&name)?;
        let path = netns::resolve(&req.netns);
        let Some(ns_id) = netns::identity(&path) else {
            return Err(netns::NetnsError::NotFound(req.netns.clone()).to_string());
        };
        if !netns::is_netns(&path) {
            return Err(format!(
                "{} is not a network namespace: give a name from `ip netns list` or a path such as /proc/PID/ns/net",
                path.display()
            ));
        }
        // The host's own namespace would get an overlay address and take
        // 127.0.0.11:53, and its routes to the network's containers would go.
        if netns::identity(std::path::Path::new("/proc/self/ns/net")) == Some(ns_id) {
            return Err(format!(
                "{} is the host's own network namespace (the agent's): attach a container's",
                path.display()
            ));
        }
        // A network or service made on another host a moment ago may still be
        // on its way here (gossip takes up to a second): wait for it a little.
        let view = self
            .view_with(|v| {
                v.find_network(&req.network).is_some()
                    && req
                        .service
                        .as_ref()
                        .is_none_or(|s| v.find_service(s).is_some())
            })
            .await;
        let net = view
            .find_network(&req.network)
            .ok_or_else(|| registry::not_found("network", &req.network))?
            .clone();
        let service = match &req.service {
            Some(s) => {
                let svc = view
                    .find_service(s)
                    .ok_or_else(|| registry::not_found("service", s))?;
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
        if req.weight.is_some() && service.is_none() {
            return Err("--weight is a task's share of its service: it needs --service".into());
        }
        // The same namespace moving to another host is not another
        // container, and neither is one on this host whose namespace is gone
        // (it died without a detach; its restart may take its name again).
        // A task may be named as its service (`--name db --service db`).
        let here = &self.cluster.self_id;
        registry::check_name_free(&view, &net, &name, |c| {
            c.netns != req.netns
                && (c.node_id != *here || netns::is_netns(&netns::resolve(&c.netns)))
        })?;
        // A namespace deleted and made again under its name: its old
        // attachments go first, as the reaper would within a second (else
        // this attach would be told it is attached already).
        let stale: Vec<DetachRequest> = self
            .local
            .lock()
            .await
            .values()
            .filter(|a| a.netns == req.netns && a.ns_id.is_some_and(|old| old != ns_id))
            .map(|a| DetachRequest {
                netns: a.netns.clone(),
                network: a.network_id.clone(),
            })
            .collect();
        for old in stale {
            if let Err(e) = self.detach_with(old, false).await {
                tracing::debug!(error = %e, "detach of a re-created namespace's old attachment");
            }
        }
        // One attach or detach of a namespace at a time; the agent's locks
        // are not held while the leader is asked or the namespace is set up.
        let _claim = self.claim(&req.netns).await;
        let local = self.local.lock().await;
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
        drop(local);
        // What can fail in the namespace is tried before an address is
        // reserved, so that a refused attach holds none.
        let need_dns = !self.listeners.lock().await.contains_key(&req.netns);
        let dev = ifname.clone();
        let dns_sockets = netns::run_in(&path, move || {
            if netns::link_exists(&dev) {
                return Err(netns::NetnsError::Config(format!(
                    "the namespace already has an interface {dev}: pass --ifname"
                )));
            }
            if !need_dns {
                return Ok(None);
            }
            // The DNS address is on loopback, which must be up to bind it.
            netns::link_set_up("lo")?;
            let s = dns::listener::bind_here().map_err(|e| {
                netns::NetnsError::Config(format!(
                    "cannot serve DNS on {}: {e}",
                    dns::listener::DNS_ADDR
                ))
            })?;
            Ok(Some(s))
        })
        .map_err(|e| e.to_string())?;
        // This attach's name for its promise of an address (see `ReleaseIp`).
        let owner = crate::cluster::token::new_id();
        let ip = match self
            .cluster
            .mutate(Mutation::ReserveIp {
                network: net.id.clone(),
                ip: req.ip,
                owner: owner.clone(),
                name: Some(name.clone()),
                node: Some(self.cluster.self_id.clone()),
            })
            .await?
        {
            Outcome::Ip { ip, .. } => ip,
            other => return Err(format!("the leader answered {other:?} to an IP request")),
        };
        // From here on, a failure gives the address back.
        let net_id = net.id.clone();
        let release = |e: String| async move {
            let m = Mutation::ReleaseIp {
                network_id: net_id,
                ip,
                owner,
            };
            if let Err(r) = self.cluster.mutate(m).await {
                tracing::warn!(%ip, error = %r, "could not give back the address of a failed attach (it frees itself within 30 s)");
            }
            Err(e)
        };
        let mac = Mac::for_ip(ip);
        let (mtu, prefix, gateway, dev) = (
            self.container_mtu,
            net.subnet.prefix_len(),
            net.gateway,
            ifname.clone(),
        );
        let made = netns::run_in(&path, move || {
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
            Ok(fd)
        });
        let fd = match made {
            Ok(fd) => fd,
            Err(e) => return release(e.to_string()).await,
        };
        let mut local = self.local.lock().await;
        let port = (1..)
            .find(|p| !local.contains_key(p))
            .unwrap_or(PortId::MAX);
        if let Err(e) = self.dataplane.add_port(port, fd).await {
            drop(local);
            return release(e.to_string()).await;
        }
        if let Some(sockets) = dns_sockets {
            match dns::listener::Listener::start(&req.netns, sockets, self.dns.clone()) {
                Ok(l) => {
                    self.listeners.lock().await.insert(req.netns.clone(), l);
                }
                Err(e) => {
                    let _ = self.dataplane.remove_port(port).await;
                    drop(local);
                    return release(format!("cannot serve DNS in {}: {e}", req.netns)).await;
                }
            }
        }
        let ep = ContainerEndpoint {
            network_id: net.id.clone(),
            ip,
            mac,
            name: name.clone(),
            netns: req.netns.clone(),
            node_id: self.cluster.self_id.clone(),
            service: service.as_ref().map(|s| s.id.clone()),
            weight: req.weight.unwrap_or(1),
            draining: false,
        };
        let att = Attachment {
            port,
            netns: req.netns.clone(),
            network_id: net.id.clone(),
            ip,
            mac,
            name,
            ifname: ifname.clone(),
            endpoint: ep.clone(),
            ns_id: Some(ns_id),
        };
        local.insert(port, att);
        self.cluster.publish_endpoint(&ep).await;
        self.refresh(&local).await;
        self.save(&local);
        tracing::info!(netns = %req.netns, network = %net.name, %ip, port, "container attached");
        Ok(AttachOut {
            ip,
            mac: mac.to_string(),
            ifname,
        })
    }

    /// `meshctl container detach`: removes the interface and the endpoint.
    pub async fn detach(&self, req: DetachRequest) -> Result<(), String> {
        self.detach_with(req, true).await
    }

    /// Detaches every local container whose namespace is gone (deleted, or
    /// its process exited) without a detach: its TAP would keep the dead
    /// namespace alive, and its address, name and place behind a VIP
    /// would stay. No drain: nothing is left in it to finish.
    pub fn reap_gone(self: &Arc<Self>) {
        let busy = self
            .claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Ok(local) = self.local.try_lock() else {
            return; // an attach or detach is under way: next time
        };
        let gone: Vec<DetachRequest> = local
            .values()
            .filter(|a| a.ns_id.is_some() && !busy.contains(&a.netns))
            .filter(|a| netns::identity(&netns::resolve(&a.netns)) != a.ns_id)
            .map(|a| DetachRequest {
                netns: a.netns.clone(),
                network: a.network_id.clone(),
            })
            .collect();
        drop(local);
        for req in gone {
            tracing::warn!(
                netns = %req.netns,
                "the container's namespace is gone without a detach: detaching it"
            );
            let agent = self.clone();
            tokio::spawn(async move {
                if let Err(e) = agent.detach_with(req, false).await {
                    tracing::debug!(error = %e, "detach of a gone namespace");
                }
            });
        }
    }

    /// Detaches, after draining a task first if `drain`.
    async fn detach_with(&self, mut req: DetachRequest, drain: bool) -> Result<(), String> {
        req.netns = netns::canonical(&req.netns);
        let view = self.view().await;
        let mut claim = self.claim(&req.netns).await;
        let mut local = self.local.lock().await;
        let found = local
            .values()
            .find(|a| {
                a.netns == req.netns
                    && view
                        .find_network(&req.network)
                        .is_some_and(|n| n.id == a.network_id)
            })
            .map(|a| (a.port, a.network_id.clone()));
        let Some((port, network_id)) = found else {
            return Err(format!(
                "netns {} is not attached to network {} on this host",
                req.netns, req.network
            ));
        };
        // A task drains first: every balancer stops sending it new flows at
        // once, established ones go on until they are quiet or the drain
        // timeout passes; only then does its interface go.
        if let Some(att) = local
            .get(&port)
            .filter(|a| drain && a.endpoint.service.is_some())
        {
            let mut ep = att.endpoint.clone();
            ep.draining = true;
            self.cluster.publish_endpoint(&ep).await;
            self.refresh(&local).await;
            let netns = att.netns.clone();
            // The namespace is free for other changes meanwhile (an attach
            // to another network, say): the draining interface stays listed.
            drop((local, claim));
            self.drain(port, &netns).await;
            claim = self.claim(&req.netns).await;
            local = self.local.lock().await;
        }
        // Still the same attachment: a second detach of it may have ended
        // during the drain, and its port gone to another container since.
        let same = |a: &Attachment| a.netns == req.netns && a.network_id == network_id;
        if !local.get(&port).is_some_and(same) {
            return Err(format!("netns {} was detached meanwhile", req.netns));
        }
        let Some(att) = local.remove(&port) else {
            return Err(format!("netns {} was detached meanwhile", req.netns));
        };
        self.cluster
            .withdraw_endpoint(&att.network_id, att.ip)
            .await;
        self.refresh(&local).await;
        self.dataplane
            .remove_port(port)
            .await
            .map_err(|e| e.to_string())?;
        let listener = if local.values().any(|a| a.netns == att.netns) {
            None
        } else {
            self.listeners.lock().await.remove(&att.netns)
        };
        self.save(&local);
        // Stopped without the agent's lock, but still under the claim: a
        // re-attach of this namespace waits until 127.0.0.11:53 is free.
        drop(local);
        if let Some(l) = listener {
            l.stop().await;
        }
        tracing::info!(netns = %att.netns, ip = %att.ip, "container detached");
        drop(claim);
        Ok(())
    }

    /// Waits until no other attach or detach works on `netns`, then holds
    /// it until the returned claim is dropped.
    async fn claim(&self, netns: &str) -> Claim<'_> {
        loop {
            // Made before the check: a release between the two is not missed.
            let released = self.claims_released.notified();
            let free = self
                .claims
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(netns.to_string());
            if free {
                return Claim {
                    agent: self,
                    netns: netns.to_string(),
                };
            }
            released.await;
        }
    }
}

/// An attach's or detach's hold on a namespace ([`Agent::claim`]).
struct Claim<'a> {
    agent: &'a Agent,
    netns: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.agent
            .claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.netns);
        self.agent.claims_released.notify_waiters();
    }
}

impl Agent {
    /// Waits until the task in `netns` (port `port`) is done with its
    /// clients, or the drain timeout has passed. Done: no TCP connection a
    /// client opened to it is still open (an idle keep-alive connection
    /// counts: it is waited for, not cut), and its port has been quiet for
    /// [`QUIET`] (for UDP, which has no connections to look at).
    async fn drain(&self, port: PortId, netns: &str) {
        let deadline = std::time::Instant::now() + self.drain_timeout;
        let mut last = self.dataplane.activity(port);
        let mut quiet_since = std::time::Instant::now();
        let path = netns::resolve(netns);
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = self.dataplane.activity(port);
            if now != last {
                last = now;
                quiet_since = std::time::Instant::now();
                continue;
            }
            if quiet_since.elapsed() < QUIET {
                continue;
            }
            let p = path.clone();
            let open = tokio::task::spawn_blocking(move || {
                netns::run_in(&p, || {
                    netns::sockets::inbound_open()
                        .map_err(|e| netns::NetnsError::Config(e.to_string()))
                })
            })
            .await;
            match open {
                Ok(Ok(0)) => return,
                Ok(Ok(n)) => tracing::debug!(port, open = n, "draining: connections still open"),
                // The namespace is gone or unreadable: nothing left to wait for.
                Ok(Err(e)) => {
                    tracing::debug!(port, error = %e, "draining: cannot read the task's sockets");
                    return;
                }
                Err(_) => return,
            }
        }
        tracing::info!(
            port,
            "drain timeout passed; detaching with connections open"
        );
    }
}

/// How long a draining task must see no traffic to count as drained.
const QUIET: std::time::Duration = std::time::Duration::from_millis(1000);

/// The name of a container attached without `--name`: its namespace's name,
/// or for a process's namespace (`/proc/PID/ns/net`) `pid-PID`, so that two
/// such containers do not both take the name `net`.
fn default_name(netns: &str) -> String {
    let parts: Vec<&str> = netns.split('/').collect();
    if let ["", "proc", pid, "ns", "net"] = parts[..] {
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            return format!("pid-{pid}");
        }
    }
    let base = netns.rsplit('/').next().unwrap_or(netns);
    if registry::check_name(base).is_ok() {
        base.to_string()
    } else {
        "container".into()
    }
}

#[cfg(test)]
mod tests {
    use super::default_name;

    #[test]
    fn default_names_follow_the_namespace() {
        assert_eq!(default_name("web1"), "web1");
        assert_eq!(default_name("/proc/4242/ns/net"), "pid-4242");
        assert_eq!(default_name("/run/custom/db"), "db");
        assert_eq!(default_name("/proc/x/ns/net"), "net");
        assert_eq!(default_name("/tmp/-odd"), "container");
    }
}
