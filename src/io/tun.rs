//! The ingress TUN: the host stack's door into the dataplane.
//!
//! One TUN device in the host's namespace carries every packet between the
//! host stack and the overlay: published ports (steered here by policy
//! routing, see [`crate::netns::ingress`]), containers' egress and its
//! replies, and the host's own traffic to containers. A TUN (IP packets, no
//! Ethernet) because the host side is routed, not switched.
//!
//! It has a virtio-net header like the TAPs, so that a TCP super-frame of a
//! local task can be handed to the host whole (the kernel cuts it where it
//! forwards it), but no offloads are turned on for what the host sends us:
//! those packets come whole, checksums done.

use super::tap;
use crate::netns::NetnsError;
use std::os::fd::OwnedFd;

/// The ingress device's name.
pub const NAME: &str = "mesh-ingress";

/// Creates the ingress TUN in the calling thread's namespace. It lives as
/// long as the fd: an agent that exits leaves no device behind.
pub fn create(name: &str) -> Result<OwnedFd, NetnsError> {
    tap::open(name, libc::IFF_TUN)
}
