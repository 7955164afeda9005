//! What a namespace's TCP sockets say about its connections: a draining
//! task is done when no connection that a client opened to it is left.

/// Connections clients opened to the listeners of the calling thread's
/// namespace and that are not closed yet (so not counting TIME_WAIT), from
/// `/proc/thread-self/net/tcp` and `tcp6` (a dual-stack listener keeps its
/// IPv4 clients there). Call it on a thread inside the namespace
/// ([`super::run_in`]).
pub fn inbound_open() -> std::io::Result<usize> {
    let v4 = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
    // No tcp6 table when IPv6 is off in the kernel: nothing to add.
    let v6 = std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default();
    Ok(count_inbound_open(&v4) + count_inbound_open(&v6))
}

/// TCP states in /proc/net/tcp (include/net/tcp_states.h).
const LISTEN: u8 = 0x0A;
const TIME_WAIT: u8 = 0x06;
const CLOSE: u8 = 0x07;

/// The count [`inbound_open`] makes, from the text of a /proc/net/tcp table.
/// The agent's own DNS listener (127.0.0.11:53) and its connections are not
/// the task's: a client holding a DNS-over-TCP connection does not stretch
/// the drain.
pub fn count_inbound_open(table: &str) -> usize {
    // As the kernel prints it: the address's bytes as a native-endian word.
    let dns = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(crate::dns::listener::DNS_ADDR.ip().octets()),
        crate::dns::listener::DNS_ADDR.port()
    );
    let rows: Vec<(u16, u8)> = rows(table)
        .filter(|(local, _, _)| *local != dns)
        .map(|(_, port, state)| (port, state))
        .collect();
    let listening: Vec<u16> = rows
        .iter()
        .filter(|(_, s)| *s == LISTEN)
        .map(|(p, _)| *p)
        .collect();
    rows.iter()
        .filter(|(p, s)| ![LISTEN, TIME_WAIT, CLOSE].contains(s) && listening.contains(p))
        .count()
}

/// The local ports that sockets listen on (TCP) or are bound to (UDP, any
/// state), from the text of a /proc/net/tcp or udp table.
pub fn bound_ports(table: &str, tcp: bool) -> std::collections::BTreeSet<u16> {
    rows(table)
        .filter(|(_, _, state)| !tcp || *state == LISTEN)
        .map(|(_, port, _)| port)
        .collect()
}

/// The rows of a /proc/net/tcp or udp table that read: the local address
/// as printed, its port, and the socket's state.
fn rows(table: &str) -> impl Iterator<Item = (&str, u16, u8)> {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = u8::from_str_radix(fields.nth(1)?, 16).ok()?;
        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        Some((local, port, state))
    })
}

/// Whether a socket of this namespace listens on TCP `port` (or is bound to
/// UDP `port`), on any address.
pub fn port_in_use(port: u16, tcp: bool) -> bool {
    let kind = if tcp { "tcp" } else { "udp" };
    [kind.to_string(), format!("{kind}6")].iter().any(|t| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{t}"))
            .is_ok_and(|text| bound_ports(&text, tcp).contains(&port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_open_connections_to_a_listener_count() {
        // A listener on :80, an established client connection to it, one in
        // TIME_WAIT, and an outbound connection from port 40000 to a db.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0400000A:0050 0A64A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0400000A:0050 0A64A8C0:D432 06 00000000:00000000 03:00000F5C 00000000     0        0 0 3
   3: 0400000A:9C40 0500000A:0CEA 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
        assert_eq!(count_inbound_open(table), 1);
        assert_eq!(count_inbound_open(""), 0);
        // tcp6: a dual-stack listener on :80 and an IPv4-mapped client.
        let v6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0
   1: 0000000000000000FFFF00000400000A:0050 0000000000000000FFFF00000A64A8C0:D431 01 0
";
        assert_eq!(count_inbound_open(v6), 1);
        assert_eq!(count_inbound_open("header\ngarbage line\n"), 0);
        // Port 80 listens; 0x9C40 is an outbound connection's.
        assert_eq!(
            bound_ports(table, true).into_iter().collect::<Vec<_>>(),
            [80]
        );
        assert_eq!(bound_ports(table, false).len(), 2);
        // The agent's DNS on 127.0.0.11:53 with a client's TCP connection:
        // not the task's.
        let dns = format!(
            "  sl  local_address rem_address   st
   0: {a}:0035 00000000:0000 0A 0
   1: {a}:0035 {a}:B3C8 01 0
",
            a = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 11]))
        );
        assert_eq!(
            count_inbound_open(&format!("{table}{}", &dns[dns.find('\n').unwrap() + 1..])),
            1
        );
    }
}
