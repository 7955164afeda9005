//! Forwarding names that are not ours to the upstream resolvers, from the
//! agent's own (host) network namespace.
//!
//! The client's query goes out as it came (same ID, flags and EDNS) to each
//! upstream in turn: UDP for UDP clients, TCP for TCP clients. An upstream
//! that times out or answers SERVFAIL or REFUSED is skipped; any other answer
//! (NXDOMAIN with its SOA included) is relayed. When every upstream fails the
//! client gets SERVFAIL. Forwards in flight are bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// How long one upstream gets to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
/// Forwarded queries in flight at once, across all containers (one socket
/// each; Docker's embedded DNS allows as many). With each container held to
/// [`crate::dns::MAX_FORWARDS_PER_CONTAINER`], it takes sixteen containers
/// whose queries all go unanswered to use them up.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Why a forward produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// Too many forwards in flight: refused at once.
    Overloaded,
    /// No upstream configured.
    NoUpstream,
    /// Every upstream timed out or failed.
    AllFailed,
}

/// The upstream resolvers and the bound on forwards in flight.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    in_flight: Arc<Semaphore>,
}

/// RCODEs that send us to the next upstream.
const SERVFAIL: u8 = 2;
const REFUSED: u8 = 5;

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends `query` (wire bytes) upstream; returns the first acceptable answer.
    pub async fn forward(&self, query: &[u8], tcp: bool) -> Result<Vec<u8>, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let _permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ForwardError::Overloaded)?;
        for up in &self.upstreams {
            let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange(*up, query, tcp)).await;
            match answer {
                Ok(Ok(bytes)) if bytes.len() >= 12 => {
                    let rcode = bytes[3] & 0x0f;
                    if rcode == SERVFAIL || rcode == REFUSED {
                        tracing::debug!(upstream = %up, rcode, "upstream failed; trying the next");
                        continue;
                    }
                    return Ok(bytes);
                }
                Ok(Ok(_)) => tracing::debug!(upstream = %up, "upstream answer too short"),
                Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "upstream unreachable"),
                Err(_) => tracing::debug!(upstream = %up, "upstream timed out"),
            }
        }
        Err(ForwardError::AllFailed)
    }
}

/// One query/answer exchange with one upstream.
async fn exchange(up: SocketAddr, query: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 65535];
    if tcp {
        let len =
            u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too long"))?;
        let mut s = TcpStream::connect(up).await?;
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(query).await?;
        let n = usize::from(s.read_u16().await?);
        s.read_exact(&mut buf[..n]).await?;
        buf.truncate(n);
        // Relayed as it came: it must be the answer to this query.
        if n < 12 || query.len() < 2 || buf[..2] != query[..2] {
            return Err(std::io::Error::other("the upstream answered another query"));
        }
        return Ok(buf);
    }
    let sock = UdpSocket::bind(if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?;
    // Connected: the kernel drops datagrams from anyone but the upstream.
    sock.connect(up).await?;
    sock.send(query).await?;
    loop {
        let n = sock.recv(&mut buf).await?;
        if n >= 12 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// The upstreams to use: the ones given, else the nameservers of the host's
/// resolv.conf (read in the agent's namespace), skipping loopback ones that
/// would point back at a container's own 127.0.0.11.
pub fn upstreams(given: &[String], resolv_conf: &str) -> Result<Vec<SocketAddr>, String> {
    if !given.is_empty() {
        return given.iter().map(|g| parse_upstream(g)).collect();
    }
    Ok(resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

/// `IP` or `IP:PORT`.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("invalid --dns-upstream '{s}': expected IP or IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_from_flags_or_resolv_conf() {
        let conf = "# comment\nnameserver 192.0.2.53\nsearch example\nnameserver 2001:db8::1\n";
        assert_eq!(
            upstreams(&[], conf).unwrap(),
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            upstreams(&["10.1.1.1:5353".into(), "10.1.1.2".into()], conf).unwrap(),
            vec![
                "10.1.1.1:5353".parse().unwrap(),
                "10.1.1.2:53".parse().unwrap()
            ]
        );
        assert!(upstreams(&["nope".into()], conf).is_err());
    }

    /// A fake upstream on loopback answering with `rcode`.
    async fn upstream(rcode: u8) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let mut a = buf[..n].to_vec();
                a[2] |= 0x80;
                a[3] = (a[3] & 0xf0) | rcode;
                let _ = s.send_to(&a, from).await;
            }
        });
        addr
    }

    fn query() -> Vec<u8> {
        // ID 0x1234, RD, one question: "a." A IN.
        vec![
            0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
        ]
    }

    #[tokio::test]
    async fn servfail_and_refused_move_on_nxdomain_is_relayed() {
        let f = Forwarder::new(vec![
            upstream(SERVFAIL).await,
            upstream(REFUSED).await,
            upstream(3).await,
        ]);
        let a = f.forward(&query(), false).await.unwrap();
        assert_eq!(a[3] & 0x0f, 3);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        let all_bad = Forwarder::new(vec![upstream(SERVFAIL).await]);
        assert_eq!(
            all_bad.forward(&query(), false).await,
            Err(ForwardError::AllFailed)
        );
        assert_eq!(
            Forwarder::new(vec![]).forward(&query(), false).await,
            Err(ForwardError::NoUpstream)
        );
    }
}
