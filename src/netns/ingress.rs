//! How host traffic reaches the agent: the ingress TUN and policy routing.
//!
//! The choice: no netfilter on the ingress path at all. The host's routing
//! already picks packets by protocol and destination port (`ip rule ...
//! ipproto tcp dport 8000`), so a rule per published port sends them to a
//! routing table whose only route is the TUN; the `local` rule moves from
//! priority 0 to 1000 so that these rules are looked at before the host
//! delivers to itself. What this buys:
//! - the packet reaches the agent untouched: the client's address and port
//!   are intact (no DNAT or SNAT by the kernel, no conntrack entry to keep
//!   in step with ours), which is what lets the task see the real client;
//! - the task's replies, written back to the TUN with the published address
//!   as source, pass the kernel's source check through the same rule (the
//!   reverse lookup of that address and port leads to the TUN), and leave
//!   as any forwarded packet does;
//! - it works with no iptables at all, and undoing it is deleting rules.
//!
//! The rules match the destination as well as the port (ADVERTISE_ADDR and
//! 127.0.0.0/8): a bare `dport 80` rule would also catch the host's own
//! connections to port 80 elsewhere.
//!
//! Egress is the one place netfilter is used: containers' packets to the
//! outside leave the TUN with their overlay source and are masqueraded by
//! one nftables rule (as Swarm's docker_gwbridge does with iptables); the
//! replies are turned back by the kernel's NAT and routed to the TUN by one
//! rule per overlay subnet. Without the `nft` binary egress is off and the
//! agent says so. A NAT table turns the kernel's connection tracking on for
//! the whole namespace, so the same nftables table marks the published
//! ports' packets `notrack` (both ways): ingress flows are tracked by the
//! agent alone, and a full kernel conntrack table cannot drop them.
//!
//! Everything here is undone by [`HostRouting::teardown`] (also on drop);
//! rules left by an agent that was killed are removed when the next one
//! starts.

use super::NetnsError;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The routing table whose default route is the ingress TUN.
pub const TABLE: u32 = 4_789_000;
/// Priority of the published-port rules (and of the overlay subnets' rules,
/// one after them).
pub const PREF_PUBLISHED: u32 = 10;
pub const PREF_SUBNETS: u32 = 11;
/// Where the host's `local` rule goes, after ours.
pub const PREF_LOCAL: u32 = 1000;
/// The nftables table: egress masquerade, and `notrack` for ingress.
pub const NFT_TABLE: &str = "mesh";

/// A published port as the host's rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    /// "tcp" or "udp".
    pub protocol: &'static str,
    pub port: u16,
}

/// What the host's rules should steer to the TUN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPlan {
    pub published: BTreeSet<PublishedPort>,
    /// Overlay subnets (address, prefix length): replies to egress, and the
    /// host's own traffic to containers.
    pub subnets: BTreeSet<(Ipv4Addr, u8)>,
    /// The underlay's VXLAN port: its datagrams are not tracked either (the
    /// NAT table would otherwise put every one through conntrack).
    pub vxlan_port: u16,
}

/// The host side of ingress, as set up in the agent's namespace.
pub struct HostRouting {
    tun: String,
    advertise: Ipv4Addr,
    applied: HostPlan,
    forward_before: Option<String>,
    nft: bool,
    active: bool,
}

fn ip_batch(commands: &[String]) -> Result<(), NetnsError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            NetnsError::Config(format!(
                "cannot run `ip` for the ingress rules: {e} (install iproute2)"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let text = commands.join("\n") + "\n";
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetnsError::Config(format!("`ip -batch` failed: {e}")))?;
    if !out.status.success() {
        return Err(NetnsError::Config(format!(
            "ingress routing: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn sysctl(path: &str, value: &str) -> Result<(), NetnsError> {
    std::fs::write(path, value)
        .map_err(|e| NetnsError::Config(format!("cannot set {path} to {value}: {e}")))
}

fn rule(verb: &str, pref: u32, selector: &str) -> String {
    format!("rule {verb} pref {pref} {selector} lookup {TABLE}")
}

impl HostRouting {
    /// Gives the TUN (already created in this namespace) its address and
    /// MTU, routes table [`TABLE`] to it, moves the `local` rule after ours
    /// and turns forwarding on. Removes rules a killed agent left.
    pub fn setup(
        tun: &str,
        advertise: Ipv4Addr,
        address: Ipv4Addr,
        mtu: u32,
    ) -> Result<HostRouting, NetnsError> {
        Self::remove_stale();
        super::link_set_mtu(tun, mtu)?;
        super::addr_add(tun, address, 32)?;
        super::link_set_up(tun)?;
        let conf = format!("/proc/sys/net/ipv4/conf/{tun}");
        sysctl(&format!("{conf}/rp_filter"), "0")?;
        // Replies to `curl 127.0.0.1:PORT` come back from 127.0.0.1.
        sysctl(&format!("{conf}/route_localnet"), "1")?;
        sysctl(&format!("{conf}/send_redirects"), "0")?;
        let forward_path = "/proc/sys/net/ipv4/ip_forward";
        let forward_before = std::fs::read_to_string(forward_path)
            .ok()
            .map(|s| s.trim().to_string());
        sysctl(forward_path, "1")?;
        ip_batch(&[format!("route replace default dev {tun} table {TABLE}")])?;
        // Add the new `local` rule before deleting the old one, so that there
        // is never a moment without it. Either may be done already (an agent
        // was killed before it could put them back): not an error.
        let moved = ip_batch(&[
            format!("rule add pref {PREF_LOCAL} lookup local"),
            "rule del pref 0 lookup local".to_string(),
        ]);
        if let Err(e) = moved {
            tracing::debug!(error = %e, "local rule already moved");
        }
        let nft = Command::new("nft")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !nft {
            tracing::warn!(
                "`nft` not found: containers get no egress to outside addresses (install nftables)"
            );
        }
        Ok(HostRouting {
            tun: tun.to_string(),
            advertise,
            applied: HostPlan::default(),
            forward_before,
            nft,
            active: true,
        })
    }

    /// Deletes every rule that points at [`TABLE`] (left by an agent that
    /// was killed), one at a time: `ip rule del` takes the first match.
    fn remove_stale() {
        for _ in 0..4096 {
            let ok = Command::new("ip")
                .args(["rule", "del", "table", &TABLE.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", NFT_TABLE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn published_rules(&self, verb: &str, p: &PublishedPort) -> [String; 2] {
        let sel = |to: String| format!("to {to} ipproto {} dport {}", p.protocol, p.port);
        [
            rule(verb, PREF_PUBLISHED, &sel(format!("{}/32", self.advertise))),
            rule(verb, PREF_PUBLISHED, &sel("127.0.0.0/8".into())),
        ]
    }

    /// Brings the rules in line with `plan` (only the differences).
    pub fn apply(&mut self, plan: &HostPlan) -> Result<(), NetnsError> {
        if !self.active || *plan == self.applied {
            return Ok(());
        }
        let mut cmds = vec![];
        for p in self.applied.published.difference(&plan.published) {
            cmds.extend(self.published_rules("del", p));
        }
        for p in plan.published.difference(&self.applied.published) {
            cmds.extend(self.published_rules("add", p));
        }
        for (a, l) in self.applied.subnets.difference(&plan.subnets) {
            cmds.push(rule("del", PREF_SUBNETS, &format!("to {a}/{l}")));
        }
        for (a, l) in plan.subnets.difference(&self.applied.subnets) {
            cmds.push(rule("add", PREF_SUBNETS, &format!("to {a}/{l}")));
        }
        // Recorded as applied even if a command failed: the next plan
        // differs from this one only where the cluster changed, and a rule
        // that failed to go in would fail again the same way.
        let plan = plan.clone();
        let old = std::mem::replace(&mut self.applied, plan.clone());
        ip_batch(&cmds)?;
        if self.nft && plan != old {
            self.apply_nft(&plan)?;
        }
        tracing::info!(
            published = plan.published.len(),
            subnets = plan.subnets.len(),
            "ingress rules updated"
        );
        Ok(())
    }

    /// Replaces the nftables table, in one transaction.
    fn apply_nft(&self, plan: &HostPlan) -> Result<(), NetnsError> {
        let text = nft_ruleset(&self.tun, self.advertise, plan);
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NetnsError::Config(format!("cannot run nft for egress: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(text.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| NetnsError::Config(format!("nft failed: {e}")))?;
        if !out.status.success() {
            return Err(NetnsError::Config(format!(
                "nftables (egress masquerade, ingress notrack): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Undoes everything [`HostRouting::setup`] and [`HostRouting::apply`]
    /// did. Safe to call twice.
    pub fn teardown(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        let mut cmds = vec![];
        for p in &self.applied.published {
            cmds.extend(self.published_rules("del", p));
        }
        for (a, l) in &self.applied.subnets {
            cmds.push(rule("del", PREF_SUBNETS, &format!("to {a}/{l}")));
        }
        cmds.push("rule add pref 0 lookup local".to_string());
        cmds.push(format!("rule del pref {PREF_LOCAL} lookup local"));
        cmds.push(format!("route flush table {TABLE}"));
        if let Err(e) = ip_batch(&cmds) {
            tracing::warn!(error = %e, "ingress rules not all removed");
        }
        if self.nft {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", NFT_TABLE])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(v) = &self.forward_before {
            let _ = sysctl("/proc/sys/net/ipv4/ip_forward", v);
        }
        tracing::info!("ingress rules removed");
    }
}

/// The nftables script that replaces table [`NFT_TABLE`] for `plan`: the
/// egress masquerade of the overlay subnets, and `notrack` for the published
/// ports' packets (the clients' on the way in, locally made ones on the way
/// out, the replies coming back from the TUN).
pub fn nft_ruleset(tun: &str, advertise: Ipv4Addr, plan: &HostPlan) -> String {
    let mut text = format!("add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n");
    if plan.subnets.is_empty() && plan.published.is_empty() {
        return text;
    }
    text += &format!("table ip {NFT_TABLE} {{\n");
    let ours = format!("{{ {advertise}, 127.0.0.0/8 }}");
    let mut pre = vec![];
    let mut out = vec![];
    if plan.vxlan_port != 0 {
        let p = plan.vxlan_port;
        pre.push(format!("udp dport {p} notrack"));
        out.push(format!("udp dport {p} notrack"));
    }
    for proto in ["tcp", "udp"] {
        let ports: Vec<String> = plan
            .published
            .iter()
            .filter(|p| p.protocol == proto)
            .map(|p| p.port.to_string())
            .collect();
        if ports.is_empty() {
            continue;
        }
        let ports = ports.join(", ");
        pre.push(format!(
            "ip daddr {ours} {proto} dport {{ {ports} }} notrack"
        ));
        pre.push(format!(
            "iifname \"{tun}\" ip saddr {ours} {proto} sport {{ {ports} }} notrack"
        ));
        out.push(format!(
            "ip daddr {ours} {proto} dport {{ {ports} }} notrack"
        ));
    }
    let chain = |name: &str, hook: &str, rules: &[String]| {
        let mut c = format!(
            "  chain {name} {{\n    type filter hook {hook} priority raw; policy accept;\n"
        );
        for r in rules {
            c += &format!("    {r}\n");
        }
        c + "  }\n"
    };
    if !pre.is_empty() {
        text += &chain("notrack_in", "prerouting", &pre);
        text += &chain("notrack_out", "output", &out);
    }
    if !plan.subnets.is_empty() {
        let set: Vec<String> = plan
            .subnets
            .iter()
            .map(|(a, l)| format!("{a}/{l}"))
            .collect();
        text += &format!(
            "  chain egress {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{tun}\" return\n    ip saddr {{ {} }} masquerade\n  }}\n",
            set.join(", ")
        );
    }
    text + "}\n"
}

impl Drop for HostRouting {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nftables_script_masquerades_egress_and_leaves_ingress_untracked() {
        let mut plan = HostPlan::default();
        let adv = Ipv4Addr::new(192, 168, 100, 116);
        let empty = nft_ruleset("mesh-ingress", adv, &plan);
        assert_eq!(empty, "add table ip mesh\ndelete table ip mesh\n");
        plan.subnets.insert((Ipv4Addr::new(10, 0, 0, 0), 24));
        plan.published.insert(PublishedPort {
            protocol: "tcp",
            port: 8000,
        });
        plan.published.insert(PublishedPort {
            protocol: "tcp",
            port: 7001,
        });
        let s = nft_ruleset("mesh-ingress", adv, &plan);
        assert!(s.contains(
            "ip daddr { 192.168.100.116, 127.0.0.0/8 } tcp dport { 7001, 8000 } notrack"
        ));
        assert!(s.contains(
            "iifname \"mesh-ingress\" ip saddr { 192.168.100.116, 127.0.0.0/8 } tcp sport { 7001, 8000 } notrack"
        ));
        assert!(!s.contains("udp"), "no UDP port published, no empty set");
        assert!(s.contains("ip saddr { 10.0.0.0/24 } masquerade"));
        assert!(s.contains("hook output priority raw"));
        assert!(
            !s.contains("udp dport 4789"),
            "no port given, none untracked"
        );
        plan.vxlan_port = 4789;
        let s = nft_ruleset("mesh-ingress", adv, &plan);
        assert_eq!(s.matches("udp dport 4789 notrack").count(), 2);
    }
}
