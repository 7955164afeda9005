//! Putting back what something else took away. The agent's rules live in
//! the host's own rule list, beside everyone else's: a network manager
//! restarting (systemd-networkd removes every rule it did not make, unless
//! told otherwise) can delete them, including the `local` rule moved to
//! [`PREF_LOCAL`], which leaves the host with no local delivery at all.
//! Once a second the agent lists the rules and its table's route, and puts
//! back what is missing.

use super::{
    error_rule, ip_batch, local_rule, run_script, HostPlan, HostRouting, PREF_LOCAL, TABLE,
};

/// What the agent looks for in `ip rule show` and `ip route show table`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Found {
    /// A `local` rule at [`PREF_LOCAL`], where the agent moved it.
    pub local_moved: bool,
    /// A `local` rule at 0, ahead of the published ports' rules.
    pub local_first: bool,
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
        let pref = words
            .first()
            .and_then(|w| w.strip_suffix(':'))
            .and_then(|p| p.parse::<u32>().ok());
        match words.iter().position(|w| *w == "lookup") {
            Some(i) if words.get(i + 1) == Some(&"local") => match pref {
                Some(0) => f.local_first = true,
                Some(PREF_LOCAL) => f.local_moved = true,
                _ => {}
            },
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
        let listing = format!("rule show\nroute show table {TABLE}\n");
        let Ok(listed) = run_script(
            "ip",
            &["-force", "-batch", "-"],
            &listing,
            "listing the ingress rules",
        ) else {
            return;
        };
        let f = found(&listed);
        let want = self.applied.steered().len() + self.applied.subnets.len() + 1;
        if f.local_moved && !f.local_first && f.ours == want && f.route {
            self.unrepaired = None;
            return;
        }
        // The same as after the last repair: that one could not help (a
        // rule the kernel refuses), and neither would this one.
        if self.unrepaired.as_ref() == Some(&f) {
            return;
        }
        tracing::warn!(
            local_rule_moved = f.local_moved,
            local_rule_first = f.local_first,
            rules = f.ours,
            expected = want,
            route = f.route,
            "the ingress rules were changed by something else (a network manager restarting?): putting them back"
        );
        let mut cmds = vec![];
        if !f.local_moved {
            cmds.push(local_rule("add", PREF_LOCAL));
        }
        if f.local_first {
            cmds.push(local_rule("del", 0));
        }
        cmds.push(format!(
            "route replace default dev {} table {TABLE}",
            self.tun
        ));
        if f.ours != want {
            // Every rule of the plan again; those still there say so and
            // stay (the batch goes on), no rule is ever missing meanwhile.
            cmds.push(error_rule("add"));
            cmds.extend(Self::rule_changes(&HostPlan::default(), &self.applied));
        }
        if let Err(e) = ip_batch(&cmds) {
            tracing::debug!(error = %e, "ingress rules not all put back");
        }
        self.unrepaired = Some(f);
    }
}
