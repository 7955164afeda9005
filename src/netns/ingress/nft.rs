//! The nftables side of ingress: the agent's own table (`ip mesh`: egress
//! masquerade, the LAN kept off container addresses, VXLAN out of conntrack,
//! ICMP errors about published ports' replies marked for the TUN), and what
//! the agent reads of other tables (a forward chain that drops by default,
//! NAT that relies on forwarding).

use super::{HostPlan, ERROR_MARK, NFT_TABLE};

/// The objects of kind `kind` ("chain", "rule") in `nft -j list ...`
/// output that belong to other tables than the agent's own.
fn others(json: &str, kind: &str) -> Vec<serde_json::Value> {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(json) else {
        return vec![];
    };
    let Some(items) = v.get_mut("nftables").and_then(|n| n.as_array_mut()) else {
        return vec![];
    };
    items
        .iter_mut()
        .filter_map(|i| i.get_mut(kind).map(serde_json::Value::take))
        .filter(|o| !(o["family"] == "ip" && o["table"] == NFT_TABLE))
        .collect()
}

/// `family table NAME` of a chain or rule, NAME its field `name_key`.
fn label(o: &serde_json::Value, name_key: &str) -> String {
    let s = |k: &str| o[k].as_str().unwrap_or("?").to_string();
    format!("{} {} {}", s("family"), s("table"), s(name_key))
}

/// The forward-hook chains (`family table chain`) of other tables whose
/// policy is drop, from `nft -j list chains`: each must accept the TUN's
/// traffic too, or forwarded packets die there whatever the agent's own
/// table says.
pub fn forward_drops(json: &str) -> Vec<String> {
    others(json, "chain")
        .iter()
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop")
        .map(|c| label(c, "name"))
        .collect()
}

/// The first NAT rule (`family table chain`) of another table, from `nft -j
/// list ruleset`: masquerade, SNAT or DNAT, native or through iptables-nft's
/// `xt` targets. Docker, Podman, libvirt and kube-proxy all NAT what they
/// forward, so such a rule says that something besides the agent relies on
/// forwarding.
pub fn nat_elsewhere(json: &str) -> Option<String> {
    let nat = |e: &serde_json::Value| {
        ["masquerade", "snat", "dnat"]
            .iter()
            .any(|k| e.get(k).is_some())
            || e.get("xt")
                .is_some_and(|x| matches!(x["name"].as_str(), Some("MASQUERADE" | "SNAT" | "DNAT")))
    };
    others(json, "rule")
        .iter()
        .find(|r| r["expr"].as_array().is_some_and(|es| es.iter().any(nat)))
        .map(|r| label(r, "chain"))
}

/// Something else on this host that forwards (see [`nat_elsewhere`]): an
/// nftables NAT rule of another table, or a NAT rule in legacy iptables'
/// nat table. Docker or libvirt started after the agent found forwarding
/// already on and did not turn it on themselves.
pub fn other_forwarder() -> Option<String> {
    if let Some(out) = super::output("nft", &["-j", "list", "ruleset"]) {
        if let Some(chain) = nat_elsewhere(&String::from_utf8_lossy(&out)) {
            return Some(format!("nftables chain {chain}"));
        }
    }
    // Legacy iptables' nat table is listed once loaded, rules or not: look
    // at its rules (if they cannot be listed, assume the worst).
    let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default();
    if !legacy.lines().any(|t| t == "nat") {
        return None;
    }
    match super::output("iptables-legacy", &["-t", "nat", "-S"]) {
        Some(out) => String::from_utf8_lossy(&out)
            .lines()
            .find(|l| {
                ["-j MASQUERADE", "-j SNAT", "-j DNAT"]
                    .iter()
                    .any(|j| l.contains(j))
            })
            .map(|l| format!("legacy iptables rule '{l}'")),
        _ => Some("legacy iptables' nat table (iptables-legacy cannot list it)".to_string()),
    }
}

/// The nftables script that replaces table [`NFT_TABLE`] for `plan`:
/// masquerade for the overlay subnets' traffic to anything outside them
/// (also a container calling its own host's published port, which then
/// comes back into the TUN from the TUN's address, so that the reply finds
/// its way back), a drop of new connections from outside to container
/// addresses, and `notrack` for VXLAN datagrams.
pub fn nft_ruleset(tun: &str, plan: &HostPlan) -> String {
    let text = format!("add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n");
    let mut chains = client_errors_chain(tun, plan);
    if !plan.subnets.is_empty() {
        chains += &overlay_chains(tun, plan);
    }
    if chains.is_empty() {
        return text;
    }
    text + &format!("table ip {NFT_TABLE} {{\n{chains}}}\n")
}

/// The chains for the overlay subnets: VXLAN `notrack`, containers closed
/// to new connections from outside, egress masquerade.
fn overlay_chains(tun: &str, plan: &HostPlan) -> String {
    let subnets: Vec<String> = plan
        .subnets
        .iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect();
    let subnets = subnets.join(", ");
    let mut text = String::new();
    if plan.vxlan_port != 0 {
        let p = plan.vxlan_port;
        for (name, hook) in [("notrack_in", "prerouting"), ("notrack_out", "output")] {
            text += &format!(
                "  chain {name} {{\n    type filter hook {hook} priority raw; policy accept;\n    udp dport {p} notrack\n  }}\n"
            );
        }
    }
    text += &format!(
        "  chain containers {{\n    type filter hook forward priority filter; policy accept;\n    iifname != \"{tun}\" oifname \"{tun}\" ip daddr {{ {subnets} }} ct state new drop\n  }}\n"
    );
    text += &format!(
        "  chain egress {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {{ {subnets} }} ip daddr != {{ {subnets} }} masquerade\n  }}\n"
    );
    text
}

/// The chain that marks ICMP errors (destination unreachable, time
/// exceeded) coming from outside to one of the host's own addresses about
/// a published port's reply, so that they go to the TUN and on to the task
/// (which learns the path MTU to the client from them); errors for machines
/// the host forwards for are left alone. The quoted packet's protocol and
/// source port are read at fixed offsets, so only a quoted IPv4 header
/// without options (as the agent's replies have) matches. Empty when
/// nothing is published.
fn client_errors_chain(tun: &str, plan: &HostPlan) -> String {
    let mut rules = String::new();
    for (name, number) in [("tcp", 6), ("udp", 17)] {
        let ports: Vec<String> = plan
            .published
            .iter()
            .filter(|p| p.protocol == name)
            .map(|p| p.port.to_string())
            .collect();
        if ports.is_empty() {
            continue;
        }
        rules += &format!(
            "    iifname != \"{tun}\" fib daddr type local icmp type {{ destination-unreachable, time-exceeded }} @th,68,4 5 @th,136,8 {number} @th,224,16 {{ {} }} meta mark set meta mark | {ERROR_MARK:#x}\n",
            ports.join(", ")
        );
    }
    if rules.is_empty() {
        return rules;
    }
    format!("  chain client_errors {{\n    type filter hook prerouting priority mangle; policy accept;\n{rules}  }}\n")
}
