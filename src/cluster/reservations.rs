//! Addresses the leader has promised to attaches still in flight: between
//! `ReserveIp` and the container showing in the view, no one else may get
//! them. A promise ends when the container shows, when its attach fails and
//! gives it back (`ReleaseIp`), or after [`TTL`] (an agent that died
//! mid-attach).
//!
//! Each promise names its owner (a random word per attach), and only the
//! owner can give it back. An attach slower than the TTL, or one whose
//! leader changed meanwhile, may find its address promised to someone else
//! by then; its release must not take that promise away.

use super::model::View;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How long an address stays promised if the container never shows up.
pub const TTL: Duration = Duration::from_secs(30);

/// How long a promise holds its container's name: an attach gets from
/// its promise to its container in the view well within this. Past it, the
/// view speaks for the name (a container attached and detached again at
/// once would otherwise hold it for the whole [`TTL`]).
pub const NAME_HOLD: Duration = Duration::from_secs(2);

/// One promise: when, to whom, and for which container (name, node).
#[derive(Debug)]
struct Held {
    at: Instant,
    owner: String,
    name: Option<(String, String)>,
}

#[derive(Debug, Default)]
pub struct Reservations {
    held: HashMap<(String, Ipv4Addr), Held>,
}

impl Reservations {
    /// Forgets promises older than [`TTL`] and those whose container
    /// now shows in `view`.
    pub fn prune(&mut self, view: &View, now: Instant) {
        self.held.retain(|(net, ip), h| {
            now.duration_since(h.at) < TTL
                && !view
                    .containers
                    .iter()
                    .any(|c| &c.network_id == net && c.ip == *ip)
        });
    }

    /// The addresses promised, per network ID.
    pub fn taken(&self) -> HashSet<(String, Ipv4Addr)> {
        self.held.keys().cloned().collect()
    }

    /// Promises `ip` on `network_id` to `owner`'s attach, of the container
    /// `named` (its name, and the node attaching it) if given.
    pub fn hold(
        &mut self,
        network_id: &str,
        ip: Ipv4Addr,
        owner: &str,
        named: Option<(&str, &str)>,
        now: Instant,
    ) {
        let held = Held {
            at: now,
            owner: owner.to_string(),
            name: named.map(|(n, node)| (n.to_string(), node.to_string())),
        };
        self.held.insert((network_id.to_string(), ip), held);
    }

    /// Whether an attach on another node than `node`, under way, was
    /// promised an address on `network_id` for a container named `name`
    /// (within [`NAME_HOLD`]). A node's own attaches are its own to order.
    pub fn name_held(&self, network_id: &str, name: &str, node: &str, now: Instant) -> bool {
        self.held.iter().any(|((net, _), h)| {
            net == network_id
                && now.saturating_duration_since(h.at) < NAME_HOLD
                && h.name
                    .as_ref()
                    .is_some_and(|(n, by)| by != node && n.eq_ignore_ascii_case(name))
        })
    }

    /// Gives back `owner`'s promise of `ip`; false if it holds none.
    pub fn release(&mut self, network_id: &str, ip: Ipv4Addr, owner: &str) -> bool {
        let key = (network_id.to_string(), ip);
        if self.held.get(&key).is_some_and(|h| h.owner == owner) {
            self.held.remove(&key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_gives_a_promise_back() {
        let (view, t0, ip) = (View::default(), Instant::now(), Ipv4Addr::new(10, 0, 0, 5));
        let mut r = Reservations::default();
        r.hold("n1", ip, "attach-a", Some(("web", "node-a")), t0);
        assert!(r.taken().contains(&("n1".to_string(), ip)));
        // A's attach stalls past the TTL: its promise lapses, B gets the address.
        r.prune(&view, t0 + TTL + Duration::from_secs(1));
        assert!(r.taken().is_empty());
        r.hold(
            "n1",
            ip,
            "attach-b",
            None,
            t0 + TTL + Duration::from_secs(1),
        );
        // A fails and gives back "its" address: B's promise stays.
        assert!(!r.release("n1", ip, "attach-a"));
        assert!(r.taken().contains(&("n1".to_string(), ip)));
        assert!(!r.release("n2", ip, "attach-b"));
        assert!(r.release("n1", ip, "attach-b"));
        assert!(r.taken().is_empty());
    }

    #[test]
    fn a_name_promised_to_one_attach_is_held_from_other_nodes_a_while() {
        let (t0, ip) = (Instant::now(), Ipv4Addr::new(10, 0, 0, 5));
        let mut r = Reservations::default();
        r.hold("n1", ip, "attach-a", Some(("web", "node-a")), t0);
        assert!(
            r.name_held("n1", "WEB", "node-b", t0),
            "names are case-insensitive"
        );
        assert!(
            !r.name_held("n1", "web", "node-a", t0),
            "not from its own node"
        );
        assert!(!r.name_held("n2", "web", "node-b", t0), "per network");
        assert!(!r.name_held("n1", "db", "node-b", t0));
        assert!(
            !r.name_held("n1", "web", "node-b", t0 + NAME_HOLD),
            "past the hold"
        );
        assert!(r.release("n1", ip, "attach-a"));
        assert!(!r.name_held("n1", "web", "node-b", t0));
    }

    #[test]
    fn a_promise_ends_when_its_container_shows() {
        use super::super::model::ContainerEndpoint;
        use crate::wire::Mac;
        let (t0, ip) = (Instant::now(), Ipv4Addr::new(10, 0, 0, 5));
        let mut r = Reservations::default();
        r.hold("n1", ip, "a", None, t0);
        r.hold("n1", Ipv4Addr::new(10, 0, 0, 6), "b", None, t0);
        let mut view = View::default();
        r.prune(&view, t0 + Duration::from_secs(1));
        assert_eq!(r.taken().len(), 2);
        view.containers.push(ContainerEndpoint {
            network_id: "n1".into(),
            ip,
            mac: Mac::for_ip(ip),
            name: "c".into(),
            netns: "c".into(),
            node_id: "x".into(),
            service: None,
            weight: 1,
            draining: false,
        });
        r.prune(&view, t0 + Duration::from_secs(1));
        assert_eq!(
            r.taken(),
            HashSet::from([("n1".to_string(), Ipv4Addr::new(10, 0, 0, 6))])
        );
    }
}
