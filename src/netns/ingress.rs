//! How host traffic reaches the agent: the ingress TUN and policy routing.
//!
//! The choice: no netfilter on the ingress path itself. The host's routing
//! already picks packets by protocol and destination port (`ip rule ...
//! ipproto tcp dport 8000`), so a rule per published port sends them to a
//! routing table whose only route is the TUN; the `local` rule moves from
//! priority 0 to 1000 so that these rules are looked at before the host
//! delivers to itself. What this buys:
//! - the packet reaches the agent untouched: the client's address and port
//!   are intact (no DNAT or SNAT by the kernel), which is what lets the task
//!   see the real client;
//! - the task's replies, written back to the TUN with the published address
//!   as source, pass the kernel's source check through the same rule (the
//!   reverse lookup of that address and port leads to the TUN), and leave
//!   as any forwarded packet does;
//! - it works with no iptables at all, and undoing it is deleting rules.
//!
//! The rules match the destination as well as the port: a bare `dport 80`
//! rule would also catch the host's own connections to port 80 elsewhere.
//! The destinations are every IPv4 address of the host (as Swarm publishes
//! on 0.0.0.0: ADVERTISE_ADDR, 127.0.0.1, a second NIC's, ...), read again
//! every second so that an address added later serves the ports too and
//! one removed loses its rules. The published ports are also added to
//! `ip_local_reserved_ports`, so that no socket of the host's own takes one
//! as its ephemeral port (its replies would be steered to the TUN).
//!
//! Overlay subnets are routed to the TUN too (replies to egress, the host's
//! own traffic to containers), by rules placed after `local` (the host's own
//! addresses stay its own) and before `main`. A subnet that holds a cluster
//! node's address is not routed (that would cut the node off); the agent
//! skips it with a warning.
//!
//! Egress is where netfilter is used, in one nftables table (`ip mesh`):
//! containers' packets to the outside leave the TUN with their overlay
//! source and are masqueraded (as Swarm's docker_gwbridge does with
//! iptables); the kernel's NAT turns the replies back to the container's
//! address. The same table drops new connections from outside to container
//! addresses (the TUN route would otherwise make every container reachable
//! from the LAN), and marks VXLAN datagrams `notrack`, so that the NAT table
//! does not put every overlay packet through conntrack. Without the `nft`
//! binary there is no egress, and the agent says so.
//!
//! Everything here is undone by [`HostRouting::teardown`] (also on drop, and
//! when setting up fails half-way); rules left by an agent that was killed
//! are removed when the next one starts, and rules removed by something
//! else while the agent runs are put back.
//!
//! Here: the rules and the TUN's routing. Beside it: the nftables table
//! (`nft`), the host's sysctls as found and the reserved ports
//! (`sysctls`), and putting back removed rules (`repair`).

use super::NetnsError;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The routing table whose default route is the ingress TUN.
pub const TABLE: u32 = 4_789_000;
/// Priority of the published-port rules.
pub const PREF_PUBLISHED: u32 = 10;
/// Where the host's `local` rule goes, after the published ports.
pub const PREF_LOCAL: u32 = 1000;
/// Priority of the overlay subnets' rules: after `local`, before `main`.
pub const PREF_SUBNETS: u32 = 1001;
const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// The mark bit nftables sets on ICMP errors from outside about a published
/// port's replies, which a rule steers to the TUN. One bit, set with an OR
/// and matched under its mask, so the other bits of the packet's mark stay
/// what other software (kube-proxy 0x4000/0x8000, Cilium 0x0f00, wg-quick's
/// fwmark) made them, and their rules still match.
pub const ERROR_MARK: u32 = 0x0020_0000;
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
    /// The addresses the published ports answer on: the host's own.
    pub addresses: BTreeSet<Ipv4Addr>,
}

impl HostPlan {
    /// Every (address, port) pair steered to the TUN.
    fn steered(&self) -> BTreeSet<(Ipv4Addr, PublishedPort)> {
        self.addresses
            .iter()
            .flat_map(|a| self.published.iter().map(move |p| (*a, *p)))
            .collect()
    }
}

/// The host's IPv4 addresses (of every interface but `except`, the TUN,
/// whose address is its own business), 127.0.0.1 among them. `None` if the
/// kernel cannot list them now (logged).
pub fn host_addresses(except: &str) -> Option<BTreeSet<Ipv4Addr>> {
    let Some(all) = super::ipv4_addresses() else {
        tracing::warn!(error = %std::io::Error::last_os_error(),
            "cannot list the host's addresses; published ports keep the ones they had");
        return None;
    };
    Some(
        all.into_iter()
            .filter(|a| a.interface != except)
            .map(|a| a.address)
            .collect(),
    )
}

/// The host side of ingress, as set up in the agent's namespace.
pub struct HostRouting {
    tun: String,
    applied: HostPlan,
    /// The host's sysctls as the agent found them (kept in `saved`), put
    /// back by teardown.
    before: SysctlsBefore,
    /// Where those two are kept until teardown.
    saved: PathBuf,
    nft: bool,
    active: bool,
    /// What the last repair found (see `repair`), while the rules are not
    /// as planned.
    unrepaired: Option<repair::Found>,
}

/// Runs `program args` with `script` on its standard input; returns what
/// it printed. An error names `what` and carries the program's own message.
fn run_script(
    program: &str,
    args: &[&str],
    script: &str,
    what: &str,
) -> Result<String, NetnsError> {
    let out = super::command::run(program, args, Some(script), super::command::LIMIT)
        .map_err(|e| NetnsError::Config(format!("cannot run `{program}` for {what}: {e}")))?;
    if !out.status.success() {
        return Err(NetnsError::Config(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` quietly; true if it ran and exited 0.
fn succeeds(program: &str, args: &[&str]) -> bool {
    output(program, args).is_some()
}

/// What `program args` printed, if it ran and exited 0 (in time).
fn output(program: &str, args: &[&str]) -> Option<Vec<u8>> {
    super::command::run(program, args, None, super::command::LIMIT)
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout)
}

/// Runs `ip` commands in one `ip -force -batch` (each is tried).
fn ip_batch(commands: &[String]) -> Result<(), NetnsError> {
    if commands.is_empty() {
        return Ok(());
    }
    let script = commands.join("\n") + "\n";
    run_script(
        "ip",
        &["-force", "-batch", "-"],
        &script,
        "the ingress rules (iproute2)",
    )
    .map(drop)
}

fn sysctl(path: &str, value: &str) -> Result<(), NetnsError> {
    std::fs::write(path, value)
        .map_err(|e| NetnsError::Config(format!("cannot set {path} to {value}: {e}")))
}

fn rule(verb: &str, pref: u32, selector: &str) -> String {
    format!("rule {verb} pref {pref} {selector} lookup {TABLE}")
}

/// The `ip rule` command that adds (`add`) or deletes (`del`) the host's
/// `local` rule at `pref`. Added marked as the kernel's, as the rule the
/// kernel makes: network managers that clear rules they did not make
/// leave it alone.
fn local_rule(verb: &str, pref: u32) -> String {
    let kernel = if verb == "add" {
        " protocol kernel"
    } else {
        ""
    };
    format!("rule {verb} pref {pref} lookup local{kernel}")
}

/// The rule that steers ICMP errors about published ports' replies (marked
/// [`ERROR_MARK`] by the nftables table) to the TUN.
fn error_rule(verb: &str) -> String {
    rule(
        verb,
        PREF_PUBLISHED,
        // ICMP only: a packet of other software's that carries the bit
        // for its own reasons is not taken into the TUN.
        &format!("ipproto icmp fwmark {ERROR_MARK:#x}/{ERROR_MARK:#x}"),
    )
}

impl HostRouting {
    /// Gives the TUN (already created in this namespace) its address and
    /// MTU, routes table [`TABLE`] to it, moves the `local` rule after ours
    /// and turns forwarding on. Removes rules a killed agent left. If a step
    /// fails, what was done is undone.
    ///
    /// The host's own values of the sysctls it changes are kept in `saved`
    /// (in the agent's state directory) until teardown puts them back: an
    /// agent that was killed left its changed values behind, and the next
    /// one must restore the host's, not those.
    pub fn setup(
        tun: &str,
        address: Ipv4Addr,
        mtu: u32,
        saved: &Path,
    ) -> Result<HostRouting, NetnsError> {
        Self::remove_stale();
        let before = SysctlsBefore::load(saved);
        // The guard first: dropping it on an error below undoes the rest.
        let mut r = HostRouting {
            tun: tun.to_string(),
            applied: HostPlan::default(),
            before,
            saved: saved.to_path_buf(),
            nft: false,
            active: true,
            unrepaired: None,
        };
        super::link_set_mtu(tun, mtu)?;
        super::addr_add(tun, address, 32)?;
        super::link_set_up(tun)?;
        let conf = format!("/proc/sys/net/ipv4/conf/{tun}");
        // Loose reverse-path filtering on the TUN: the kernel takes the
        // larger of `all` and the interface's value, so 0 here would still
        // leave a host's strict `all.rp_filter=1` in force, and drop a task's
        // translated ICMP error (from this host's own address, no port).
        sysctl(&format!("{conf}/rp_filter"), "2")?;
        // Replies to `curl 127.0.0.1:PORT` come back from 127.0.0.1.
        sysctl(&format!("{conf}/route_localnet"), "1")?;
        // A task's ICMP error, translated, comes back from this host's own
        // address (TCP and UDP replies pass by the published-port rule,
        // ICMP has no port to match).
        sysctl(&format!("{conf}/accept_local"), "1")?;
        sysctl(FORWARD, "1")?;
        ip_batch(&[
            format!("route replace default dev {tun} table {TABLE}"),
            error_rule("add"),
        ])?;
        // Add the new `local` rule before deleting the old one, so that there
        // is never a moment without it. Either may be done already (an agent
        // was killed before it could put them back): not an error.
        // Marked as the kernel's, as the rule it replaces: network managers
        // that clear rules they did not make leave it alone.
        let moved = ip_batch(&[local_rule("add", PREF_LOCAL), local_rule("del", 0)]);
        if let Err(e) = moved {
            tracing::debug!(error = %e, "local rule already moved");
        }
        r.nft = succeeds("nft", &["--version"]);
        if !r.nft {
            tracing::warn!(
                "`nft` not found: containers get no egress to outside addresses (install nftables)"
            );
        } else if let Some(out) = output("nft", &["-j", "list", "chains"]) {
            for chain in forward_drops(&String::from_utf8_lossy(&out)) {
                tracing::warn!(
                    "nftables chain {chain} drops forwarded packets by default: clients of published \
                     ports from other hosts and containers' egress are forwarded through {tun}; \
                     accept it there (Docker: iptables -I DOCKER-USER -i {tun} -j ACCEPT and \
                     iptables -I DOCKER-USER -o {tun} -j ACCEPT)"
                );
            }
        }
        Ok(r)
    }

    /// True if containers' egress is masqueraded (nftables is there).
    pub fn egress(&self) -> bool {
        self.nft
    }

    /// The addresses the published ports answer on now.
    pub fn addresses(&self) -> &BTreeSet<Ipv4Addr> {
        &self.applied.addresses
    }

    /// Deletes what an agent that was killed left: every rule that points
    /// at [`TABLE`], and the nftables table.
    fn remove_stale() {
        Self::remove_stale_rules();
        succeeds("nft", &["delete", "table", "ip", NFT_TABLE]);
    }

    /// Deletes every rule that points at [`TABLE`], one at a time: `ip rule
    /// del` takes the first match.
    fn remove_stale_rules() {
        for _ in 0..4096 {
            if !succeeds("ip", &["rule", "del", "table", &TABLE.to_string()]) {
                break;
            }
        }
    }

    fn published_rule(verb: &str, (to, p): &(Ipv4Addr, PublishedPort)) -> String {
        rule(
            verb,
            PREF_PUBLISHED,
            &format!("to {to}/32 ipproto {} dport {}", p.protocol, p.port),
        )
    }

    /// Brings the rules in line with `plan` (only the differences).
    pub fn apply(&mut self, plan: &HostPlan) -> Result<(), NetnsError> {
        if !self.active || *plan == self.applied {
            return Ok(());
        }
        let cmds = Self::rule_changes(&self.applied, plan);
        // Recorded as applied even if a command failed: the next plan
        // differs from this one only where the cluster changed, and a rule
        // that failed to go in would fail again the same way. Every step is
        // tried; the first error is returned.
        let was = std::mem::replace(&mut self.applied, plan.clone());
        let rules = ip_batch(&cmds);
        // Neither the reserved ports nor the nftables table depend on the
        // addresses: a change of those alone is the rules only.
        let ports = was.published != plan.published;
        for p in plan.published.difference(&was.published) {
            if super::sockets::port_in_use(p.port, p.protocol == "tcp") {
                tracing::warn!(
                    port = p.port,
                    protocol = p.protocol,
                    "a process of this host listens on a published port: from now on the \
                     service's tasks get its traffic, on every address of the host"
                );
            }
        }
        let reserved = if ports {
            self.reserve_ports(plan)
        } else {
            Ok(())
        };
        let netfilter = ports || was.subnets != plan.subnets || was.vxlan_port != plan.vxlan_port;
        let nft = if self.nft && netfilter {
            self.apply_nft(plan)
        } else {
            Ok(())
        };
        tracing::info!(
            published = plan.published.len(),
            addresses = plan.addresses.len(),
            subnets = plan.subnets.len(),
            "ingress rules updated"
        );
        rules.and(reserved).and(nft)
    }

    /// The `ip rule` commands that take the rules of plan `from` to those
    /// of plan `to`.
    fn rule_changes(from: &HostPlan, to: &HostPlan) -> Vec<String> {
        let mut cmds = vec![];
        let (was, now) = (from.steered(), to.steered());
        cmds.extend(was.difference(&now).map(|s| Self::published_rule("del", s)));
        cmds.extend(now.difference(&was).map(|s| Self::published_rule("add", s)));
        let subnet =
            |verb, (a, l): &(Ipv4Addr, u8)| rule(verb, PREF_SUBNETS, &format!("to {a}/{l}"));
        cmds.extend(
            from.subnets
                .difference(&to.subnets)
                .map(|s| subnet("del", s)),
        );
        cmds.extend(
            to.subnets
                .difference(&from.subnets)
                .map(|s| subnet("add", s)),
        );
        cmds
    }

    /// Replaces the nftables table, in one transaction.
    fn apply_nft(&self, plan: &HostPlan) -> Result<(), NetnsError> {
        run_script(
            "nft",
            &["-f", "-"],
            &nft_ruleset(&self.tun, plan),
            "nftables (egress masquerade)",
        )
        .map(drop)
    }

    /// Undoes everything [`HostRouting::setup`] and [`HostRouting::apply`]
    /// did. Safe to call twice.
    pub fn teardown(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        let mut cmds = Self::rule_changes(&self.applied, &HostPlan::default());
        cmds.push(error_rule("del"));
        cmds.push(local_rule("add", 0));
        cmds.push(local_rule("del", PREF_LOCAL));
        cmds.push(format!("route flush table {TABLE}"));
        if let Err(e) = ip_batch(&cmds) {
            tracing::warn!(error = %e, "ingress rules not all removed");
        }
        if self.nft {
            succeeds("nft", &["delete", "table", "ip", NFT_TABLE]);
        }
        if let Some(v) = &self.before.ip_forward {
            match other_forwarder().filter(|_| v.trim() == "0") {
                Some(who) => tracing::info!(
                    "left forwarding on (net.ipv4.ip_forward=1, it was 0 before the agent): \
                     {who} NATs forwarded traffic, turning it off would cut it"
                ),
                None => {
                    let _ = sysctl(FORWARD, v);
                }
            }
        }
        // Nothing published: the agent's own reserved ports go.
        let _ = self.reserve_ports(&HostPlan::default());
        let _ = std::fs::remove_file(&self.saved);
        tracing::info!("ingress rules removed");
    }
}

impl Drop for HostRouting {
    fn drop(&mut self) {
        self.teardown();
    }
}

mod nft;
mod repair;
mod sysctls;
#[cfg(test)]
mod tests;

use nft::other_forwarder;
pub use nft::{forward_drops, nat_elsewhere, nft_ruleset};
use sysctls::SysctlsBefore;
pub use sysctls::{port_list, port_list_text};
