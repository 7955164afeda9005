//! The writes of the dataplane thread: frames to a container's TAP (whole,
//! or coalesced from pieces) and packets to the host's ingress TUN. A frame
//! the kernel will not take, or with nowhere to go (its TAP gone since the
//! tables were read, no TUN), is counted (`send_failed`); every frame written
//! to a TAP counts as its port's activity, as every frame read does (a
//! draining task that only receives is not quiet).

use super::*;
use crate::pipeline::coalesce::{Part, MAX_PARTS};

/// Where frames are written, with what they are counted in.
pub(super) struct Sinks<'a> {
    pub ports: &'a [Option<OwnedFd>],
    pub host: &'a Option<OwnedFd>,
    /// Per port, bumped for every frame written to it.
    pub activity: &'a [AtomicU64],
    /// Frames the kernel refused.
    pub failed: &'a AtomicU64,
}

impl Sinks<'_> {
    /// Writes `frame` to port `port`'s TAP behind `vnet`.
    pub fn tap(&self, port: PortId, vnet: &VnetHeader, frame: &[u8]) {
        self.parts_of(port, vnet, frame, &[]);
    }

    /// Writes a coalesced frame: its headers, then its payload pieces from `bufs`.
    pub fn parts(
        &self,
        bufs: &[Vec<u8>],
        port: PortId,
        vnet: &VnetHeader,
        head: &[u8],
        parts: &[Part],
    ) {
        let mut pieces: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        let mut n = 0;
        for (slot, p) in pieces.iter_mut().zip(parts) {
            let (start, end) = (p.start as usize, p.start as usize + p.len as usize);
            let Some(bytes) = bufs.get(p.buf as usize).and_then(|b| b.get(start..end)) else {
                bump(self.failed);
                return;
            };
            *slot = bytes;
            n += 1;
        }
        self.parts_of(port, vnet, head, &pieces[..n]);
    }

    fn parts_of(&self, port: PortId, vnet: &VnetHeader, head: &[u8], pieces: &[&[u8]]) {
        // No TAP (detached since the tables were read): dropped, counted.
        let Some(Some(fd)) = self.ports.get(port as usize) else {
            bump(self.failed);
            return;
        };
        match tap::write_gather(fd, vnet, head, pieces) {
            Ok(()) => {
                if let Some(a) = self.activity.get(port as usize) {
                    bump(a);
                }
            }
            Err(e) => {
                bump(self.failed);
                tracing::debug!(port, error = %e, "TAP write failed");
            }
        }
    }

    /// Writes the IPv4 packet inside `frame` to the host's TUN; `vnet`
    /// describes the frame and is moved to the packet (no Ethernet header
    /// on a TUN).
    pub fn host(&self, vnet: &VnetHeader, frame: &[u8]) {
        let (Some(fd), Some(packet)) = (self.host, frame.get(crate::wire::ethernet::HEADER_LEN..))
        else {
            bump(self.failed);
            return;
        };
        let eth = crate::wire::ethernet::HEADER_LEN as u16;
        let mut v = *vnet;
        if v.flags & virtio::F_NEEDS_CSUM != 0 {
            v.csum_start = v.csum_start.saturating_sub(eth);
        }
        if v.gso_kind() != virtio::GSO_NONE {
            v.hdr_len = v.hdr_len.saturating_sub(eth);
        }
        if let Err(e) = tap::write(fd, &v, packet) {
            bump(self.failed);
            tracing::debug!(error = %e, "ingress TUN write failed");
        }
    }
}

/// The virtio-net header for a decapsulated frame: asking the kernel to
/// finish the checksum the sending agent left partial, else nothing.
pub(super) fn partial_vnet(frame: &[u8], partial: bool) -> VnetHeader {
    if partial {
        offload::partial_checksum_vnet(frame).unwrap_or_default()
    } else {
        VnetHeader::default()
    }
}
