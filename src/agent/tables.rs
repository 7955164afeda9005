//! The dataplane tables for a view: every network's endpoints, local ones
//! behind their TAP ports, remote ones behind their host's VTEP, static ones
//! behind theirs, and the VTEPs allowed to send us VXLAN.

use super::Attachment;
use crate::cluster::model::{Protocol, View};
use crate::pipeline::lb::stats::StatsRegistry;
use crate::pipeline::lb::Backend;
use crate::tables::{
    Endpoint, Location, NetworkTable, Peer, Port, PortId, Published, Tables, VipTable,
};
use crate::wire::ipv4;
use crate::wire::vxlan::Vni;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;

/// The dataplane tables for `view`, with this host's ports.
pub fn build_tables(
    view: &View,
    local: &BTreeMap<PortId, Attachment>,
    self_id: &str,
    vxlan_port: u16,
    stats: &StatsRegistry,
) -> Tables {
    let mut t = Tables::default();
    let mut vni_of = BTreeMap::new();
    for net in view.networks.values() {
        let Some(vni) = Vni::new(net.vni) else {
            continue;
        };
        vni_of.insert(net.id.as_str(), vni);
        t.networks.insert(vni, NetworkTable::new(vni, net.gateway));
    }
    // Hosts whose addresses end alike share a door (it keeps the last two
    // octets): such a door leads to none of them.
    let door = |n: &crate::cluster::model::NodeView| super::host::ingress_address(n.record.address);
    let mut doors: HashMap<std::net::Ipv4Addr, usize> = HashMap::new();
    for node in view.nodes.iter().filter(|n| n.ready) {
        *doors.entry(door(node)).or_default() += 1;
    }
    for node in view.nodes.iter().filter(|n| n.ready && n.id != self_id) {
        let (address, port) = (node.record.address, node.record.vxlan_port);
        t.peers.insert(address, Peer { port, agent: true });
        let door = door(node);
        if doors.get(&door) == Some(&1) {
            t.host_doors.insert(door, SocketAddrV4::new(address, port));
        }
    }
    for c in &view.containers {
        let Some(vni) = vni_of.get(c.network_id.as_str()) else {
            continue;
        };
        let location = if c.node_id == self_id {
            match local
                .values()
                .find(|a| a.network_id == c.network_id && a.ip == c.ip)
            {
                Some(a) => Location::Local(a.port),
                None => continue,
            }
        } else {
            match view.node(&c.node_id) {
                Some(n) => {
                    Location::Remote(SocketAddrV4::new(n.record.address, n.record.vxlan_port))
                }
                None => continue,
            }
        };
        if let Some(net) = t.networks.get_mut(vni) {
            net.insert(Endpoint {
                ip: c.ip,
                mac: c.mac,
                location,
            });
        }
    }
    for s in &view.statics {
        let Some(vni) = vni_of.get(s.network_id.as_str()) else {
            continue;
        };
        t.peers.entry(s.vtep).or_insert(Peer {
            port: vxlan_port,
            agent: false,
        });
        if let Some(net) = t.networks.get_mut(vni) {
            net.insert(Endpoint {
                ip: s.ip,
                mac: s.mac,
                location: Location::Remote(SocketAddrV4::new(s.vtep, vxlan_port)),
            });
        }
    }
    // Service VIPs: every task of the service on that network, sorted by
    // address so every host hands the schedulers the same list.
    for s in view.services.values() {
        let mut idx_of = BTreeMap::new();
        for (net_id, vip) in &s.vips {
            let Some(vni) = vni_of.get(net_id.as_str()) else {
                continue;
            };
            let mut backends: Vec<Backend> = view
                .tasks(&s.id)
                .filter(|c| &c.network_id == net_id && !c.draining)
                .map(|c| Backend {
                    ip: c.ip,
                    weight: c.weight.max(1),
                })
                .collect();
            backends.sort_by_key(|b| b.ip);
            let idx = t.vips.len();
            let backend_stats = backends.iter().map(|b| stats.backend(*vip, b.ip)).collect();
            t.vips.push(VipTable {
                service: s.name.clone(),
                vip: *vip,
                vni: *vni,
                scheduler: s.scheduler.clone(),
                backends,
                stats: stats.vip(*vip),
                backend_stats,
            });
            if let Some(net) = t.networks.get_mut(vni) {
                net.vips.insert(*vip, idx);
            }
            idx_of.insert(net_id.as_str(), idx);
        }
        // Published ports are served by every task of the service, on
        // whichever of its networks it is attached (as Swarm's ingress
        // network reaches every task). One network: its VIP's table. More:
        // a table of its own over all of them.
        let Some(first) = s
            .networks
            .iter()
            .find_map(|n| idx_of.get(n.as_str()).copied())
        else {
            continue;
        };
        if s.ports.is_empty() {
            continue;
        }
        let served_by = if s.networks.len() > 1 {
            let pool = ingress_pool(view, s, &vni_of, stats, &t.vips[first]);
            t.vips.push(pool);
            t.vips.len() - 1
        } else {
            first
        };
        for p in &s.ports {
            let proto = match p.protocol {
                Protocol::Tcp => ipv4::protocol::TCP,
                Protocol::Udp => ipv4::protocol::UDP,
            };
            t.published.insert(
                (proto, p.published),
                Published {
                    vip: served_by,
                    target: p.target,
                },
            );
        }
    }
    // Local ports go in last: our own attachments are the truth for this host,
    // even before gossip shows them back to us.
    for a in local.values() {
        let Some(vni) = vni_of.get(a.network_id.as_str()) else {
            continue;
        };
        t.ports.insert(
            a.port,
            Port {
                vni: *vni,
                ip: a.ip,
                mac: a.mac,
            },
        );
        if let Some(net) = t.networks.get_mut(vni) {
            net.insert(Endpoint {
                ip: a.ip,
                mac: a.mac,
                location: Location::Local(a.port),
            });
        }
    }
    // A container on several networks: each port gets its other ports'
    // addresses (grouped by namespace, not compared pairwise).
    let mut by_netns: HashMap<&str, Vec<&Attachment>> = HashMap::new();
    for a in local.values() {
        by_netns.entry(a.netns.as_str()).or_default().push(a);
    }
    for ports in by_netns.values().filter(|p| p.len() > 1) {
        for a in ports {
            let others = ports.iter().filter(|b| b.port != a.port).map(|b| b.ip);
            t.sibling_ips.insert(a.port, others.collect());
        }
    }
    for (vni, net) in &t.networks {
        for ip in net.by_ip.keys() {
            t.routed.insert(*ip, *vni);
        }
    }
    t
}

/// The tasks behind the published ports of `s`, a service on several
/// networks: each task once (a container attached on several of the
/// service's networks is reached through the first of them), sorted by
/// address. The pipeline finds each task's network by its address. Ingress
/// counts go to the first known network's VIP (`first`) and to each task's
/// own counters (under its own network's VIP).
fn ingress_pool(
    view: &View,
    s: &crate::cluster::model::Service,
    vni_of: &BTreeMap<&str, Vni>,
    stats: &StatsRegistry,
    first: &VipTable,
) -> VipTable {
    let mut seen = std::collections::HashSet::new();
    let mut pairs = Vec::new();
    for net_id in &s.networks {
        let Some(vip) = s.vips.get(net_id) else {
            continue;
        };
        if !vni_of.contains_key(net_id.as_str()) {
            continue;
        }
        for c in view
            .tasks(&s.id)
            .filter(|c| &c.network_id == net_id && !c.draining)
        {
            if seen.insert(c.container()) {
                let backend = Backend {
                    ip: c.ip,
                    weight: c.weight.max(1),
                };
                pairs.push((backend, stats.backend(*vip, c.ip)));
            }
        }
    }
    pairs.sort_by_key(|(b, _)| b.ip);
    let (backends, backend_stats) = pairs.into_iter().unzip();
    VipTable {
        service: s.name.clone(),
        vip: first.vip,
        vni: first.vni,
        scheduler: s.scheduler.clone(),
        backends,
        stats: first.stats.clone(),
        backend_stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::ContainerEndpoint;
    use crate::cluster::model::{Network, NodeRecord, NodeView, PortSpec, Service, StaticEndpoint};
    use crate::wire::Mac;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    #[test]
    fn tables_place_endpoints_locally_remotely_and_behind_static_vteps() {
        let mut view = View {
            self_id: "a".into(),
            ..View::default()
        };
        for (id, last, ready) in [("a", 116, true), ("b", 117, true), ("c", 118, false)] {
            view.nodes.push(NodeView {
                id: id.into(),
                record: NodeRecord {
                    hostname: "h".into(),
                    address: Ipv4Addr::new(192, 168, 100, last),
                    vxlan_port: 4789,
                    gossip_port: 7946,
                    synced: true,
                    underlay_prefix: 24,
                },
                ready,
            });
        }
        view.networks
            .insert("n".into(), Network::for_tests("n", "demo", 4096));
        let ep = |last: u8, node: &str| ContainerEndpoint {
            network_id: "n".into(),
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: Mac::for_ip(Ipv4Addr::new(10, 0, 0, last)),
            name: "c".into(),
            netns: "c".into(),
            node_id: node.into(),
            service: None,
            weight: 1,
            draining: false,
        };
        view.containers = vec![ep(2, "a"), ep(3, "b")];
        view.statics.push(StaticEndpoint {
            network_id: "n".into(),
            ip: Ipv4Addr::new(10, 0, 0, 200),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            vtep: Ipv4Addr::new(192, 168, 100, 120),
        });
        let mut local = BTreeMap::new();
        local.insert(
            1,
            Attachment {
                port: 1,
                netns: "c1".into(),
                network_id: "n".into(),
                ip: Ipv4Addr::new(10, 0, 0, 2),
                mac: Mac::for_ip(Ipv4Addr::new(10, 0, 0, 2)),
                name: "c1".into(),
                ifname: "eth0".into(),
                endpoint: ep(2, "a"),
                ns_id: None,
            },
        );
        let t = build_tables(&view, &local, "a", 4789, &StatsRegistry::default());
        let net = &t.networks[&Vni::new(4096).unwrap()];
        assert_eq!(
            net.by_ip[&Ipv4Addr::new(10, 0, 0, 2)].location,
            Location::Local(1)
        );
        assert_eq!(
            net.by_ip[&Ipv4Addr::new(10, 0, 0, 3)].location,
            Location::Remote("192.168.100.117:4789".parse().unwrap())
        );
        assert_eq!(
            net.by_ip[&Ipv4Addr::new(10, 0, 0, 200)].location,
            Location::Remote("192.168.100.120:4789".parse().unwrap())
        );
        assert!(t.peers.contains_key(&Ipv4Addr::new(192, 168, 100, 117)));
        assert!(t.peers.contains_key(&Ipv4Addr::new(192, 168, 100, 120)));
        assert!(
            !t.peers.contains_key(&Ipv4Addr::new(192, 168, 100, 118)),
            "a Down node is no peer"
        );
        assert_eq!(t.ports[&1].vni.get(), 4096);
        // The other Ready host's door leads to it; ours is not a peer's.
        let door = |last| Ipv4Addr::new(169, 254, 100, last);
        assert_eq!(
            t.host_doors.get(&door(117)),
            Some(&"192.168.100.117:4789".parse().unwrap())
        );
        assert_eq!(t.host_doors.len(), 1);
        // A host whose address ends as another's shares its door: that
        // door leads nowhere.
        view.nodes[2].record.address = Ipv4Addr::new(10, 9, 100, 117);
        view.nodes[2].ready = true;
        let t = build_tables(&view, &local, "a", 4789, &StatsRegistry::default());
        assert!(t.host_doors.is_empty(), "{:?}", t.host_doors);
    }

    fn net(id: &str, vni: u32, third: u8) -> Network {
        Network {
            id: id.into(),
            name: id.into(),
            driver: "overlay".into(),
            vni,
            subnet: format!("10.0.{third}.0/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, third, 1),
        }
    }

    fn task(net: &str, ip: Ipv4Addr, netns: &str, service: &str) -> ContainerEndpoint {
        ContainerEndpoint {
            network_id: net.into(),
            ip,
            mac: Mac::for_ip(ip),
            name: netns.into(),
            netns: netns.into(),
            node_id: "b".into(),
            service: Some(service.into()),
            weight: 1,
            draining: false,
        }
    }

    fn service(id: &str, nets: &[(&str, Ipv4Addr)], published: u16) -> Service {
        Service {
            id: id.into(),
            name: id.into(),
            networks: nets.iter().map(|(n, _)| n.to_string()).collect(),
            endpoint_mode: Default::default(),
            scheduler: "rr".into(),
            ports: vec![PortSpec {
                published,
                target: 80,
                protocol: Protocol::Tcp,
            }],
            vips: nets.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_service_on_several_networks_publishes_through_every_task_once() {
        let ip = |third: u8, last: u8| Ipv4Addr::new(10, 0, third, last);
        let mut view = View {
            self_id: "a".into(),
            ..View::default()
        };
        for (id, last) in [("a", 116), ("b", 117)] {
            view.nodes.push(NodeView {
                id: id.into(),
                record: NodeRecord {
                    hostname: id.into(),
                    address: Ipv4Addr::new(192, 168, 100, last),
                    vxlan_port: 4789,
                    gossip_port: 7946,
                    synced: true,
                    underlay_prefix: 24,
                },
                ready: true,
            });
        }
        view.networks.insert("n1".into(), net("n1", 4096, 0));
        view.networks.insert("n2".into(), net("n2", 4097, 1));
        let (vip1, vip2, vip_single) = (ip(0, 250), ip(1, 250), ip(1, 251));
        // n2 first: its tasks are listed first, and t3 is reached there.
        view.services.insert(
            "web".into(),
            service("web", &[("n2", vip2), ("n1", vip1)], 8000),
        );
        // A service whose first network is not known here (yet).
        view.services.insert(
            "late".into(),
            service("late", &[("gone", ip(9, 250)), ("n1", ip(0, 252))], 8001),
        );
        view.services
            .insert("one".into(), service("one", &[("n2", vip_single)], 9000));
        let mut draining = task("n2", ip(1, 5), "t4", "web");
        draining.draining = true;
        view.containers = vec![
            task("n1", ip(0, 3), "t1", "web"),
            task("n2", ip(1, 3), "t2", "web"),
            // t3 is attached on both networks: one task.
            task("n2", ip(1, 4), "t3", "web"),
            task("n1", ip(0, 4), "t3", "web"),
            draining,
            task("n2", ip(1, 9), "s1", "one"),
        ];
        let stats = StatsRegistry::default();
        let t = build_tables(&view, &BTreeMap::new(), "a", 4789, &stats);

        let publ = t.published[&(ipv4::protocol::TCP, 8000)];
        let pool = &t.vips[publ.vip];
        let ips: Vec<Ipv4Addr> = pool.backends.iter().map(|b| b.ip).collect();
        assert_eq!(ips, vec![ip(0, 3), ip(1, 3), ip(1, 4)]);
        assert_eq!(publ.target, 80);
        assert_eq!((pool.vip, pool.vni.get()), (vip2, 4097));
        // The pool is no VIP of its own: each network's VIP keeps its tasks.
        for (vni, vip, want) in [
            (4096, vip1, vec![ip(0, 3), ip(0, 4)]),
            (4097, vip2, vec![ip(1, 3), ip(1, 4)]),
        ] {
            let i = t.networks[&Vni::new(vni).unwrap()].vips[&vip];
            assert_ne!(i, publ.vip);
            let got: Vec<Ipv4Addr> = t.vips[i].backends.iter().map(|b| b.ip).collect();
            assert_eq!(got, want);
        }
        // Counts land on each task's own counters and the first VIP's.
        assert!(Arc::ptr_eq(&pool.stats, &stats.vip(vip2)));
        for (i, vip, task) in [
            (0, vip1, ip(0, 3)),
            (1, vip2, ip(1, 3)),
            (2, vip2, ip(1, 4)),
        ] {
            assert!(Arc::ptr_eq(
                &pool.backend_stats[i],
                &stats.backend(vip, task)
            ));
        }
        // The first known network stands in for one not known here.
        let late = &t.vips[t.published[&(ipv4::protocol::TCP, 8001)].vip];
        assert_eq!((late.vip, late.backends.len()), (ip(0, 252), 0));
        // A service on one network publishes through its VIP's own table.
        let one = t.published[&(ipv4::protocol::TCP, 9000)];
        assert_eq!(
            t.networks[&Vni::new(4097).unwrap()].vips[&vip_single],
            one.vip
        );
    }
}
