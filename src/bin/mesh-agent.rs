//! mesh-agent: one per host. Flags in, library calls out.

use clap::Parser;
use mesh::agent::Agent;
use mesh::cluster::{Cluster, ClusterConfig};
use mesh::io::{udp::Underlay, Dataplane};
use mesh::tables::{Tables, TablesCell};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "mesh-agent",
    version,
    about = "The mesh dataplane and control agent for one host"
)]
struct Args {
    /// This host's address on the underlay: VXLAN, gossip and joins use it.
    #[arg(long, value_name = "IP")]
    advertise_addr: Ipv4Addr,
    /// A member to join through (HOST or HOST:PORT); repeat for more.
    #[arg(long, value_name = "HOST[:PORT]")]
    join: Vec<String>,
    /// The cluster's token, from `meshctl cluster join-token` on a member.
    #[arg(long, value_name = "TOKEN")]
    join_token: Option<String>,
    /// The API socket.
    #[arg(long, value_name = "PATH", default_value = mesh::api::DEFAULT_SOCKET)]
    api: PathBuf,
    /// Where the node ID, the token and the attachments are kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/mesh-agent")]
    state_dir: PathBuf,
    /// UDP (gossip) and TCP (joins, cluster requests) port.
    #[arg(long, default_value_t = 7946)]
    gossip_port: u16,
    /// UDP port of the VXLAN underlay.
    #[arg(long, default_value_t = 4789)]
    vxlan_port: u16,
    /// Upstream resolvers for names that are not the cluster's (default: the
    /// nameservers of this host's /etc/resolv.conf).
    #[arg(long, value_name = "IP[:PORT]")]
    dns_upstream: Vec<String>,
    /// Most connections the VIP balancer tracks; new ones beyond are refused.
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    conntrack_max: usize,
    /// Seconds an idle established TCP connection through a VIP is kept.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    conntrack_tcp_timeout: u64,
    /// Seconds an idle UDP flow through a VIP is kept.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    conntrack_udp_timeout: u64,
    /// Seconds a detached task may take to finish its open connections.
    #[arg(long, value_name = "SECONDS", default_value_t = mesh::agent::DEFAULT_DRAIN.as_secs())]
    drain_timeout: u64,
    /// TTL in seconds of the embedded DNS's answers.
    #[arg(long, value_name = "SECONDS", default_value_t = mesh::dns::DEFAULT_TTL)]
    dns_ttl: u32,
    /// Microseconds the dataplane goes on polling after its last packet
    /// before it sleeps: a packet that comes meanwhile is handled without a
    /// thread wake-up (tens of microseconds in a VM), for the CPU the
    /// polling takes (it yields to any thread that wants the core). 0
    /// sleeps at once; at most 1000000.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = mesh::io::driver::DEFAULT_BUSY_POLL.as_micros() as u64)]
    busy_poll: u64,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            e.exit()
        }
        // One line, as every other error of the agent.
        Err(e) => fail(mesh::cli::one_line(&e.to_string())),
    };
    if let Err(e) = check_args(&args) {
        fail(e);
    }
    raise_open_files_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(format!("cannot start the runtime: {e}")),
    };
    if let Err(e) = rt.block_on(run(args)) {
        fail(e);
    }
}

/// Whether HUP was ignored when the agent started (`nohup`).
fn hup_ignored() -> bool {
    // SAFETY: sigaction with a null new action only reads the current one
    // into a zeroed struct of the right type.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// What makes this agent the only one on its host and on its state
/// directory; released when the process ends, however it ends.
struct HostClaim {
    _host: std::fs::File,
    _state: std::fs::File,
}

/// An exclusive lock on `path` (created if need be), or None if another
/// process holds it.
fn lock_file(path: &std::path::Path) -> Result<Option<std::fs::File>, String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(locked.then_some(file))
}

/// Refuses a second agent before it changes anything: in the same network
/// namespace (a host has one dataplane, one TUN, one set of ingress rules),
/// by a lock on a file named after the namespace in root's /run/mesh-agent;
/// and on the same state directory (it would take the first one's
/// attachments for a crashed predecessor's and clear them), by a lock on a
/// file there. Locks go with the process, however it ends.
fn claim_host(state_dir: &std::path::Path) -> Result<HostClaim, String> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| format!("cannot read this process's network namespace: {e}"))?
        .ino();
    let run = std::path::Path::new("/run/mesh-agent");
    std::fs::create_dir_all(run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
    let host = lock_file(&run.join(format!("netns-{netns}.lock")))?
        .ok_or("another mesh-agent is running on this host (network namespace): stop it first")?;
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("state directory {}: {e}", state_dir.display()))?;
    let state = lock_file(&state_dir.join("lock"))
        .map_err(|e| format!("--state-dir {}: {e}", state_dir.display()))?
        .ok_or_else(|| {
            format!(
            "another mesh-agent uses the state directory {}: give each agent its own --state-dir",
            state_dir.display()
        )
        })?;
    Ok(HostClaim {
        _host: host,
        _state: state,
    })
}

/// Raises the soft limit on open files to the hard one. Every container
/// costs the agent descriptors (its TAP, its DNS sockets, their
/// connections and forwards), and the usual soft limit of 1024 would cap a
/// host at a few dozen busy containers.
fn raise_open_files_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 || l.rlim_cur >= l.rlim_max {
            return;
        }
        let was = l.rlim_cur;
        l.rlim_cur = l.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
            tracing::debug!(from = was, to = l.rlim_cur, "raised the open files limit");
        } else {
            tracing::warn!(
                limit = was,
                "cannot raise the open files limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Refuses, before anything is set up, flag values the agent would take
/// and then misbehave with.
fn check_args(a: &Args) -> Result<(), String> {
    let ip = a.advertise_addr;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!(
            "--advertise-addr {ip} is not an address other hosts can reach: give this host's underlay address"
        ));
    }
    for (flag, port) in [
        ("--gossip-port", a.gossip_port),
        ("--vxlan-port", a.vxlan_port),
    ] {
        if port == 0 {
            return Err(format!(
                "{flag} 0: give the port the other hosts use (a fixed one, not 0)"
            ));
        }
    }
    if a.gossip_port == a.vxlan_port {
        return Err(format!(
            "--gossip-port and --vxlan-port are both {}: they need ports of their own",
            a.vxlan_port
        ));
    }
    const DAY: u64 = 86_400;
    // (flag, value, least, most): a conntrack timeout of 0 would forget an
    // idle flow at once (and reset its next packet).
    for (flag, secs, least, most) in [
        (
            "--conntrack-tcp-timeout",
            a.conntrack_tcp_timeout,
            1,
            365 * DAY,
        ),
        (
            "--conntrack-udp-timeout",
            a.conntrack_udp_timeout,
            1,
            365 * DAY,
        ),
        ("--drain-timeout", a.drain_timeout, 0, 7 * DAY),
    ] {
        if secs < least {
            return Err(format!(
                "{flag} {secs}: an idle flow would be forgotten at once (and its next packet reset); give seconds, at least {least}"
            ));
        }
        if secs > most {
            return Err(format!("{flag} {secs}: at most {most} seconds"));
        }
    }
    if a.dns_ttl > 7 * DAY as u32 {
        return Err(format!(
            "--dns-ttl {}: at most {} seconds",
            a.dns_ttl,
            7 * DAY
        ));
    }
    let most = mesh::io::driver::MAX_BUSY_POLL.as_micros();
    if u128::from(a.busy_poll) > most {
        return Err(format!(
            "--busy-poll {}: at most {most} microseconds",
            a.busy_poll
        ));
    }
    if a.conntrack_max == 0 {
        return Err("--conntrack-max must be at least 1".into());
    }
    // The API path is a socket or nothing: a stale socket is replaced, any
    // other file is someone's and stays.
    if let Ok(m) = std::fs::symlink_metadata(&a.api) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(format!(
                "--api {} exists and is not a socket: give a path for the agent's socket",
                a.api.display()
            ));
        }
    }
    Ok(())
}

fn fail(msg: String) -> ! {
    eprintln!("mesh-agent: error: {msg}");
    std::process::exit(1);
}

async fn run(args: Args) -> Result<(), String> {
    // Parsed first, so that a typo is refused before the node joins anything.
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstreams = mesh::dns::forward::upstreams(&args.dns_upstream, &resolv_conf)?;
    // Held for the agent's whole life; checked before anything is touched.
    let _alone = claim_host(&args.state_dir)?;
    // Set up before anything needs undoing. TERM and INT stop the agent
    // cleanly, and so does HUP (the terminal that started it went away).
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch TERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch INT: {e}"))?;
    // Started under `nohup` (HUP ignored): it stays ignored.
    let mut hup = if hup_ignored() {
        None
    } else {
        Some(signal(SignalKind::hangup()).map_err(|e| format!("cannot watch HUP: {e}"))?)
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    // The underlay's interface: its MTU, and its network's prefix (which
    // overlay subnets stay out of).
    let (underlay_mtu, underlay_prefix) = mesh::netns::address(args.advertise_addr)
        .and_then(|a| Some((mesh::netns::mtu_of(&a.interface)?, a.prefix_len)))
        .ok_or_else(|| {
            format!(
                "no interface here has the address {} (--advertise-addr must be this host's)",
                args.advertise_addr
            )
        })?;
    let underlay = Underlay::bind(SocketAddrV4::new(args.advertise_addr, args.vxlan_port))
        .map_err(|e| {
            format!(
                "cannot bind the VXLAN socket {}:{}: {e}",
                args.advertise_addr, args.vxlan_port
            )
        })?;
    let config = ClusterConfig {
        advertise: args.advertise_addr,
        gossip_port: args.gossip_port,
        vxlan_port: args.vxlan_port,
        joins: args.join.clone(),
        join_token: args.join_token.clone(),
        state_dir: args.state_dir.clone(),
        underlay_prefix,
    };
    let timeouts = mesh::pipeline::lb::conntrack::Timeouts {
        tcp_established: std::time::Duration::from_secs(args.conntrack_tcp_timeout),
        udp: std::time::Duration::from_secs(args.conntrack_udp_timeout),
        ..Default::default()
    };
    let balancer = mesh::pipeline::vip::BalancerConfig {
        conntrack_max: args.conntrack_max,
        timeouts,
    };
    // Another agent answering on this API socket owns this host's state:
    // refuse before cleaning up anything it may still be using.
    if tokio::net::UnixStream::connect(&args.api).await.is_ok() {
        return Err(format!(
            "another mesh-agent is serving {}: stop it first, or pass --api and --state-dir of their own",
            args.api.display()
        ));
    }
    let cluster = Cluster::start(config, hostname)
        .await
        .map_err(|e| e.to_string())?;
    let dataplane = Dataplane::spawn(
        underlay,
        Arc::new(TablesCell::new(Tables::default())),
        balancer,
        std::time::Duration::from_micros(args.busy_poll),
    )
    .map_err(|e| e.to_string())?;
    let drain = std::time::Duration::from_secs(args.drain_timeout);
    let agent = Agent::new(
        cluster,
        dataplane,
        underlay_mtu,
        args.dns_ttl,
        upstreams,
        drain,
    );
    agent.remove_stale_attachments();
    agent.start_ingress().await?;
    tokio::spawn(agent.clone().run());
    let api = args.api.clone();
    let served = agent.clone();
    let gate = Arc::new(mesh::api::Gate::default());
    let door = gate.clone();
    let server = tokio::spawn(async move { mesh::api::server::serve(&api, served, door).await });
    let result = tokio::select! {
        r = server => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("API socket {}: {e}", args.api.display())),
            Err(e) => Err(format!("API server stopped: {e}")),
        },
        _ = agent.dataplane.ended() => Err(
            "the dataplane thread stopped (see the log above): no packet moves; restart the agent".into()
        ),
        _ = int.recv() => Ok(()),
        _ = term.recv() => Ok(()),
        _ = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        } => Ok(()),
    };
    // No new requests; those running finish first (an attach saves what it
    // did, a detach ends its drain), bounded: the longest drain, or an
    // attach that waits for the cluster, then for the leader twice.
    gate.stop();
    let _ = std::fs::remove_file(&args.api);
    let bound = drain.max(std::time::Duration::from_secs(10)) + std::time::Duration::from_secs(30);
    if tokio::time::timeout(bound, gate.idle()).await.is_err() {
        tracing::warn!(
            "API requests still running after {}s; stopping anyway",
            bound.as_secs()
        );
    }
    agent.stop_ingress();
    agent.stop_dns().await;
    tracing::info!("mesh-agent stopping");
    result
}
