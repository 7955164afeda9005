//! The names the embedded DNS answers, built from the cluster view.
//!
//! For every network: each service's name (its VIP, or in dnsrr mode every
//! task's IP), `tasks.SERVICE` (every task's IP), each container's name and
//! `NAME.NETWORK`, and the reverse (PTR) name of every container IP and VIP.
//! A container only ever sees the names of the networks it is attached to,
//! searched in the order it attached to them.
//!
//! The table is rebuilt whenever the view changes and swapped whole; lookups
//! never lock anything but the swap.

use crate::cluster::model::{EndpointMode, View};
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// What a name means on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ips: Vec<Ipv4Addr>,
    /// Answer in a fresh random order each time (tasks.*, dnsrr services).
    shuffle: bool,
}

#[derive(Debug, Default)]
struct NetworkNames {
    names: HashMap<String, Entry>,
    reverse: HashMap<Ipv4Addr, String>,
}

/// The answer to a forward lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is ours: these addresses (possibly none, e.g. a service with
    /// no task in dnsrr mode).
    Found(Vec<Ipv4Addr>),
    /// Not a name of any network the container is on: forward it.
    NotOurs,
}

/// Every network's names, and which networks each local container is on.
#[derive(Debug, Default)]
pub struct NameTable {
    networks: HashMap<String, NetworkNames>,
    /// Local container netns -> network IDs, in attach order.
    scopes: HashMap<String, Vec<String>>,
}

/// Lower-cases and drops one trailing dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl NameTable {
    /// Builds the table from `view`; `scopes` lists, per local netns, the
    /// networks it is attached to in order.
    pub fn build(view: &View, scopes: HashMap<String, Vec<String>>) -> NameTable {
        let mut t = NameTable {
            networks: HashMap::new(),
            scopes,
        };
        for (id, net) in &view.networks {
            let mut n = NetworkNames::default();
            for c in view.containers.iter().filter(|c| &c.network_id == id) {
                let name = normalize(&c.name);
                add(&mut n, &name, c.ip, false);
                add(
                    &mut n,
                    &format!("{name}.{}", normalize(&net.name)),
                    c.ip,
                    false,
                );
                n.reverse
                    .insert(c.ip, format!("{name}.{}", normalize(&net.name)));
            }
            for s in view.services.values().filter(|s| s.networks.contains(id)) {
                let name = normalize(&s.name);
                // A draining task takes no new clients: it leaves the
                // service's names first (its own name stays).
                let tasks: Vec<Ipv4Addr> = view
                    .tasks(&s.id)
                    .filter(|c| &c.network_id == id && !c.draining)
                    .map(|c| c.ip)
                    .collect();
                n.names.insert(
                    format!("tasks.{name}"),
                    Entry {
                        ips: tasks.clone(),
                        shuffle: true,
                    },
                );
                match (s.endpoint_mode, s.vips.get(id)) {
                    (EndpointMode::Vip, Some(vip)) => {
                        n.names.insert(
                            name.clone(),
                            Entry {
                                ips: vec![*vip],
                                shuffle: false,
                            },
                        );
                        n.reverse.insert(*vip, name);
                    }
                    _ => {
                        n.names.insert(
                            name,
                            Entry {
                                ips: tasks,
                                shuffle: true,
                            },
                        );
                    }
                }
            }
            t.networks.insert(id.clone(), n);
        }
        t
    }

    /// The networks `netns` may resolve names of (none if it is not a local container).
    fn scope<'a>(&'a self, netns: &str) -> impl Iterator<Item = &'a NetworkNames> + 'a {
        self.scopes
            .get(netns)
            .into_iter()
            .flatten()
            .filter_map(|id| self.networks.get(id))
    }

    /// Looks up `name` (any case, trailing dot or not) for the container in `netns`.
    pub fn lookup(&self, netns: &str, name: &str) -> Lookup {
        self.lookup_normalized(netns, &normalize(name))
    }

    /// [`NameTable::lookup`] for a name already lower-case without a trailing dot.
    pub fn lookup_normalized(&self, netns: &str, name: &str) -> Lookup {
        for n in self.scope(netns) {
            if let Some(e) = n.names.get(name) {
                let mut ips = e.ips.clone();
                if e.shuffle {
                    ips.shuffle(&mut rand::thread_rng());
                }
                return Lookup::Found(ips);
            }
        }
        Lookup::NotOurs
    }

    /// The name of `ip` for a PTR query from the container in `netns`.
    pub fn reverse(&self, netns: &str, ip: Ipv4Addr) -> Option<String> {
        self.scope(netns).find_map(|n| n.reverse.get(&ip).cloned())
    }

    /// True if `netns` is a container this table serves.
    pub fn serves(&self, netns: &str) -> bool {
        self.scopes.contains_key(netns)
    }
}

fn add(n: &mut NetworkNames, name: &str, ip: Ipv4Addr, shuffle: bool) {
    let e = n.names.entry(name.to_string()).or_insert(Entry {
        ips: vec![],
        shuffle,
    });
    if !e.ips.contains(&ip) {
        e.ips.push(ip);
    }
}

/// The IPv4 address of a reverse name like `4.3.2.10.in-addr.arpa`.
pub fn parse_reverse(name: &str) -> Option<Ipv4Addr> {
    let name = normalize(name);
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut o = [0u8; 4];
    let mut parts = rest.split('.');
    for i in (0..4).rev() {
        o[i] = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::{ContainerEndpoint, Network, Service};
    use crate::wire::Mac;
    use std::collections::BTreeMap;

    fn net(id: &str, name: &str, third: u8) -> Network {
        Network {
            id: id.into(),
            name: name.into(),
            driver: "overlay".into(),
            vni: 4096 + u32::from(third),
            subnet: format!("10.0.{third}.0/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, third, 1),
        }
    }

    fn container(net: &str, ip: Ipv4Addr, name: &str, service: Option<&str>) -> ContainerEndpoint {
        ContainerEndpoint {
            network_id: net.into(),
            ip,
            mac: Mac::for_ip(ip),
            name: name.into(),
            netns: name.into(),
            node_id: "a".into(),
            service: service.map(Into::into),
            weight: 1,
            draining: false,
        }
    }

    /// Network "front" (10.0.1.0/24): client, web (vip 10.0.1.2) with two
    /// tasks, db in dnsrr mode with one. Network "back" (10.0.2.0/24): secret.
    fn view() -> View {
        let mut v = View::default();
        v.networks.insert("f".into(), net("f", "front", 1));
        v.networks.insert("b".into(), net("b", "back", 2));
        let ip = |n: u8, h: u8| Ipv4Addr::new(10, 0, n, h);
        v.services.insert(
            "w".into(),
            Service {
                id: "w".into(),
                name: "Web".into(),
                networks: vec!["f".into()],
                endpoint_mode: EndpointMode::Vip,
                scheduler: "rr".into(),
                ports: vec![],
                vips: BTreeMap::from([("f".to_string(), ip(1, 2))]),
            },
        );
        v.services.insert(
            "d".into(),
            Service {
                id: "d".into(),
                name: "db".into(),
                networks: vec!["f".into()],
                endpoint_mode: EndpointMode::Dnsrr,
                scheduler: "rr".into(),
                ports: vec![],
                vips: BTreeMap::new(),
            },
        );
        v.containers = vec![
            container("f", ip(1, 3), "client", None),
            container("f", ip(1, 4), "web.1", Some("w")),
            container("f", ip(1, 5), "web.2", Some("w")),
            container("f", ip(1, 6), "db.1", Some("d")),
            container("b", ip(2, 3), "secret", None),
        ];
        v
    }

    fn table() -> NameTable {
        NameTable::build(
            &view(),
            HashMap::from([
                ("client".to_string(), vec!["f".to_string()]),
                ("secret".to_string(), vec!["b".to_string()]),
            ]),
        )
    }

    fn sorted(l: Lookup) -> Vec<Ipv4Addr> {
        match l {
            Lookup::Found(mut v) => {
                v.sort();
                v
            }
            Lookup::NotOurs => panic!("not found"),
        }
    }

    #[test]
    fn services_tasks_and_containers_resolve_in_any_case() {
        let t = table();
        assert_eq!(
            sorted(t.lookup("client", "web")),
            vec![Ipv4Addr::new(10, 0, 1, 2)]
        );
        assert_eq!(
            sorted(t.lookup("client", "WEB.")),
            vec![Ipv4Addr::new(10, 0, 1, 2)]
        );
        assert_eq!(
            sorted(t.lookup("client", "tasks.web")),
            vec![Ipv4Addr::new(10, 0, 1, 4), Ipv4Addr::new(10, 0, 1, 5)]
        );
        assert_eq!(
            sorted(t.lookup("client", "db")),
            vec![Ipv4Addr::new(10, 0, 1, 6)],
            "dnsrr: the tasks"
        );
        assert_eq!(
            sorted(t.lookup("client", "web.1")),
            vec![Ipv4Addr::new(10, 0, 1, 4)]
        );
        assert_eq!(
            sorted(t.lookup("client", "web.1.front")),
            vec![Ipv4Addr::new(10, 0, 1, 4)]
        );
        assert_eq!(t.lookup("client", "example.com"), Lookup::NotOurs);
    }

    #[test]
    fn names_are_scoped_to_the_asking_containers_networks() {
        let t = table();
        assert_eq!(t.lookup("client", "secret"), Lookup::NotOurs);
        assert_eq!(t.lookup("secret", "web"), Lookup::NotOurs);
        assert_eq!(
            sorted(t.lookup("secret", "secret")),
            vec![Ipv4Addr::new(10, 0, 2, 3)]
        );
        assert_eq!(t.lookup("stranger", "web"), Lookup::NotOurs);
        assert!(t.reverse("secret", Ipv4Addr::new(10, 0, 1, 4)).is_none());
    }

    #[test]
    fn reverse_names_for_tasks_containers_and_vips() {
        let t = table();
        assert_eq!(
            t.reverse("client", Ipv4Addr::new(10, 0, 1, 2)).as_deref(),
            Some("web")
        );
        assert_eq!(
            t.reverse("client", Ipv4Addr::new(10, 0, 1, 5)).as_deref(),
            Some("web.2.front")
        );
        assert_eq!(
            parse_reverse("5.1.0.10.in-addr.arpa."),
            Some(Ipv4Addr::new(10, 0, 1, 5))
        );
        for bad in [
            "1.0.10.in-addr.arpa",
            "x.1.0.10.in-addr.arpa",
            "5.1.0.10.ip6.arpa",
            "1.5.1.0.10.in-addr.arpa",
        ] {
            assert_eq!(parse_reverse(bad), None, "{bad}");
        }
    }

    #[test]
    fn tasks_come_back_in_changing_orders() {
        let mut v = view();
        for h in 10..20u8 {
            v.containers.push(container(
                "f",
                Ipv4Addr::new(10, 0, 1, h),
                &format!("web.{h}"),
                Some("w"),
            ));
        }
        let t = NameTable::build(
            &v,
            HashMap::from([("client".to_string(), vec!["f".to_string()])]),
        );
        let orders: std::collections::HashSet<Vec<Ipv4Addr>> = (0..20)
            .map(|_| match t.lookup("client", "tasks.web") {
                Lookup::Found(v) => v,
                Lookup::NotOurs => vec![],
            })
            .collect();
        assert!(
            orders.len() > 1,
            "12 tasks shuffled 20 times gave one order"
        );
    }
}
