//! One DNS listener pair (UDP and TCP on 127.0.0.11:53) per container
//! namespace. The sockets are bound by a thread that entered the namespace
//! (see [`crate::netns::run_in`]) and served from the agent's runtime by our
//! own loops ([`super::udp`], [`super::tcp`]); both know which container
//! they serve.

use super::handler::Shared;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The address of the embedded DNS inside every container.
pub const DNS_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53);

/// The std sockets bound inside a container namespace.
pub struct Sockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

/// Room for a burst of queries while the runtime is busy elsewhere: a few
/// thousand small datagrams (each costs well under 1 KB of kernel memory
/// queued). The default (208 KB) held ~270, and a container starting many
/// lookups at once lost the rest on a loaded host.
const UDP_RECV_BUFFER: usize = 2 << 20;

/// Binds 127.0.0.11:53 (UDP and TCP) in the calling thread's namespace
/// (`lo` must be up). Call it on a thread inside the container's namespace.
pub fn bind_here() -> std::io::Result<Sockets> {
    let udp = std::net::UdpSocket::bind(SocketAddr::V4(DNS_ADDR))?;
    crate::io::sockopt::set_buffer(&udp, crate::io::sockopt::Buffer::Receive, UDP_RECV_BUFFER);
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
    /// The named namespace whose resolv.conf we wrote.
    resolv_conf: Option<String>,
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
                .map(|()| n.to_string())
                .map_err(|e| tracing::warn!(netns = n, error = %e, "cannot write resolv.conf"))
                .ok()
        });
        Ok(Listener {
            stop,
            loops,
            resolv_conf,
        })
    }

    /// Stops serving and removes the resolv.conf we wrote (putting back
    /// the namespace's own, if it had one). Returns once the
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
        if let Some(name) = &self.resolv_conf {
            remove_resolv_conf(name);
        }
    }
}

/// The first line of every `/etc/netns/NAME/resolv.conf` the agent writes:
/// how a later agent knows the file is ours to remove.
const MARK: &str =
    "# written by mesh-agent: the DNS at 127.0.0.11; goes when the container is detached";

/// What the agent wrote before the mark existed (still recognised as ours).
const OLD_RESOLV_CONF: &str = "nameserver 127.0.0.11\noptions ndots:0\n";

/// Where a namespace's own resolv.conf waits while the agent's is in its
/// place: beside the namespaces' directories, not in one (`ip netns exec`
/// mounts every file of `/etc/netns/NAME/` over `/etc/`).
const SAVED_DIR: &str = "/etc/netns/.mesh-saved";

/// The files of named namespace `name`: its directory under /etc/netns,
/// the resolv.conf there, and where its own one waits.
struct Files {
    dir: PathBuf,
    resolv_conf: PathBuf,
    saved: PathBuf,
}

impl Files {
    fn of(name: &str) -> Files {
        let dir = Path::new("/etc/netns").join(name);
        Files {
            resolv_conf: dir.join("resolv.conf"),
            saved: Path::new(SAVED_DIR).join(name),
            dir,
        }
    }
}

/// What `/etc/netns/NAME/resolv.conf` says, from the host's `host`
/// resolv.conf: ask 127.0.0.11, with the host's search domains (as Docker
/// keeps them), and try every name as given first (`ndots:0`), so service
/// names resolve before any search domain is tried. The host's other
/// options stay, except its own `ndots`.
pub fn resolv_conf(host: &str) -> String {
    let mut text = format!("{MARK}\nnameserver 127.0.0.11\n");
    let mut search = None;
    let mut options = vec![];
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            // The last search or domain line wins, as in glibc.
            Some("search" | "domain") => {
                let domains: Vec<&str> = words.collect();
                if !domains.is_empty() {
                    search = Some(domains.join(" "));
                }
            }
            Some("options") => options.extend(words.filter(|o| !o.starts_with("ndots:"))),
            _ => {}
        }
    }
    if let Some(s) = search {
        text += &format!("search {s}\n");
    }
    options.push("ndots:0");
    text += &format!("options {}\n", options.join(" "));
    text
}

/// Whether `text` is a resolv.conf the agent wrote.
fn is_ours(text: &str) -> bool {
    text.starts_with(MARK) || text == OLD_RESOLV_CONF
}

/// Removes `/etc/netns/NAME/resolv.conf` if it is one we wrote (left by an
/// agent that was killed: nothing answers at 127.0.0.11 any more), and
/// puts back the namespace's own if we had set it aside.
pub fn remove_stale_resolv_conf(name: &str) {
    let f = Files::of(name);
    let current = std::fs::read_to_string(&f.resolv_conf);
    // Ours, or none at all with a saved one waiting (killed in between).
    if current.as_ref().is_ok_and(|c| is_ours(c)) || (current.is_err() && f.saved.exists()) {
        remove_resolv_conf(name);
        tracing::info!(
            netns = name,
            "removed the DNS settings a stopped agent left"
        );
    }
}

/// Takes our resolv.conf out of `/etc/netns/NAME`: the namespace's own
/// back if it was set aside, else nothing (and the directory too if it is
/// empty then). Written in place, so that processes that have the file
/// mounted see the change.
fn remove_resolv_conf(name: &str) {
    let f = Files::of(name);
    match std::fs::read(&f.saved) {
        Ok(own) => {
            if let Err(e) = std::fs::write(&f.resolv_conf, own) {
                tracing::warn!(netns = name, error = %e, "cannot put back the namespace's own resolv.conf (kept in {})", f.saved.display());
                return;
            }
            let _ = std::fs::remove_file(&f.saved);
            let _ = std::fs::remove_dir(SAVED_DIR);
        }
        Err(_) => {
            let _ = std::fs::remove_file(&f.resolv_conf);
            let _ = std::fs::remove_dir(&f.dir);
        }
    }
}

/// Writes `/etc/netns/NAME/resolv.conf`, which `ip netns exec NAME` mounts
/// over /etc/resolv.conf, so glibc in the container asks us. A file of the
/// namespace's own there is kept aside (in [`SAVED_DIR`]) until the agent's
/// goes. Written in place, as [`remove_resolv_conf`] does.
fn write_resolv_conf(name: &str) -> std::io::Result<()> {
    let f = Files::of(name);
    std::fs::create_dir_all(&f.dir)?;
    if let Ok(own) = std::fs::read_to_string(&f.resolv_conf) {
        if !is_ours(&own) {
            std::fs::create_dir_all(SAVED_DIR)?;
            std::fs::write(&f.saved, own)?;
        }
    }
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(&f.resolv_conf, resolv_conf(&host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_containers_resolv_conf_keeps_the_hosts_search_domains() {
        let host = "# generated\nnameserver 10.0.0.53\nsearch corp.example lab.example\n\
                    options ndots:5 timeout:2\noptions rotate\n";
        assert_eq!(
            resolv_conf(host),
            format!(
                "{MARK}\nnameserver 127.0.0.11\nsearch corp.example lab.example\n\
                 options timeout:2 rotate ndots:0\n"
            )
        );
        let bare = resolv_conf("nameserver 1.1.1.1\n");
        assert_eq!(
            bare,
            format!("{MARK}\nnameserver 127.0.0.11\noptions ndots:0\n")
        );
        assert!(is_ours(&bare) && is_ours(OLD_RESOLV_CONF));
        assert!(!is_ours("nameserver 127.0.0.11\n"));
        assert_eq!(
            resolv_conf("domain a.example\nsearch b.example\n")
                .lines()
                .nth(2),
            Some("search b.example")
        );
    }
}
