//! mesh: a userspace overlay and routing-mesh dataplane.
//!
//! # A packet's journey
//!
//! 1. A container writes an Ethernet frame to its `eth0`, a TAP device that the
//!    agent owns; [`io::tap`] reads it into a buffer with headroom in front.
//! 2. [`pipeline::process`](pipeline::Pipeline::process) classifies it: ARP is
//!    answered from the [`tables`] ([`pipeline::arp`]); unicast is switched by
//!    destination MAC ([`pipeline::switch`]).
//! 3. A frame for another host gets a VXLAN header in place ([`pipeline::encap`])
//!    and [`io::udp`] sends it, in batches, to that host's VTEP.
//! 4. The receiving agent reads the datagram, checks the sender is a member and
//!    the VNI is served, strips the header and writes the frame to the
//!    destination container's TAP.
//!
//! On the way, a frame to a service VIP is balanced on the client's host
//! ([`pipeline::vip`]: conntrack, scheduler, DNAT; the reply gets the VIP
//! back). From outside, a published port is steered by policy routing into
//! the host's ingress TUN ([`netns::ingress`], [`io::tun`]); the pipeline
//! tracks the flow, picks a task and rewrites only the destination
//! ([`pipeline::ingress`]), so the task sees the real client, and the task's
//! host sends the replies back through the host the client reached.
//! Containers' traffic to the outside leaves through their own host's stack,
//! masqueraded. The driver reads a batch of frames before it processes any,
//! so that the tracking slots of the whole batch are asked for at once
//! ([`pipeline::Pipeline::prefetch`]). The rest of a burst of datagrams from
//! one VTEP reuses the first one's table lookups (`pipeline::burst`), and
//! IPv4 fragments after the first, which carry no ports, go the way the
//! first went ([`pipeline::fragments`]).
//!
//! # Layout
//!
//! - [`wire`]: zero-copy views of each header (Ethernet, ARP, IPv4, L4, VXLAN).
//! - [`pipeline`]: the sans-IO packet core: `process(now, input, &mut out)`.
//! - [`tables`]: read-mostly snapshots the pipeline looks up.
//! - [`io`]: the only code with file descriptors: TAPs, the ingress TUN, the UDP socket, the driver thread.
//! - [`netns`]: entering a namespace on a dedicated thread; link/addr/route verbs; the host's ingress rules.
//! - [`dns`]: the embedded DNS at 127.0.0.11 in every container (hickory-proto messages, our own UDP and TCP loops).
//! - [`cluster`]: gossip membership (chitchat), replicated state, allocation of VNIs, subnets, IPs.
//! - [`api`]: HTTP/JSON over a unix socket, and the client `meshctl` uses.
//! - [`agent`]: the control side that ties them together on one host.
//! - [`cli`]: what `mesh-agent` and `meshctl` share about their command lines.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod dns;
pub mod io;
pub mod netns;
pub mod pipeline;
pub mod tables;
pub mod wire;
