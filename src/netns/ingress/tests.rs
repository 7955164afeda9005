use super::*;

#[test]
fn published_ports_are_steered_on_every_address_and_follow_them() {
    let a = Ipv4Addr::new(192, 168, 1, 5);
    let b = Ipv4Addr::new(10, 9, 0, 1);
    let web = PublishedPort {
        protocol: "tcp",
        port: 8000,
    };
    let dns = PublishedPort {
        protocol: "udp",
        port: 53,
    };
    let mut one = HostPlan::default();
    one.addresses.extend([a, Ipv4Addr::LOCALHOST]);
    one.published.insert(web);
    let mut two = one.clone();
    two.addresses.insert(b);
    two.published.insert(dns);
    let rule = |verb: &str, to: Ipv4Addr, p: &str, port: u16| {
        format!(
            "rule {verb} pref {PREF_PUBLISHED} to {to}/32 ipproto {p} dport {port} lookup {TABLE}"
        )
    };
    let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        set(HostRouting::rule_changes(&HostPlan::default(), &one)),
        set(vec![
            rule("add", a, "tcp", 8000),
            rule("add", Ipv4Addr::LOCALHOST, "tcp", 8000)
        ])
    );
    // A new address gets every port; a new port every address.
    assert_eq!(
        set(HostRouting::rule_changes(&one, &two)),
        set(vec![
            rule("add", b, "tcp", 8000),
            rule("add", a, "udp", 53),
            rule("add", b, "udp", 53),
            rule("add", Ipv4Addr::LOCALHOST, "udp", 53),
        ])
    );
    // An address gone takes its rules along, and only those.
    let mut three = two.clone();
    three.addresses.remove(&a);
    assert_eq!(
        set(HostRouting::rule_changes(&two, &three)),
        set(vec![rule("del", a, "tcp", 8000), rule("del", a, "udp", 53)])
    );
    assert!(HostRouting::rule_changes(&three, &three).is_empty());
}

#[test]
fn the_host_addresses_are_listed_but_the_named_interface() {
    // Unit tests run where the loopback is up.
    let all = host_addresses("mesh-ingress").expect("the addresses are listed");
    assert!(all.contains(&Ipv4Addr::LOCALHOST));
    let but_lo = host_addresses("lo").expect("the addresses are listed");
    assert!(!but_lo.contains(&Ipv4Addr::LOCALHOST));
}

#[test]
fn the_nftables_script_masquerades_egress_and_keeps_containers_closed() {
    let mut plan = HostPlan::default();
    let empty = nft_ruleset("mesh-ingress", &plan);
    assert_eq!(empty, "add table ip mesh\ndelete table ip mesh\n");
    plan.subnets.insert((Ipv4Addr::new(10, 0, 0, 0), 24));
    plan.subnets.insert((Ipv4Addr::new(10, 0, 1, 0), 24));
    let s = nft_ruleset("mesh-ingress", &plan);
    assert!(s.contains(
        "ip saddr { 10.0.0.0/24, 10.0.1.0/24 } ip daddr != { 10.0.0.0/24, 10.0.1.0/24 } masquerade"
    ));
    assert!(s.contains(
        "iifname != \"mesh-ingress\" oifname \"mesh-ingress\" ip daddr { 10.0.0.0/24, 10.0.1.0/24 } ct state new drop"
    ));
    assert!(
        !s.contains("notrack"),
        "no VXLAN port given, none untracked"
    );
    plan.vxlan_port = 4789;
    let s = nft_ruleset("mesh-ingress", &plan);
    assert_eq!(s.matches("udp dport 4789 notrack").count(), 2);
    assert!(!s.contains("client_errors"), "nothing published");
}

#[test]
fn icmp_errors_about_published_ports_are_marked_for_the_tun() {
    let mut plan = HostPlan::default();
    for (protocol, port) in [("tcp", 8000), ("tcp", 7001), ("udp", 9001)] {
        plan.published.insert(PublishedPort { protocol, port });
    }
    // Even without overlay subnets (no egress rules).
    let s = nft_ruleset("mesh-ingress", &plan);
    assert!(s.contains("chain client_errors {\n    type filter hook prerouting priority mangle;"));
    assert!(s.contains("iifname != \"mesh-ingress\" fib daddr type local icmp type { destination-unreachable, time-exceeded } @th,68,4 5 @th,136,8 6 @th,224,16 { 7001, 8000 } meta mark set meta mark | 0x200000\n"));
    assert!(s.contains("@th,136,8 17 @th,224,16 { 9001 } meta mark set meta mark | 0x200000\n"));
    assert_eq!(
        error_rule("add"),
        format!(
            "rule add pref {PREF_PUBLISHED} ipproto icmp fwmark 0x200000/0x200000 lookup {TABLE}"
        )
    );
}

#[test]
fn the_rules_and_route_listed_are_counted() {
    use super::repair::{found, Found};
    let text = "0:\tfrom all lookup local\n\
        10:\tfrom all to 192.168.100.116 ipproto tcp dport 8000 lookup 4789000\n\
        10:\tfrom all fwmark 0x4d45 lookup 4789000\n\
        1001:\tfrom all to 10.0.0.0/24 lookup 4789000 proto kernel\n\
        32766:\tfrom all lookup main\n\
        default dev mesh-ingress scope link\n";
    assert_eq!(
        found(text),
        Found {
            local_moved: false,
            local_first: true,
            ours: 3,
            route: true
        }
    );
    let moved = found("1000:\tfrom all lookup local\n");
    assert!(moved.local_moved && !moved.local_first);
    assert_eq!(found("32766:\tfrom all lookup main\n"), Found::default());
}

#[test]
fn reserved_port_lists_read_and_write_as_the_kernel_shows_them() {
    use super::{port_list, port_list_text};
    let ports = port_list("7001,8000,9001-9003\n");
    assert_eq!(
        ports.iter().copied().collect::<Vec<_>>(),
        [7001, 8000, 9001, 9002, 9003]
    );
    assert_eq!(port_list_text(&ports), "7001,8000,9001-9003");
    assert_eq!(port_list_text(&port_list("")), "\n");
    assert_eq!(port_list_text(&port_list("65534-65535")), "65534-65535");
    // Others' ports stay when the agent takes out its own.
    let mine = port_list("8000,9002");
    let left: std::collections::BTreeSet<u16> = ports.difference(&mine).copied().collect();
    assert_eq!(port_list_text(&left), "7001,9001,9003");
}

#[test]
fn forward_chains_that_drop_by_default_are_named() {
    use super::forward_drops;
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD", "hook": "forward", "policy": "accept"}},
        {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "policy": "drop"}},
        {"chain": {"family": "ip", "table": "mesh", "name": "forward", "hook": "forward", "policy": "drop"}},
        {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER"}}]}"#;
    assert_eq!(forward_drops(json), ["ip filter FORWARD"]);
    assert!(forward_drops("not json").is_empty());
}

#[test]
fn nat_rules_of_other_tables_are_found() {
    use super::nat_elsewhere;
    let ours = r#"{"rule": {"family": "ip", "table": "mesh", "chain": "egress", "expr": [{"masquerade": null}]}}"#;
    let filter = r#"{"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "expr": [{"accept": null}]}}"#;
    let docker = r#"{"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "docker0"}}, {"masquerade": null}]}}"#;
    let xt = r#"{"rule": {"family": "ip", "table": "nat", "chain": "DOCKER", "expr": [{"xt": {"type": "target", "name": "DNAT"}}]}}"#;
    let doc = |rules: &[&str]| {
        format!(
            r#"{{"nftables": [{{"metainfo": {{}}}}, {}]}}"#,
            rules.join(", ")
        )
    };
    assert_eq!(nat_elsewhere(&doc(&[ours, filter])), None);
    assert_eq!(
        nat_elsewhere(&doc(&[ours, filter, docker])).as_deref(),
        Some("ip nat POSTROUTING")
    );
    assert_eq!(nat_elsewhere(&doc(&[xt])).as_deref(), Some("ip nat DOCKER"));
    assert_eq!(nat_elsewhere("not json"), None);
}
