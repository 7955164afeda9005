//! The host's sysctls that the agent changes, as it found them, kept in the
//! state directory until it stops (a killed agent's successor puts back the
//! host's values, not the killed one's); and the published ports in
//! `ip_local_reserved_ports`, of which the agent takes out only its own.

use super::{sysctl, HostPlan, HostRouting, NetnsError, FORWARD, RESERVED_PORTS};
use std::collections::BTreeSet;
use std::path::Path;

/// The host's values of the sysctls the agent changes, as it found them.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SysctlsBefore {
    /// The boot they were read in.
    pub boot_id: Option<String>,
    pub ip_forward: Option<String>,
    pub ip_local_reserved_ports: Option<String>,
    /// The ports the agent added to `ip_local_reserved_ports` (the rest of
    /// the list is others'), kept up to date as they change. None in a file
    /// from an agent that did not keep them.
    #[serde(default)]
    pub reserved_ours: Option<BTreeSet<u16>>,
}

impl SysctlsBefore {
    /// The values kept in `saved` by an agent earlier in this boot (one
    /// that was killed left its changed values behind, and they must not be
    /// taken for the host's), or else the values now, kept there from now on.
    pub(super) fn load(saved: &Path) -> SysctlsBefore {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
        };
        // Kept values are good until the host reboots (which resets them).
        let boot_id = read("/proc/sys/kernel/random/boot_id");
        let kept = std::fs::read(saved)
            .ok()
            .and_then(|b| serde_json::from_slice::<SysctlsBefore>(&b).ok())
            .filter(|b| b.boot_id == boot_id);
        if let Some(b) = kept {
            tracing::info!(file = %saved.display(), "restoring the host's sysctls as a previous agent found them");
            return b;
        }
        let b = SysctlsBefore {
            boot_id,
            ip_forward: read(FORWARD),
            ip_local_reserved_ports: read(RESERVED_PORTS),
            reserved_ours: Some(BTreeSet::new()),
        };
        keep(saved, &b);
        b
    }

    /// The ports the agent added: as kept, or for a file that does not say,
    /// those in the list now that were not in it before.
    pub(super) fn ours(&self) -> BTreeSet<u16> {
        match &self.reserved_ours {
            Some(ours) => ours.clone(),
            None => {
                let now = std::fs::read_to_string(RESERVED_PORTS).unwrap_or_default();
                let before = self.ip_local_reserved_ports.as_deref().unwrap_or("");
                port_list(&now)
                    .difference(&port_list(before))
                    .copied()
                    .collect()
            }
        }
    }
}

/// Keeps the host's sysctls as found (and the ports the agent reserved) in
/// `saved`, for the next agent should this one be killed.
pub(super) fn keep(saved: &Path, before: &SysctlsBefore) {
    let json = serde_json::to_vec(before).unwrap_or_default();
    // Whole or not at all: written aside, then renamed over the old one.
    let aside = saved.with_extension("new");
    let written = std::fs::write(&aside, json).and_then(|()| std::fs::rename(&aside, saved));
    if let Err(e) = written {
        tracing::warn!(file = %saved.display(), error = %e,
            "cannot keep the host's sysctls: after a crash they would not be restored");
    }
}

/// The ports in a list as `ip_local_reserved_ports` shows it: `7001,9001-9002`.
pub fn port_list(text: &str) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for item in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        if let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
            ports.extend(lo..=hi);
        }
    }
    ports
}

/// `ports` written as `ip_local_reserved_ports` takes them (runs as ranges);
/// a newline for none (the kernel refuses an empty write).
pub fn port_list_text(ports: &BTreeSet<u16>) -> String {
    let item = |(lo, hi): (u16, u16)| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    };
    let mut items: Vec<String> = vec![];
    let mut run: Option<(u16, u16)> = None;
    for &p in ports {
        run = match run {
            Some((lo, hi)) if hi.checked_add(1) == Some(p) => Some((lo, p)),
            Some(done) => {
                items.push(item(done));
                Some((p, p))
            }
            None => Some((p, p)),
        };
    }
    items.extend(run.map(item));
    if items.is_empty() {
        "\n".into()
    } else {
        items.join(",")
    }
}

impl HostRouting {
    /// Keeps the host's own sockets off the published ports as ephemeral
    /// ports: adds them to the host's list, and takes out those it added
    /// before that are no longer published. Ports others put there (before
    /// the agent started, or since) stay.
    pub(super) fn reserve_ports(&mut self, plan: &HostPlan) -> Result<(), NetnsError> {
        if self.before.ip_local_reserved_ports.is_none() {
            return Ok(());
        }
        let current = std::fs::read_to_string(RESERVED_PORTS)
            .map_err(|e| NetnsError::Config(format!("cannot read {RESERVED_PORTS}: {e}")))?;
        let ours = self.before.ours();
        let others: BTreeSet<u16> = port_list(&current).difference(&ours).copied().collect();
        let want: BTreeSet<u16> = plan.published.iter().map(|p| p.port).collect();
        let new_ours: BTreeSet<u16> = want.difference(&others).copied().collect();
        // Kept first as both old and new: killed between the two writes,
        // the next agent still takes out every port this one may have put in.
        self.before.reserved_ours = Some(ours.union(&new_ours).copied().collect());
        keep(&self.saved, &self.before);
        let all: BTreeSet<u16> = others.union(&want).copied().collect();
        sysctl(RESERVED_PORTS, &port_list_text(&all))?;
        self.before.reserved_ours = Some(new_ours);
        keep(&self.saved, &self.before);
        Ok(())
    }
}
