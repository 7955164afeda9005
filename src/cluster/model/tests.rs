use super::*;

fn rec(last: u8) -> String {
    serde_json::to_string(&NodeRecord {
        hostname: "h".into(),
        address: Ipv4Addr::new(192, 168, 100, last),
        vxlan_port: 4789,
        gossip_port: 7946,
        synced: true,
        underlay_prefix: 24,
    })
    .unwrap()
}

fn net(id: &str, name: &str, vni: u32) -> Network {
    Network::for_tests(id, name, vni)
}

fn versioned(version: u64, object: Option<Object>) -> String {
    serde_json::to_string(&Versioned { version, object }).unwrap()
}

#[test]
fn newest_version_wins_and_tombstones_hide() {
    let a_node = rec(116);
    let b_node = rec(117);
    let old = versioned(1, Some(Object::Network(net("n1", "demo", 4096))));
    let gone = versioned(2, None);
    let other = versioned(3, Some(Object::Network(net("n2", "web", 4097))));
    let key1 = network_key("n1");
    let key2 = network_key("n2");
    let nodes = [
        NodeInput {
            id: "a",
            live: true,
            key_values: vec![("node", &a_node), (&key1, &old), (&key2, &other)],
        },
        NodeInput {
            id: "b",
            live: true,
            key_values: vec![("node", &b_node), (&key1, &gone)],
        },
    ];
    let v = View::build("a", &nodes);
    assert_eq!(v.networks.len(), 1);
    assert_eq!(v.network_by_name("web").unwrap().vni, 4097);
    assert_eq!(v.objects[&key1].version, 2);
    assert_eq!(v.max_version(), 3);
}

#[test]
fn containers_of_down_nodes_leave_the_view() {
    let a_node = rec(116);
    let b_node = rec(117);
    let ep = serde_json::to_string(&ContainerEndpoint {
        network_id: "n1".into(),
        ip: Ipv4Addr::new(10, 0, 0, 2),
        mac: Mac::for_ip(Ipv4Addr::new(10, 0, 0, 2)),
        name: "c1".into(),
        netns: "c1".into(),
        node_id: String::new(),
        service: None,
        weight: 1,
        draining: false,
    })
    .unwrap();
    let k = endpoint_key("n1", Ipv4Addr::new(10, 0, 0, 2));
    let up = [
        NodeInput {
            id: "a",
            live: true,
            key_values: vec![("node", &a_node)],
        },
        NodeInput {
            id: "b",
            live: true,
            key_values: vec![("node", &b_node), (&k, &ep)],
        },
    ];
    let v = View::build("a", &up);
    assert_eq!(v.containers.len(), 1);
    assert_eq!(v.containers[0].node_id, "b");
    let down = [
        NodeInput {
            id: "a",
            live: true,
            key_values: vec![("node", &a_node)],
        },
        NodeInput {
            id: "b",
            live: false,
            key_values: vec![("node", &b_node), (&k, &ep)],
        },
    ];
    let v = View::build("a", &down);
    assert!(v.containers.is_empty());
    assert!(!v.node("b").unwrap().ready);
    assert_eq!(v.leader().unwrap().id, "a");
}

#[test]
fn a_node_that_has_not_caught_up_does_not_lead() {
    let rec_of = |last: u8, synced: bool| {
        serde_json::to_string(&NodeRecord {
            hostname: "h".into(),
            address: Ipv4Addr::new(192, 168, 100, last),
            vxlan_port: 4789,
            gossip_port: 7950,
            synced,
            underlay_prefix: 24,
        })
        .unwrap()
    };
    let (a, b_new, b_synced) = (rec_of(116, true), rec_of(117, false), rec_of(117, true));
    let nodes = |b: &str| {
        let v = [
            NodeInput {
                id: "b",
                live: true,
                key_values: vec![("node", &a)],
            },
            NodeInput {
                id: "a",
                live: true,
                key_values: vec![("node", b)],
            },
        ];
        // Its own view says the same: it does not lead itself either.
        (View::build("b", &v), View::build("a", &v))
    };
    let (theirs, own) = nodes(&b_new);
    assert_eq!(theirs.leader().unwrap().id, "b");
    assert_eq!(own.leader().unwrap().id, "b");
    let (theirs, own) = nodes(&b_synced);
    assert_eq!(theirs.leader().unwrap().id, "a");
    assert_eq!(own.leader().unwrap().id, "a");
    assert_eq!(theirs.node("a").unwrap().record.gossip_port, 7950);
    // Alone and not caught up: no leader at all.
    let alone = [NodeInput {
        id: "a",
        live: true,
        key_values: vec![("node", &b_new)],
    }];
    assert!(View::build("a", &alone).leader().is_none());
    // A record from an agent that says neither: synced, port unknown (0).
    let old: NodeRecord =
        serde_json::from_str(r#"{"hostname":"h","address":"192.168.100.5","vxlan_port":4789}"#)
            .unwrap();
    assert!(old.synced);
    assert_eq!(old.gossip_port, 0);
}

#[test]
fn published_ports_parse_like_docker() {
    let p: PortSpec = "8000:80".parse().unwrap();
    assert_eq!(
        (p.published, p.target, p.protocol),
        (8000, 80, Protocol::Tcp)
    );
    assert_eq!(
        "53:5353/udp".parse::<PortSpec>().unwrap().to_string(),
        "53:5353/udp"
    );
    for bad in ["8000", "8000:80/sctp", "0:80", "x:80", "70000:80", "8000:"] {
        assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
    }
}

#[test]
fn find_network_by_name_or_unique_id_prefix() {
    let mut v = View::default();
    v.networks
        .insert("abc123".into(), net("abc123", "demo", 4096));
    v.networks
        .insert("abd456".into(), net("abd456", "web", 4097));
    assert_eq!(v.find_network("demo").unwrap().id, "abc123");
    assert_eq!(v.find_network("abd").unwrap().name, "web");
    assert!(v.find_network("ab").is_none());
    assert!(v.find_network("").is_none());
}
