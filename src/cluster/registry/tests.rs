//! The leader's decisions against hand-made views.

use super::*;
use crate::cluster::model::{ContainerEndpoint, Protocol};

fn apply(view: &mut View, p: &Plan) {
    for (k, v) in &p.writes {
        view.objects.insert(k.clone(), v.clone());
        match &v.object {
            Some(Object::Network(n)) => {
                view.networks.insert(n.id.clone(), n.clone());
            }
            Some(Object::StaticEndpoint(s)) => view.statics.push(s.clone()),
            Some(Object::Service(s)) => {
                view.services.insert(s.id.clone(), s.clone());
            }
            None => {
                view.networks
                    .retain(|id, _| super::super::model::network_key(id) != *k);
                view.services
                    .retain(|id, _| super::super::model::service_key(id) != *k);
            }
        }
    }
}

fn create(name: &str, subnet: Option<&str>) -> Mutation {
    Mutation::CreateNetwork {
        name: name.into(),
        driver: "overlay".into(),
        subnet: subnet.map(Into::into),
        gateway: None,
    }
}

/// Container `name` (namespace `netns`) at 10.0.0.`last` on network `net`,
/// attached on node `node`: not a task.
fn container(net: &str, last: u8, name: &str, netns: &str, node: &str) -> ContainerEndpoint {
    let ip = Ipv4Addr::new(10, 0, 0, last);
    ContainerEndpoint {
        network_id: net.into(),
        ip,
        mac: Mac::for_ip(ip),
        name: name.into(),
        netns: netns.into(),
        node_id: node.into(),
        service: None,
        weight: 1,
        draining: false,
    }
}

#[test]
fn networks_get_distinct_vnis_and_subnets() {
    let mut v = View::default();
    let none = HashSet::new();
    let mut seen = vec![];
    for i in 0..5 {
        let p = plan(
            &v,
            &none,
            &create(&format!("n{i}"), None),
            i + 1,
            &format!("id{i}"),
        )
        .unwrap();
        apply(&mut v, &p);
        let Outcome::Network(n) = p.outcome else {
            panic!("not a network")
        };
        seen.push(n);
    }
    let vnis: HashSet<u32> = seen.iter().map(|n| n.vni).collect();
    assert_eq!(vnis.len(), 5);
    assert!(vnis.iter().all(|v| *v >= 4096));
    for a in &seen {
        for b in &seen {
            assert!(a.id == b.id || !a.subnet.overlaps(&b.subnet));
        }
    }
    assert_eq!(seen[0].gateway, Ipv4Addr::new(10, 0, 0, 1));
}

/// A static endpoint 10.20.0.50 on demo behind VTEP `vtep`.
fn static_at(vtep: &str) -> Mutation {
    Mutation::AddStaticEndpoint {
        network: "demo".into(),
        ip: Ipv4Addr::new(10, 20, 0, 50),
        mac: Mac([2, 0, 0, 0, 0, 0x50]),
        vtep: vtep.parse().unwrap(),
    }
}

#[test]
fn refusals_change_nothing() {
    let mut v = View::default();
    let none = HashSet::new();
    let p = plan(&v, &none, &create("demo", Some("10.20.0.0/16")), 1, "a").unwrap();
    apply(&mut v, &p);
    for (m, want) in [
        (create("demo", None), "already exists"),
        (create("DEMO", None), "case-insensitive"),
        (
            Mutation::CreateNetwork {
                name: "gw".into(),
                driver: "overlay".into(),
                subnet: None,
                gateway: Some(Ipv4Addr::new(10, 5, 0, 1)),
            },
            "--gateway needs --subnet",
        ),
        (create("other", Some("10.20.5.0/24")), "overlaps"),
        (create("bad name", None), "invalid name"),
        (create("x", Some("10.1.0.0/33")), "invalid subnet"),
        (create("lo", Some("127.1.0.0/16")), "loopback"),
        (create("ll", Some("169.254.0.0/24")), "link-local"),
        (create("mc", Some("224.1.0.0/16")), "multicast"),
        (create("big", Some("0.0.0.0/1")), "this network"),
        (create("top", Some("255.255.255.0/24")), "broadcast"),
        (
            Mutation::RemoveNetwork {
                name: "nope".into(),
            },
            "not found",
        ),
        (
            Mutation::ReserveIp {
                network: "demo".into(),
                ip: Some(Ipv4Addr::new(10, 21, 0, 1)),
                owner: String::new(),
                name: None,
                node: None,
            },
            "not a host address",
        ),
        (
            Mutation::ReserveIp {
                network: "demo".into(),
                ip: Some(Ipv4Addr::new(10, 20, 0, 1)),
                owner: String::new(),
                name: None,
                node: None,
            },
            "gateway",
        ),
        (static_at("127.0.0.1"), "not a unicast host address"),
        (static_at("0.0.0.0"), "not a unicast host address"),
        (static_at("239.1.1.1"), "not a unicast host address"),
        (static_at("10.20.3.4"), "inside network demo's subnet"),
    ] {
        let e = plan(&v, &none, &m, 2, "b").unwrap_err();
        assert!(e.contains(want), "{e} should say {want}");
    }
    assert_eq!(v.networks.len(), 1);
}

#[test]
fn a_down_nodes_addresses_are_not_handed_out_again() {
    let mut v = View::default();
    let p = plan(&v, &HashSet::new(), &create("demo", None), 1, "n").unwrap();
    apply(&mut v, &p);
    let net = v.networks.values().next().unwrap().id.clone();
    let ip2 = Ipv4Addr::new(10, 0, 0, 2);
    v.down_containers
        .push(container(&net, 2, "away", "away", "paused"));
    let reserve = |ip| Mutation::ReserveIp {
        network: "demo".into(),
        ip,
        owner: String::new(),
        name: None,
        node: None,
    };
    let p = plan(&v, &HashSet::new(), &reserve(None), 2, "").unwrap();
    assert!(matches!(p.outcome, Outcome::Ip { ip, .. } if ip == Ipv4Addr::new(10, 0, 0, 3)));
    let e = plan(&v, &HashSet::new(), &reserve(Some(ip2)), 2, "").unwrap_err();
    assert!(e.contains("already in use"), "{e}");
}

#[test]
fn reserved_and_attached_ips_are_not_handed_out_twice() {
    let mut v = View::default();
    let p = plan(&v, &HashSet::new(), &create("demo", None), 1, "n").unwrap();
    apply(&mut v, &p);
    let mut reserved = HashSet::new();
    for want in [2u8, 3, 4] {
        let p = plan(
            &v,
            &reserved,
            &Mutation::ReserveIp {
                network: "demo".into(),
                ip: None,
                owner: String::new(),
                name: None,
                node: None,
            },
            2,
            "",
        )
        .unwrap();
        let Outcome::Ip { ip, network_id } = p.outcome else {
            panic!("not an ip")
        };
        assert_eq!(ip, Ipv4Addr::new(10, 0, 0, want));
        reserved.insert((network_id, ip));
    }
    let e = plan(
        &v,
        &reserved,
        &Mutation::ReserveIp {
            network: "demo".into(),
            ip: Some(Ipv4Addr::new(10, 0, 0, 3)),
            owner: String::new(),
            name: None,
            node: None,
        },
        2,
        "",
    )
    .unwrap_err();
    assert!(e.contains("already in use"));
}

fn service(name: &str, nets: &[&str], ports: &[(u16, u16)], mode: EndpointMode) -> Mutation {
    Mutation::CreateService {
        name: name.into(),
        networks: nets.iter().map(|n| n.to_string()).collect(),
        ports: ports
            .iter()
            .map(|(p, t)| PortSpec {
                published: *p,
                target: *t,
                protocol: super::super::model::Protocol::Tcp,
            })
            .collect(),
        endpoint_mode: mode,
        scheduler: "rr".into(),
    }
}

fn apply_service(v: &mut View, p: &Plan) {
    if let Outcome::Service(s) = &p.outcome {
        v.services.insert(s.id.clone(), s.clone());
    }
}

#[test]
fn services_get_a_vip_per_network_never_given_to_a_container() {
    let mut v = View::default();
    for (i, n) in ["front", "back"].iter().enumerate() {
        let p = plan(&v, &HashSet::new(), &create(n, None), 1, &format!("n{i}")).unwrap();
        apply(&mut v, &p);
    }
    let p = plan(
        &v,
        &HashSet::new(),
        &service("web", &["front", "back"], &[(8000, 80)], EndpointMode::Vip),
        2,
        "s1",
    )
    .unwrap();
    apply_service(&mut v, &p);
    let Outcome::Service(s) = p.outcome else {
        panic!("not a service")
    };
    assert_eq!(s.vips.len(), 2);
    assert_eq!(s.vips["n0"], Ipv4Addr::new(10, 0, 0, 2));
    let p = plan(
        &v,
        &HashSet::new(),
        &Mutation::ReserveIp {
            network: "front".into(),
            ip: None,
            owner: String::new(),
            name: None,
            node: None,
        },
        3,
        "",
    )
    .unwrap();
    assert_eq!(
        p.outcome,
        Outcome::Ip {
            network_id: "n0".into(),
            ip: Ipv4Addr::new(10, 0, 0, 3)
        }
    );
    let e = plan(
        &v,
        &HashSet::new(),
        &Mutation::ReserveIp {
            network: "front".into(),
            ip: Some(Ipv4Addr::new(10, 0, 0, 2)),
            owner: String::new(),
            name: None,
            node: None,
        },
        3,
        "",
    )
    .unwrap_err();
    assert!(e.contains("already in use"), "{e}");
    let dnsrr = plan(
        &v,
        &HashSet::new(),
        &service("db", &["back"], &[], EndpointMode::Dnsrr),
        4,
        "s2",
    )
    .unwrap();
    let Outcome::Service(d) = dnsrr.outcome else {
        panic!("not a service")
    };
    assert!(d.vips.is_empty());
}

#[test]
fn service_refusals() {
    let mut v = View::default();
    let p = plan(&v, &HashSet::new(), &create("demo", None), 1, "n").unwrap();
    apply(&mut v, &p);
    let p = plan(
        &v,
        &HashSet::new(),
        &service("web", &["demo"], &[(8000, 80)], EndpointMode::Vip),
        2,
        "s",
    )
    .unwrap();
    apply_service(&mut v, &p);
    for (m, want) in [
        (
            service("web", &["demo"], &[], EndpointMode::Vip),
            "already exists",
        ),
        (
            service("Web", &["demo"], &[], EndpointMode::Vip),
            "case-insensitive",
        ),
        (
            service("api", &["nope"], &[], EndpointMode::Vip),
            "network nope not found",
        ),
        (
            service("api", &["demo"], &[(8000, 81)], EndpointMode::Vip),
            "already published by service web",
        ),
        (
            service("api", &["demo"], &[(9000, 80)], EndpointMode::Dnsrr),
            "need --endpoint-mode vip",
        ),
        (
            service("api", &[], &[], EndpointMode::Vip),
            "at least one --network",
        ),
        (
            Mutation::RemoveNetwork {
                name: "demo".into(),
            },
            "in use by service web",
        ),
    ] {
        let e = plan(&v, &HashSet::new(), &m, 3, "x").unwrap_err();
        assert!(e.contains(want), "{e} should say {want}");
    }
    v.containers.push(ContainerEndpoint {
        service: Some("s".into()),
        ..container("n", 3, "web.1", "t", "a")
    });
    let e = plan(
        &v,
        &HashSet::new(),
        &Mutation::RemoveService { name: "web".into() },
        3,
        "",
    )
    .unwrap_err();
    assert!(e.contains("1 task(s) attached"), "{e}");
}

#[test]
fn a_network_with_containers_is_not_removed() {
    let mut v = View::default();
    let p = plan(&v, &HashSet::new(), &create("demo", None), 1, "n").unwrap();
    apply(&mut v, &p);
    v.containers.push(container("n", 2, "c", "c", "a"));
    let rm = Mutation::RemoveNetwork {
        name: "demo".into(),
    };
    let e = plan(&v, &HashSet::new(), &rm, 2, "").unwrap_err();
    assert!(e.contains("detach them first"));
    // Nor with an attach under way (an address promised). A container on
    // a Down host does not hold it.
    let c = v.containers.remove(0);
    let pending = HashSet::from([("n".to_string(), Ipv4Addr::new(10, 0, 0, 3))]);
    let e = plan(&v, &pending, &rm, 2, "").unwrap_err();
    assert!(e.contains("attach under way"), "{e}");
    v.down_containers.push(c);
    let p = plan(&v, &HashSet::new(), &rm, 2, "").unwrap();
    assert!(matches!(p.outcome, Outcome::Removed { .. }));
}

/// A view of two hosts: .116 with the default ports, .117 with its own.
fn two_hosts() -> View {
    let mut v = View::default();
    for (id, last, gossip, vxlan) in [("a", 116, 7946, 4789), ("b", 117, 7950, 4790)] {
        v.nodes.push(super::super::model::NodeView {
            id: id.into(),
            record: NodeRecord {
                hostname: format!("h{last}"),
                address: Ipv4Addr::new(192, 168, 100, last),
                vxlan_port: vxlan,
                gossip_port: gossip,
                synced: true,
                underlay_prefix: 24,
            },
            ready: true,
        });
    }
    v
}

#[test]
fn a_subnet_stays_out_of_the_hosts_network() {
    let mut v = two_hosts();
    // Holding a host's address, or only its neighbours' (.0-.63 of the /24).
    for subnet in ["192.168.0.0/16", "192.168.100.0/26"] {
        let e = plan(&v, &HashSet::new(), &create("u", Some(subnet)), 1, "u").unwrap_err();
        assert!(
            e.contains("overlaps 192.168.100.0/24, the network of host h116 (192.168.100.116)"),
            "{subnet}: {e}"
        );
    }
    let subnet = |v: &View| {
        let p = plan(v, &HashSet::new(), &create("d", None), 1, "d").unwrap();
        let Outcome::Network(n) = p.outcome else {
            panic!("not a network")
        };
        n.subnet.to_string()
    };
    // The default pool steps over a host's network in it: a /16 of a
    // cloud's VPC, or the /30 around a host whose record gives none.
    v.nodes[1].record.address = Ipv4Addr::new(10, 0, 3, 7);
    v.nodes[1].record.underlay_prefix = 16;
    assert_eq!(subnet(&v), "10.1.0.0/24");
    v.nodes[1].record.underlay_prefix = 0;
    v.nodes[1].record.address = Ipv4Addr::new(10, 0, 0, 7);
    assert_eq!(subnet(&v), "10.0.1.0/24");
}

#[test]
fn no_host_s_agent_port_is_published() {
    let mut v = two_hosts();
    let p = plan(&v, &HashSet::new(), &create("demo", None), 1, "n").unwrap();
    apply(&mut v, &p);
    let publish = |published, protocol| Mutation::CreateService {
        name: "web".into(),
        networks: vec!["demo".into()],
        ports: vec![PortSpec {
            published,
            target: 80,
            protocol,
        }],
        endpoint_mode: EndpointMode::Vip,
        scheduler: "rr".into(),
    };
    for (port, protocol) in [
        (7950, Protocol::Tcp),
        (4790, Protocol::Udp),
        (7946, Protocol::Udp),
    ] {
        let e = plan(&v, &HashSet::new(), &publish(port, protocol), 2, "s").unwrap_err();
        assert!(e.contains("mesh-agent's own on host"), "{port}: {e}");
    }
    // VXLAN is UDP: the same number over TCP is free.
    assert!(plan(&v, &HashSet::new(), &publish(4790, Protocol::Tcp), 2, "s").is_ok());
}

#[test]
fn a_name_held_on_another_host_is_refused_by_the_leader() {
    let mut v = View::default();
    let p = plan(&v, &HashSet::new(), &create("demo", None), 1, "n").unwrap();
    apply(&mut v, &p);
    v.containers.push(container("n", 2, "db", "mt-db", "a"));
    let reserve = |name: &str, node: &str| Mutation::ReserveIp {
        network: "demo".into(),
        ip: None,
        owner: "x".into(),
        name: Some(name.into()),
        node: Some(node.into()),
    };
    let e = plan(&v, &HashSet::new(), &reserve("DB", "b"), 2, "").unwrap_err();
    assert!(
        e.contains("name DB is taken on network demo by container mt-db"),
        "{e}"
    );
    // Its own host knows more (a namespace gone, not reaped yet): its call.
    assert!(plan(&v, &HashSet::new(), &reserve("db", "a"), 2, "").is_ok());
    assert!(plan(&v, &HashSet::new(), &reserve("web", "b"), 2, "").is_ok());
}
