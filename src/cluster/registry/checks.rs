//! The leader's checks of a request against the view: names, addresses,
//! the ranges a subnet may not take, and the addresses already taken.

use super::super::model::{ContainerEndpoint, Network, View};
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Ranges an overlay subnet may not take: the host stack gives them
/// meanings of their own.
pub(super) const SPECIAL_RANGES: [(&str, &str); 5] = [
    ("0.0.0.0/8", "this network"),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local, where cloud metadata and mesh's ingress TUN live",
    ),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, with the broadcast address"),
];

/// A static endpoint's VTEP is a host on the underlay: a unicast address,
/// not loopback, not inside an overlay network (VXLAN to it would go into
/// the overlay it carries).
pub(super) fn check_vtep(view: &View, vtep: Ipv4Addr) -> Result<(), String> {
    if vtep.is_unspecified() || vtep.is_broadcast() || vtep.is_multicast() || vtep.is_loopback() {
        return Err(format!(
            "--vtep {vtep} is not a unicast host address: give the underlay address of the VTEP"
        ));
    }
    if let Some(n) = view.networks.values().find(|n| n.subnet.contains(vtep)) {
        return Err(format!(
            "--vtep {vtep} is inside network {}'s subnet {}: give the VTEP's underlay address",
            n.name, n.subnet
        ));
    }
    Ok(())
}

/// Names as Docker allows them: a letter or digit, then letters, digits, `_.-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid name '{name}': use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"))
    }
}

pub(super) fn check_host_ip(net: &Network, ip: Ipv4Addr) -> Result<(), String> {
    if !net.subnet.contains(ip) || net.subnet.is_reserved(ip) {
        return Err(format!(
            "address {ip} is not a host address of network {} ({})",
            net.name, net.subnet
        ));
    }
    if ip == net.gateway {
        return Err(format!(
            "address {ip} is the gateway of network {}",
            net.name
        ));
    }
    Ok(())
}

pub(super) fn taken_ips(
    view: &View,
    reserved: &HashSet<(String, Ipv4Addr)>,
    network_id: &str,
) -> HashSet<Ipv4Addr> {
    view.containers
        .iter()
        .chain(&view.down_containers)
        .filter(|c| c.network_id == network_id)
        .map(|c| c.ip)
        .chain(
            view.statics
                .iter()
                .filter(|s| s.network_id == network_id)
                .map(|s| s.ip),
        )
        .chain(
            reserved
                .iter()
                .filter(|(n, _)| n == network_id)
                .map(|(_, ip)| *ip),
        )
        .chain(
            view.services
                .values()
                .filter_map(|s| s.vips.get(network_id).copied()),
        )
        .collect()
}

/// The name among `names` that equals `name` regardless of case: DNS
/// names are case-insensitive, so `Web` and `web` would be one name there.
pub(super) fn same_name<'a>(
    mut names: impl Iterator<Item = &'a str>,
    name: &str,
) -> Option<&'a str> {
    names.find(|n| n.eq_ignore_ascii_case(name))
}

/// "network NAME not found", with where to look: `what` is `network` or
/// `service`, whose `ls` lists them.
pub fn not_found(what: &str, name: &str) -> String {
    format!("{what} {name} not found (see meshctl {what} ls)")
}

/// Refuses `name` on network `net` if a container there has it (any case:
/// DNS names are case-insensitive) and `counts` says that container is
/// another one. The asking host knows its own namespaces; the leader knows
/// only which node each container is on.
pub fn check_name_free(
    view: &View,
    net: &Network,
    name: &str,
    counts: impl Fn(&ContainerEndpoint) -> bool,
) -> Result<(), String> {
    let clash = view
        .containers
        .iter()
        .find(|c| c.network_id == net.id && c.name.eq_ignore_ascii_case(name) && counts(c));
    if let Some(c) = clash {
        let host = view
            .node(&c.node_id)
            .map_or_else(|| c.node_id.clone(), |n| n.record.address.to_string());
        return Err(format!(
            "name {name} is taken on network {} by container {} on {host}: pass another --name",
            net.name, c.netns
        ));
    }
    Ok(())
}
