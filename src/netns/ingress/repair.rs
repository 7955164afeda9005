//! Putting back what something else took away. The agent's rules live in
//! the host's own rule list, beside everyone else's: a network manager
//! restarting (systemd-networkd removes every rule it did not make, unless
//! told otherwise) can delete them, including the `local` rule moved to
//! [`PREF_LOCAL`], which leaves the host with no local delivery at all.
//! Once a second the agent lists the rules and its table's route, and puts
//! back what is missing.

use super::{error_rule, ip_batch, HostPlan, HostRouting, PREF_LOCAL, TABLE};
use std::process::Command;

/// What the agent looks for in `ip rule show` and `ip route show table`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Found {
    /// Rules that look up `local`.
    pub local: usize,
    /// Rules that look up [`TABLE`].
    pub ours: usize,
    /// Whether [`TABLE`] has its default route.
    pub route: bool,
}

/// Reads the output of `ip rule show` followed by `ip route show table TABLE`.
pub(super) fn found(text: &str) -> Found {
    let table = TABLE.to_string();
    let mut f = Found::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"default") {
            f.route = true;
            continue;
        }
        match words.iter().position(|w| *w == "lookup") {
            Some(i) if words.get(i + 1) == Some(&"local") => f.local += 1,
            Some(i) if words.get(i + 1) == Some(&table.as_str()) => f.ours += 1,
            _ => {}
        }
    }
    f
}

impl HostRouting {
    /// Puts back the rules and the route of the plan applied, and the
    /// `local` rule, if any went missing.
    pub fn repair(&mut self) {
        if !self.active {
            return;
        }
        let listed = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    use std::io::Write;
                    stdin.write_all(format!("rule show\nroute show table {TABLE}\n").as_bytes())?;
                }
                child.wait_with_output()
            });
        let Ok(out) = listed else {
            return;
        };
        let f = found(&String::from_utf8_lossy(&out.stdout));
        let want = self.applied.steered().len() + self.applied.subnets.len() + 1;
        if f.local > 0 && f.ours == want && f.route {
            return;
        }
        tracing::warn!(
            local_rules = f.local,
            rules = f.ours,
            expected = want,
            route = f.route,
            "the ingress rules were changed by something else (a network manager restarting?): putting them back"
        );
        let mut cmds = vec![];
        if f.local == 0 {
            // Marked as the kernel's, which network managers leave alone.
            cmds.push(format!(
                "rule add pref {PREF_LOCAL} lookup local protocol kernel"
            ));
        }
        cmds.push(format!(
            "route replace default dev {} table {TABLE}",
            self.tun
        ));
        if f.ours != want {
            Self::remove_stale_rules();
            cmds.push(error_rule("add"));
            cmds.extend(Self::rule_changes(&HostPlan::default(), &self.applied));
        }
        if let Err(e) = ip_batch(&cmds) {
            tracing::warn!(error = %e, "ingress rules not all put back");
        }
    }
}
