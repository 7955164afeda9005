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
use std::collections::BTreeMap;
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
    for node in view.nodes.iter().filter(|n| n.ready && n.id != self_id) {
        t.peers.insert(
            node.record.address,
            Peer {
                port: node.record.vxlan_port,
                agent: true,
            },
        );
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
            // Published ports are served by the tasks on the service's
            // first network.
            if s.networks.first() == Some(net_id) {
                for p in &s.ports {
                    let proto = match p.protocol {
                        Protocol::Tcp => ipv4::protocol::TCP,
                        Protocol::Udp => ipv4::protocol::UDP,
                    };
                    t.published.insert(
                        (proto, p.published),
                        Published {
                            vip: idx,
                            target: p.target,
                        },
                    );
                }
            }
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
    for (vni, net) in &t.networks {
        for ip in net.by_ip.keys() {
            t.routed.insert(*ip, *vni);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::ContainerEndpoint;
    use crate::cluster::model::{Network, NodeRecord, NodeView, StaticEndpoint};
    use crate::wire::Mac;
    use std::net::Ipv4Addr;

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
                },
                ready,
            });
        }
        view.networks.insert(
            "n".into(),
            Network {
                id: "n".into(),
                name: "demo".into(),
                driver: "overlay".into(),
                vni: 4096,
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
            },
        );
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
    }
}
