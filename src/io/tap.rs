//! Container ports: TAP devices owned by the agent.
//!
//! A TAP is created in the container's namespace (by a thread that entered it,
//! see [`crate::netns::run_in`]) and its fd is handed to the dataplane. The
//! device lives as long as that fd: closing it removes the interface, which is
//! how detach (and an agent that exits) leaves nothing behind.
//! (`TUNSETPERSIST`, so that a restarted agent could adopt its TAPs by name,
//! is the flag a later change adds here.)
//!
//! Every TAP is opened with `IFF_VNET_HDR` and offloads on (`TUNSETOFFLOAD`:
//! checksum, TSO4): the container's TCP hands us super-frames of up to 64 KB
//! behind a virtio-net header instead of 45 separate frames, and we hand it
//! coalesced ones the same way. Each read and write carries that header.

use crate::netns::NetnsError;
use crate::wire::virtio::VnetHeader;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Creates TAP `name` in the calling thread's namespace, non-blocking.
pub fn create(name: &str) -> Result<OwnedFd, NetnsError> {
    let fd = open(name, libc::IFF_TAP)?;
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
    // SAFETY: TUNSETOFFLOAD takes the flags by value.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            offloads as libc::c_ulong,
        )
    } < 0
    {
        // Without offloads the kernel sends plain frames (still behind a
        // virtio-net header): slower, but correct.
        tracing::warn!(tap = name, error = %std::io::Error::last_os_error(), "TAP offloads refused; running without TSO");
    }
    Ok(fd)
}

/// Opens /dev/net/tun as device `name` of `kind` (`IFF_TAP` or `IFF_TUN`),
/// non-blocking, with a virtio-net header on every read and write.
pub(super) fn open(name: &str, kind: libc::c_int) -> Result<OwnedFd, NetnsError> {
    // SAFETY: open(2) of a fixed path; the fd is owned right away.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(NetnsError::Config(format!(
            "cannot open /dev/net/tun: {} (is the tun module loaded?)",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd is fresh and valid.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    crate::netns::check_ifname(name)?;
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (kind | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to an ifreq that lives for the call.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut libc::ifreq,
        )
    } < 0
    {
        return Err(NetnsError::Config(format!(
            "cannot create device {name}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

/// Reads one virtio-net header and frame; `Ok(None)` when nothing is queued.
#[inline]
pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// Writes one frame to the container, behind its virtio-net header.
#[inline]
pub fn write(fd: &OwnedFd, vnet: &VnetHeader, frame: &[u8]) -> std::io::Result<()> {
    write_gather(fd, vnet, frame, &[])
}

/// Writes one frame gathered from pieces (headers, then payloads where they
/// lie) behind its virtio-net header, in one `writev`.
#[inline]
pub fn write_gather(
    fd: &OwnedFd,
    vnet: &VnetHeader,
    head: &[u8],
    rest: &[&[u8]],
) -> std::io::Result<()> {
    const MAX_IOV: usize = 2 + crate::pipeline::coalesce::MAX_PARTS;
    let hdr = vnet.to_bytes();
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    iov[0] = libc::iovec {
        iov_base: hdr.as_ptr() as *mut _,
        iov_len: hdr.len(),
    };
    iov[1] = libc::iovec {
        iov_base: head.as_ptr() as *mut _,
        iov_len: head.len(),
    };
    let mut n = 2;
    for piece in rest.iter().take(MAX_IOV - 2) {
        iov[n] = libc::iovec {
            iov_base: piece.as_ptr() as *mut _,
            iov_len: piece.len(),
        };
        n += 1;
    }
    // SAFETY: every iovec points at memory valid for reads for the call.
    let r = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), n as libc::c_int) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
