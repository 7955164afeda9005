//! Container ports: TAP devices owned by the agent.
//!
//! A TAP is created in the container's namespace (by a thread that entered it,
//! see [`crate::netns::run_in`]) and its fd is handed to the dataplane. The
//! device lives as long as that fd: closing it removes the interface, which is
//! how detach (and an agent that exits) leaves nothing behind. Opening with
//! `IFF_VNET_HDR` and `TUNSETPERSIST` (so a restarted agent can adopt its TAPs
//! by name) are the two flags a later change adds here.

use crate::netns::NetnsError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Creates TAP `name` in the calling thread's namespace, non-blocking.
pub fn create(name: &str) -> Result<OwnedFd, NetnsError> {
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
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetnsError::Config(format!(
            "invalid interface name '{name}'"
        )));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
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
            "cannot create TAP {name}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

/// Reads one frame; `Ok(None)` when nothing is queued.
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

/// Writes one frame to the container.
#[inline]
pub fn write(fd: &OwnedFd, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: frame is valid for reads of frame.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
