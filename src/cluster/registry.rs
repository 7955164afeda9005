//! Cluster-wide changes, decided by the leader.
//!
//! Every change that must be unique across the cluster (a network's name, VNI
//! and subnet; a container's IP) goes through one node, the leader, which
//! decides it with [`plan`] under its allocation lock. `plan` is pure: given the
//! current view and the IPs promised but not yet visible, it checks the request
//! and says which objects to write. Two hosts asking at the same moment are
//! simply served one after the other.

use super::ipam::{self, Subnet};
use super::model::{
    EndpointMode, Network, NodeRecord, Object, PortSpec, Service, StaticEndpoint, Versioned, View,
};
use crate::wire::Mac;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// A change a host asks the leader for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Mutation {
    CreateNetwork {
        name: String,
        driver: String,
        subnet: Option<String>,
        gateway: Option<Ipv4Addr>,
    },
    RemoveNetwork {
        name: String,
    },
    /// An IP for a container about to be attached: the given one if free, else the lowest free.
    ReserveIp {
        network: String,
        ip: Option<Ipv4Addr>,
        /// Who asks (a random word per attach): only it can give the address back.
        #[serde(default)]
        owner: String,
        /// The container's name on the network, and the node attaching it:
        /// a name another host's container holds, or another attach under
        /// way, is refused (the asking host checked its own, in a view that
        /// may be a second old).
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        node: Option<String>,
    },
    /// Gives back an address reserved for an attach that then failed.
    ReleaseIp {
        network_id: String,
        ip: Ipv4Addr,
        #[serde(default)]
        owner: String,
    },
    AddStaticEndpoint {
        network: String,
        ip: Ipv4Addr,
        mac: Mac,
        vtep: Ipv4Addr,
    },
    RemoveStaticEndpoint {
        network: String,
        ip: Ipv4Addr,
    },
    CreateService {
        name: String,
        networks: Vec<String>,
        ports: Vec<PortSpec>,
        endpoint_mode: EndpointMode,
        scheduler: String,
    },
    RemoveService {
        name: String,
    },
}

/// The load-balancing schedulers a service may ask for.
pub const SCHEDULERS: [&str; 5] = ["rr", "wrr", "lc", "sh", "mh"];

/// What the leader answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Network(Network),
    Removed {
        key: String,
    },
    Ip {
        network_id: String,
        ip: Ipv4Addr,
    },
    /// A reservation given back ([`Mutation::ReleaseIp`]).
    Released {
        network_id: String,
        ip: Ipv4Addr,
    },
    StaticEndpoint(StaticEndpoint),
    Service(Service),
}

/// The leader's decision: the answer and the objects to write.
#[derive(Debug)]
pub struct Plan {
    pub outcome: Outcome,
    pub writes: Vec<(String, Versioned)>,
}

impl Plan {
    /// Removing the object at `key`: a tombstone of `version`.
    fn removal(key: String, version: u64) -> Plan {
        Plan {
            outcome: Outcome::Removed { key: key.clone() },
            writes: vec![(
                key,
                Versioned {
                    version,
                    object: None,
                },
            )],
        }
    }
}

/// Checks `m` against `view` and decides it. `reserved` holds IPs promised to
/// attaches that the view does not show yet; `version` is the version for any
/// object written; `new_id` the ID a new object gets.
pub fn plan(
    view: &View,
    reserved: &HashSet<(String, Ipv4Addr)>,
    m: &Mutation,
    version: u64,
    new_id: &str,
) -> Result<Plan, String> {
    match m {
        Mutation::CreateNetwork {
            name,
            driver,
            subnet,
            gateway,
        } => create_network(
            view,
            name,
            driver,
            subnet.as_deref(),
            *gateway,
            version,
            new_id,
        ),
        Mutation::RemoveNetwork { name } => {
            let net = view
                .find_network(name)
                .ok_or_else(|| not_found("network", name))?;
            if let Some(s) = view
                .services
                .values()
                .find(|s| s.networks.contains(&net.id))
            {
                return Err(format!(
                    "network {} is in use by service {}: remove the service first",
                    net.name, s.name
                ));
            }
            let attached = view
                .containers
                .iter()
                .filter(|c| c.network_id == net.id)
                .count();
            if attached > 0 {
                return Err(format!(
                    "network {} has {attached} attached container(s): detach them first",
                    net.name
                ));
            }
            // An attach under way (its address promised, its container not
            // in the view yet) would end on a network that is gone, and
            // could not be detached by the network's name any more. (A Down
            // host's containers do not hold the network: the host may never
            // come back, and the cluster forgets it only after an hour.)
            if reserved.iter().any(|(n, _)| *n == net.id) {
                return Err(format!(
                    "network {} has an attach under way: try again when it has finished",
                    net.name
                ));
            }
            let mut writes = vec![(
                super::model::network_key(&net.id),
                Versioned {
                    version,
                    object: None,
                },
            )];
            for s in view.statics.iter().filter(|s| s.network_id == net.id) {
                writes.push((
                    super::model::static_key(&s.network_id, s.ip),
                    Versioned {
                        version,
                        object: None,
                    },
                ));
            }
            Ok(Plan {
                outcome: Outcome::Removed {
                    key: super::model::network_key(&net.id),
                },
                writes,
            })
        }
        Mutation::ReserveIp {
            network,
            ip,
            name,
            node,
            ..
        } => {
            let net = view
                .find_network(network)
                .ok_or_else(|| not_found("network", network))?;
            if let (Some(name), Some(node)) = (name, node) {
                check_name_free(view, net, name, |c| c.node_id != *node)?;
            }
            let taken = taken_ips(view, reserved, &net.id);
            let ip = match ip {
                Some(ip) => {
                    check_host_ip(net, *ip)?;
                    if taken.contains(ip) {
                        return Err(format!(
                            "address {ip} is already in use on network {}",
                            net.name
                        ));
                    }
                    *ip
                }
                None => ipam::next_ip(&net.subnet, net.gateway, &taken).ok_or_else(|| {
                    format!(
                        "network {} has no free address left in {}",
                        net.name, net.subnet
                    )
                })?,
            };
            Ok(Plan {
                outcome: Outcome::Ip {
                    network_id: net.id.clone(),
                    ip,
                },
                writes: vec![],
            })
        }
        Mutation::ReleaseIp { network_id, ip, .. } => Ok(Plan {
            outcome: Outcome::Released {
                network_id: network_id.clone(),
                ip: *ip,
            },
            writes: vec![],
        }),
        Mutation::AddStaticEndpoint {
            network,
            ip,
            mac,
            vtep,
        } => {
            let net = view
                .find_network(network)
                .ok_or_else(|| not_found("network", network))?;
            check_host_ip(net, *ip)?;
            if taken_ips(view, reserved, &net.id).contains(ip) {
                return Err(format!(
                    "address {ip} is already in use on network {}",
                    net.name
                ));
            }
            if mac.is_group() || *mac == Mac::ZERO {
                return Err(format!("MAC {mac} is not a unicast address"));
            }
            check_vtep(view, *vtep)?;
            let s = StaticEndpoint {
                network_id: net.id.clone(),
                ip: *ip,
                mac: *mac,
                vtep: *vtep,
            };
            let obj = Object::StaticEndpoint(s.clone());
            Ok(Plan {
                outcome: Outcome::StaticEndpoint(s),
                writes: vec![(
                    obj.key(),
                    Versioned {
                        version,
                        object: Some(obj),
                    },
                )],
            })
        }
        Mutation::RemoveStaticEndpoint { network, ip } => {
            let net = view
                .find_network(network)
                .ok_or_else(|| not_found("network", network))?;
            if !view
                .statics
                .iter()
                .any(|s| s.network_id == net.id && s.ip == *ip)
            {
                return Err(format!("no static endpoint {ip} on network {}", net.name));
            }
            let key = super::model::static_key(&net.id, *ip);
            Ok(Plan::removal(key, version))
        }
        Mutation::CreateService {
            name,
            networks,
            ports,
            endpoint_mode,
            scheduler,
        } => {
            let spec = ServiceSpec {
                name,
                networks,
                ports,
                endpoint_mode: *endpoint_mode,
                scheduler,
            };
            create_service(view, reserved, &spec, version, new_id)
        }
        Mutation::RemoveService { name } => {
            let svc = view
                .find_service(name)
                .ok_or_else(|| not_found("service", name))?;
            let tasks = view.tasks(&svc.id).count();
            if tasks > 0 {
                return Err(format!(
                    "service {} has {tasks} task(s) attached: detach them first",
                    svc.name
                ));
            }
            let key = super::model::service_key(&svc.id);
            Ok(Plan::removal(key, version))
        }
    }
}

/// What `service create` asks for.
struct ServiceSpec<'a> {
    name: &'a str,
    networks: &'a [String],
    ports: &'a [PortSpec],
    endpoint_mode: EndpointMode,
    scheduler: &'a str,
}

fn create_service(
    view: &View,
    reserved: &HashSet<(String, Ipv4Addr)>,
    spec: &ServiceSpec<'_>,
    version: u64,
    id: &str,
) -> Result<Plan, String> {
    let ServiceSpec {
        name,
        networks,
        ports,
        endpoint_mode,
        scheduler,
    } = *spec;
    check_name(name)?;
    if let Some(s) = same_name(view.services.values().map(|s| s.name.as_str()), name) {
        return Err(format!(
            "service with name {s} already exists (names are case-insensitive, as in DNS)"
        ));
    }
    if networks.is_empty() {
        return Err("a service needs at least one --network".into());
    }
    if !SCHEDULERS.contains(&scheduler) {
        return Err(format!(
            "unknown scheduler '{scheduler}': use one of {}",
            SCHEDULERS.join(", ")
        ));
    }
    if endpoint_mode == EndpointMode::Dnsrr && !ports.is_empty() {
        return Err(
            "published ports need --endpoint-mode vip: dnsrr services have no VIP to balance"
                .into(),
        );
    }
    let mut ids: Vec<String> = Vec::new();
    for n in networks {
        let net = view
            .find_network(n)
            .ok_or_else(|| not_found("network", n))?;
        if !ids.contains(&net.id) {
            ids.push(net.id.clone());
        }
    }
    for (i, p) in ports.iter().enumerate() {
        if p.published == 0 || p.target == 0 {
            return Err("published and target ports must be 1-65535".into());
        }
        let proto = p.protocol.name();
        if ports[..i]
            .iter()
            .any(|q| q.published == p.published && q.protocol == p.protocol)
        {
            return Err(format!("port {}/{proto} is given twice", p.published));
        }
        let clash = view.services.values().find(|s| {
            s.ports
                .iter()
                .any(|q| q.published == p.published && q.protocol == p.protocol)
        });
        if let Some(other) = clash {
            return Err(format!(
                "port {}/{proto} is already published by service {}",
                p.published, other.name
            ));
        }
        // Every host serves every published port: none may be a port an
        // agent listens on, on any host (the asking agent checked its own).
        let agents = |r: &NodeRecord| p.is_agents(r.gossip_port, r.vxlan_port);
        if let Some(n) = view.nodes.iter().find(|n| agents(&n.record)) {
            return Err(format!(
                "port {}/{proto} is mesh-agent's own on host {} (gossip {}, VXLAN {}): publish another",
                p.published, n.record.hostname, n.record.gossip_port, n.record.vxlan_port
            ));
        }
    }
    let mut vips = std::collections::BTreeMap::new();
    if endpoint_mode == EndpointMode::Vip {
        for net_id in &ids {
            let Some(net) = view.networks.get(net_id) else {
                continue;
            };
            let taken = taken_ips(view, reserved, net_id);
            let vip = ipam::next_ip(&net.subnet, net.gateway, &taken).ok_or_else(|| {
                format!("network {} has no free address left for a VIP", net.name)
            })?;
            vips.insert(net_id.clone(), vip);
        }
    }
    let svc = Service {
        id: id.to_string(),
        name: name.to_string(),
        networks: ids,
        endpoint_mode,
        scheduler: scheduler.to_string(),
        ports: ports.to_vec(),
        vips,
    };
    let obj = Object::Service(svc.clone());
    Ok(Plan {
        outcome: Outcome::Service(svc),
        writes: vec![(
            obj.key(),
            Versioned {
                version,
                object: Some(obj),
            },
        )],
    })
}

/// The network host `r` is on, as far as its record says: its address's
/// network (a prefix of 8 to 30 bits), else the /30 around its address.
fn underlay_of(r: &NodeRecord) -> Option<Subnet> {
    let bits = match r.underlay_prefix {
        p @ 8..=30 => p,
        _ => 30,
    };
    let mask = u32::MAX << (32 - u32::from(bits));
    Subnet::new(Ipv4Addr::from(u32::from(r.address) & mask), bits).ok()
}

fn create_network(
    view: &View,
    name: &str,
    driver: &str,
    subnet: Option<&str>,
    gateway: Option<Ipv4Addr>,
    version: u64,
    id: &str,
) -> Result<Plan, String> {
    check_name(name)?;
    if driver != "overlay" {
        return Err(format!(
            "driver '{driver}' is not supported: mesh networks use the overlay driver"
        ));
    }
    if let Some(n) = same_name(view.networks.values().map(|n| n.name.as_str()), name) {
        return Err(format!(
            "network with name {n} already exists (names are case-insensitive, as in DNS)"
        ));
    }
    if gateway.is_some() && subnet.is_none() {
        return Err("--gateway needs --subnet (the gateway is an address of that subnet)".into());
    }
    // The hosts' own networks (the underlay) count as taken: containers
    // would get the addresses of hosts and their neighbours, and the routes
    // to the subnet would cut the hosts off from them.
    let hosts = view
        .nodes
        .iter()
        .filter_map(|n| Some((underlay_of(&n.record)?, &n.record)));
    let mut taken: Vec<Subnet> = view.networks.values().map(|n| n.subnet).collect();
    taken.extend(hosts.clone().map(|(u, _)| u));
    let subnet = match subnet {
        Some(s) => {
            let s: Subnet = s.parse()?;
            if let Some((range, what)) = SPECIAL_RANGES
                .iter()
                .find(|(r, _)| r.parse::<Subnet>().is_ok_and(|r| r.overlaps(&s)))
            {
                return Err(format!(
                    "subnet {s} overlaps {range} ({what}): pick a private range such as 10.1.0.0/16"
                ));
            }
            if let Some(other) = view.networks.values().find(|n| n.subnet.overlaps(&s)) {
                return Err(format!(
                    "subnet {s} overlaps {} of network {}",
                    other.subnet, other.name
                ));
            }
            if let Some((u, host)) = hosts.clone().find(|(u, _)| u.overlaps(&s)) {
                return Err(format!(
                    "subnet {s} overlaps {u}, the network of host {} ({}): an overlay subnet \
                     must stay out of the hosts' network",
                    host.hostname, host.address
                ));
            }
            s
        }
        None => {
            ipam::carve_default(&taken).ok_or("no free /24 left in 10.0.0.0/8: pass --subnet")?
        }
    };
    let gateway = match gateway {
        Some(g) if !subnet.contains(g) || subnet.is_reserved(g) => {
            return Err(format!(
                "gateway {g} is not a host address of subnet {subnet}"
            ));
        }
        Some(g) => g,
        None => subnet.first_host(),
    };
    let vni = ipam::next_vni(view.networks.values().map(|n| n.vni)).ok_or("no free VNI left")?;
    let net = Network {
        id: id.to_string(),
        name: name.to_string(),
        driver: driver.to_string(),
        vni,
        subnet,
        gateway,
    };
    let obj = Object::Network(net.clone());
    Ok(Plan {
        outcome: Outcome::Network(net),
        writes: vec![(
            obj.key(),
            Versioned {
                version,
                object: Some(obj),
            },
        )],
    })
}

mod checks;
use checks::{check_host_ip, check_vtep, same_name, taken_ips, SPECIAL_RANGES};
pub use checks::{check_name, check_name_free, not_found};

#[cfg(test)]
mod tests;
