//! One DNS listener pair (UDP and TCP on 127.0.0.11:53) per container
//! namespace. The sockets are bound by a thread that entered the namespace
//! (see [`crate::netns::run_in`]) and served from the agent's runtime by our
//! own loops ([`super::udp`], [`super::tcp`]); both know which container
//! they serve.

use super::handler::Shared;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The address of the embedded DNS inside every container.
pub const DNS_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53);

/// The std sockets bound inside a container namespace.
pub struct Sockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

/// Binds 127.0.0.11:53 (UDP and TCP) in the calling thread's namespace
/// (`lo` must be up). Call it on a thread inside the container's namespace.
pub fn bind_here() -> std::io::Result<Sockets> {
    let udp = std::net::UdpSocket::bind(SocketAddr::V4(DNS_ADDR))?;
    let tcp = std::net::TcpListener::bind(SocketAddr::V4(DNS_ADDR))?;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    Ok(Sockets { udp, tcp })
}

/// A running listener; dropping it does not stop it, [`Listener::stop`] does.
pub struct Listener {
    stop: CancellationToken,
    /// The UDP and TCP loops; each owns its socket.
    loops: [tokio::task::JoinHandle<()>; 2],
    resolv_conf: Option<PathBuf>,
}

impl Listener {
    /// Serves `sockets` for the container in `netns` (must run inside the runtime).
    pub fn start(netns: &str, sockets: Sockets, shared: Arc<Shared>) -> std::io::Result<Listener> {
        let udp = tokio::net::UdpSocket::from_std(sockets.udp)?;
        let tcp = tokio::net::TcpListener::from_std(sockets.tcp)?;
        let stop = CancellationToken::new();
        let container = Arc::new(super::Container::new(netns));
        let loops = [
            tokio::spawn(super::udp::serve(
                udp,
                container.clone(),
                shared.clone(),
                stop.clone(),
            )),
            tokio::spawn(super::tcp::serve(tcp, container, shared, stop.clone())),
        ];
        let resolv_conf = crate::netns::name_of(netns).and_then(|n| {
            write_resolv_conf(n)
                .map_err(|e| tracing::warn!(netns = n, error = %e, "cannot write resolv.conf"))
                .ok()
        });
        Ok(Listener {
            stop,
            loops,
            resolv_conf,
        })
    }

    /// Stops serving and removes the resolv.conf we wrote. Returns once the
    /// sockets are closed (bounded), so the namespace can be attached again
    /// at once: 127.0.0.11:53 is free to bind.
    pub async fn stop(self) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        for l in self.loops {
            let abort = l.abort_handle();
            if tokio::time::timeout_at(deadline, l).await.is_err() {
                tracing::warn!("a DNS listener took over 2 s to stop; aborted");
                abort.abort();
            }
        }
        if let Some(path) = self.resolv_conf {
            let _ = std::fs::remove_file(&path);
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// What `/etc/netns/NAME/resolv.conf` says: ask 127.0.0.11, and try every
/// name as given first (`ndots:0`), so service names resolve without search domains.
pub const RESOLV_CONF: &str = "nameserver 127.0.0.11\noptions ndots:0\n";

/// Removes `/etc/netns/NAME/resolv.conf` if it is the one we write (left
/// by an agent that was killed: nothing answers at 127.0.0.11 any more).
pub fn remove_stale_resolv_conf(name: &str) {
    let dir = PathBuf::from("/etc/netns").join(name);
    let path = dir.join("resolv.conf");
    if std::fs::read_to_string(&path).is_ok_and(|c| c == RESOLV_CONF) {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        tracing::info!(
            netns = name,
            "removed the DNS settings a stopped agent left"
        );
    }
}

/// Writes `/etc/netns/NAME/resolv.conf`, which `ip netns exec NAME` mounts
/// over /etc/resolv.conf, so glibc in the container asks us.
fn write_resolv_conf(name: &str) -> std::io::Result<PathBuf> {
    let dir = PathBuf::from("/etc/netns").join(name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("resolv.conf");
    std::fs::write(&path, RESOLV_CONF)?;
    Ok(path)
}
