//! Entering network namespaces, and the few link/addr/route verbs the agent
//! needs inside them, named like `ip` verbs.
//!
//! `setns` changes the calling thread only, so [`run_in`] does the work on a
//! dedicated short-lived thread and hands back what it opened (a TAP fd keeps
//! working after the thread is gone); a tokio worker never changes namespace.
//!
//! The verbs use the classic `SIOCSIF*`/`SIOCADDRT` ioctls on a socket opened
//! inside the namespace: for one interface with one address and one default
//! route that is all the kernel needs, and it spares us a netlink stack.

mod command;
pub mod ingress;
mod ioctl;
pub mod sockets;

pub use ioctl::{
    addr_add, address, check_ifname, ipv4_addresses, link_exists, link_set_mac, link_set_mtu,
    link_set_up, mtu_of, route_add_default, InterfaceAddress,
};

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors from entering a namespace or configuring a link in it.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "network namespace {0} not found (create it with `ip netns add NAME`, or pass its path)"
    )]
    NotFound(String),
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source} (mesh-agent needs CAP_SYS_ADMIN)")]
    Enter {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the namespace thread died")]
    ThreadDied,
}

/// Whether `path` is a namespace file (nsfs: a bound `/run/netns/NAME` or a
/// `/proc/PID/ns/*`), not any other file.
pub fn is_netns(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed statfs for the kernel to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    let kind = st.f_type as i64;
    kind == NSFS_MAGIC
}

/// Which namespace `path` is now (device and inode of the nsfs file), or
/// None if there is none there: a namespace deleted (`ip netns del`), or
/// its process gone, is no longer at its path, and one made again under
/// the same name is another.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// The path of a namespace given as `NAME` (under /var/run/netns) or as a path.
pub fn resolve(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new("/var/run/netns").join(name_or_path)
    }
}

/// One spelling per namespace: a path to a named namespace
/// (`/run/netns/NAME`, `/var/run/netns/NAME`) becomes NAME, any other path
/// its canonical form, so that `c1` and `/run/netns/c1` are one container.
pub fn canonical(name_or_path: &str) -> String {
    if !name_or_path.contains('/') {
        return name_or_path.to_string();
    }
    let path = std::fs::canonicalize(name_or_path).unwrap_or_else(|_| PathBuf::from(name_or_path));
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name))
            if std::fs::canonicalize("/var/run/netns").is_ok_and(|d| d == dir) =>
        {
            name.to_string()
        }
        _ => path.to_string_lossy().into_owned(),
    }
}

/// The name of a named namespace (for /etc/netns/NAME), or None for a path.
pub fn name_of(name_or_path: &str) -> Option<&str> {
    (!name_or_path.contains('/')).then_some(name_or_path)
}

/// Runs `work` on a new thread inside the network namespace at `path`.
pub fn run_in<T, F>(path: &Path, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetnsError> + Send + 'static,
{
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(NetnsError::NotFound(shown));
    }
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: shown.clone(),
        source,
    })?;
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            // SAFETY: setns on an fd we own; it affects only this thread,
            // which ends when `work` returns.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(NetnsError::Enter {
                    path: shown,
                    source: std::io::Error::last_os_error(),
                });
            }
            work()
        })
        .map_err(|e| {
            NetnsError::Config(format!("cannot start a thread to enter the namespace: {e}"))
        })?
        .join()
        .map_err(|_| NetnsError::ThreadDied)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_prefix_and_mtu() {
        use std::net::Ipv4Addr;
        let lo = Ipv4Addr::LOCALHOST;
        let all = ipv4_addresses().expect("the kernel lists addresses");
        assert!(
            all.iter().any(|a| a.address == lo && a.interface == "lo"),
            "{all:?}"
        );
        let a = address(lo).expect("loopback's address");
        assert_eq!((a.interface.as_str(), a.prefix_len), ("lo", 8));
        assert!(mtu_of(&a.interface).is_some_and(|m| m >= 1500));
        assert_eq!(address(Ipv4Addr::new(192, 0, 2, 77)), None);
    }

    #[test]
    fn only_namespace_files_are_namespaces() {
        assert!(is_netns(Path::new("/proc/self/ns/net")));
        assert!(!is_netns(Path::new("/proc/self/status")));
        assert!(!is_netns(Path::new("/")));
        assert!(!is_netns(Path::new("/no/such/file")));
    }
}
