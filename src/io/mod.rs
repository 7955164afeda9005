//! The I/O edge: the only code that owns file descriptors.
//!
//! - [`tap`]: container TAP devices, opened inside the container's namespace.
//! - [`udp`]: the underlay VXLAN socket, read and written in batches
//!   (`recvmmsg`/`sendmmsg`).
//! - [`tun`]: the ingress TUN in the host's namespace: published ports,
//!   egress and the host's traffic to containers.
//! - [`sockopt`]: socket buffers asked past the system's cap.
//! - [`driver`]: the dataplane thread: epoll over the TAPs and the socket,
//!   bounded work per wake-up, buffers allocated once.

pub mod driver;
pub mod sockopt;
pub mod tap;
pub mod tun;
pub mod udp;

pub use driver::{Dataplane, DataplaneError};
