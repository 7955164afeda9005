//! Socket options that more than one kind of socket needs.

use std::os::fd::AsRawFd;

/// A socket's kernel buffer, for [`set_buffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    Receive,
    Send,
}

/// Asks for `bytes` of the socket's receive or send buffer. The agent runs
/// with CAP_NET_ADMIN, so it asks past net.core.[rw]mem_max (`SO_*BUFFORCE`),
/// whose default (208 KB on a stock kernel) is far too small for a burst;
/// without the capability it gets up to that cap. Best effort: a smaller
/// buffer only drops more of a burst, so a refusal is logged, not an error.
pub fn set_buffer(sock: &impl AsRawFd, which: Buffer, bytes: usize) {
    let (force, plain) = match which {
        Buffer::Receive => (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        Buffer::Send => (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    };
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |name| {
        // SAFETY: setsockopt with a valid int option value of 4 bytes.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&value as *const libc::c_int).cast(),
                4,
            ) == 0
        }
    };
    if !set(force) && !set(plain) {
        let e = std::io::Error::last_os_error();
        tracing::debug!(?which, bytes, error = %e, "could not set a socket buffer's size");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel granted (it doubles what was asked, for its overhead).
    fn granted(sock: &std::net::UdpSocket, name: libc::c_int) -> usize {
        let mut v: libc::c_int = 0;
        let mut len = 4 as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of 4 bytes.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
        usize::try_from(v).unwrap_or(0)
    }

    fn cap(file: &str) -> usize {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn buffers_are_granted_past_the_cap_when_privileged_else_up_to_it() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a loopback socket");
        let (rmem, wmem) = (
            cap("/proc/sys/net/core/rmem_max"),
            cap("/proc/sys/net/core/wmem_max"),
        );
        // Past both caps, so that only the forced option can grant it.
        let want = (rmem.max(wmem) + (1 << 20)).min(64 << 20);
        set_buffer(&sock, Buffer::Receive, want);
        set_buffer(&sock, Buffer::Send, want);
        // SAFETY: plain syscall.
        let root = unsafe { libc::geteuid() } == 0;
        for (name, cap) in [(libc::SO_RCVBUF, rmem), (libc::SO_SNDBUF, wmem)] {
            let floor = if root { want } else { want.min(cap) };
            assert!(
                granted(&sock, name) >= 2 * floor,
                "option {name}, root {root}"
            );
        }
    }
}
