//! The packet paths of the dataplane thread: frames read from a TAP, from
//! the host's ingress TUN and from the underlay socket, through the
//! pipeline, and written where the verdict says: a TAP (coalesced when it
//! can be), the TUN, or the underlay (in `sendmmsg` batches, super-frames
//! cut into GSO segments).

use super::*;

impl DriverThread {
    pub(super) fn rx_tap(&mut self, port: PortId) {
        let now = Instant::now();
        if let Some(a) = self.activity.get(port as usize) {
            bump(a);
        }
        self.drain(Input::Tap(port), |d, next, vnet, len| {
            d.tap_frame(now, port, next, vnet, len)
        });
    }

    /// Reads what is queued on the TAP or TUN `input` names, up to [`BATCH`]
    /// frames, [`READ_AHEAD`] at a time: each few are read, their tracking
    /// slots asked for, then each handed to `handle` (with its buffer's
    /// index); then the pending datagrams go out.
    fn drain(&mut self, input: Input, mut handle: impl FnMut(&mut Self, usize, VnetHeader, usize)) {
        let mut base = 0;
        while base < BATCH {
            let fd = match input {
                Input::Tap(port) => self.ports.get(port as usize).and_then(Option::as_ref),
                Input::Host => self.host.as_ref(),
                Input::Underlay(_) => None,
            };
            let Some(fd) = fd else {
                break;
            };
            let what = if input == Input::Host {
                "ingress TUN"
            } else {
                "TAP"
            };
            let (got, n) = read_batch(fd, &mut self.bufs[base..], what);
            self.prefetch(input, base, &got[..n]);
            for (k, &(vnet, len)) in got[..n].iter().enumerate() {
                handle(self, base + k, vnet, len);
            }
            base += n;
            if n < READ_AHEAD {
                break;
            }
        }
        self.flush();
    }

    /// One frame a container sent, read into `bufs[next]`.
    fn tap_frame(&mut self, now: Instant, port: PortId, next: usize, vnet: VnetHeader, len: usize) {
        let buf = &mut self.bufs[next];
        let mut pkt = Packet::new(buf, HEADROOM, len);
        pkt.csum_partial = vnet.flags & virtio::F_NEEDS_CSUM != 0;
        let verdict = self.pipeline.process(now, Input::Tap(port), &mut pkt);
        // A frame made here (a refusal) goes without the input's offloads.
        let out = if pkt.plain {
            VnetHeader::default()
        } else {
            vnet
        };
        match verdict {
            // Another container here takes the frame as it came, offloads and all.
            Verdict::ToTap(p) => write_tap(&self.ports, p, &out, pkt.bytes()),
            Verdict::ToUnderlay(dst)
                if vnet.gso_kind() == virtio::GSO_TCPV4 && vnet.gso_size > 0 =>
            {
                let (start, end) = (pkt.start, pkt.end);
                self.flush();
                self.send_super_frame(next, start, end, usize::from(vnet.gso_size), dst);
            }
            Verdict::ToHost => write_host(&self.host, &out, pkt.bytes()),
            Verdict::ToUnderlay(_) if vnet.gso_kind() != virtio::GSO_NONE => {
                bump(&self.pipeline.counters().drops[DropReason::UnsupportedProtocol as usize]);
            }
            Verdict::ToUnderlay(dst) => {
                if vnet.flags & virtio::F_NEEDS_CSUM != 0 {
                    if self.pipeline.peer_is_agent(*dst.ip()) {
                        // Another agent hands it on as partial, as we got it.
                        crate::wire::vxlan::set_csum_partial(pkt.bytes_mut());
                    } else {
                        // The frame starts after the VXLAN header now.
                        let frame = &mut pkt.bytes_mut()[crate::wire::vxlan::HEADER_LEN..];
                        let (start, offset) =
                            (usize::from(vnet.csum_start), usize::from(vnet.csum_offset));
                        if offload::complete_checksum(frame, start, offset).is_err() {
                            bump(&self.pipeline.counters().drops[DropReason::Malformed as usize]);
                            return;
                        }
                    }
                }
                self.pending.push((next, pkt.start, pkt.end, dst));
            }
            Verdict::Drop(_) => {}
        }
    }

    /// Asks the cache for the tracking slots of a batch of `got` frames
    /// read into `bufs[base..]`, before the first is processed (see
    /// `Pipeline::prefetch`).
    fn prefetch(&self, input: Input, base: usize, got: &[(VnetHeader, usize)]) {
        for (buf, &(_, len)) in self.bufs[base..].iter().zip(got) {
            let frame = buf.get(HEADROOM..HEADROOM + len).unwrap_or_default();
            self.pipeline.prefetch(input, frame);
        }
    }

    /// Cuts the encapsulated super-frame in `bufs[i][start..end]` into
    /// segments and sends them scatter-gather: fresh headers, payload in place.
    fn send_super_frame(
        &mut self,
        i: usize,
        start: usize,
        end: usize,
        mss: usize,
        dst: SocketAddrV4,
    ) {
        let full_checksum = !self.pipeline.peer_is_agent(*dst.ip());
        let datagram = &self.bufs[i][start..end];
        let headers = &mut self.segment_headers;
        match offload::segment_tcp4(datagram, mss, full_checksum, headers) {
            Ok(seg) => {
                let headers = &self.segment_headers;
                let piece = |k: usize| {
                    (
                        &headers[k * seg.header_len..(k + 1) * seg.header_len],
                        &datagram[seg.payload(k)],
                    )
                };
                if let Err(e) = self.underlay.send_gather(
                    &mut self.scratch,
                    seg.count,
                    seg.datagram_len(),
                    dst,
                    piece,
                ) {
                    tracing::debug!(error = %e, "underlay GSO send failed");
                }
            }
            Err(r) => bump(&self.pipeline.counters().drops[r as usize]),
        }
    }

    /// Packets from the host stack: published ports, replies to egress, the
    /// host's own traffic to containers. The TUN has no offloads turned on,
    /// so they come whole, with their checksums done.
    pub(super) fn rx_host(&mut self) {
        let now = Instant::now();
        self.drain(Input::Host, |d, next, vnet, len| {
            d.host_packet(now, next, vnet, len)
        });
    }

    /// One packet from the host stack, read into `bufs[next]`.
    fn host_packet(&mut self, now: Instant, next: usize, vnet: VnetHeader, len: usize) {
        let buf = &mut self.bufs[next];
        if vnet.gso_kind() != virtio::GSO_NONE {
            bump(&self.pipeline.counters().drops[DropReason::UnsupportedProtocol as usize]);
            return;
        }
        if vnet.flags & virtio::F_NEEDS_CSUM != 0 {
            let packet = &mut buf[HEADROOM..HEADROOM + len];
            let (start, offset) = (usize::from(vnet.csum_start), usize::from(vnet.csum_offset));
            if offload::complete_checksum(packet, start, offset).is_err() {
                bump(&self.pipeline.counters().drops[DropReason::Malformed as usize]);
                return;
            }
        }
        let mut pkt = Packet::new(buf, HEADROOM, len);
        let verdict = self.pipeline.process(now, Input::Host, &mut pkt);
        let (start, end) = (pkt.start, pkt.end);
        match verdict {
            Verdict::ToTap(p) => write_tap(
                &self.ports,
                p,
                &VnetHeader::default(),
                &self.bufs[next][start..end],
            ),
            Verdict::ToUnderlay(dst) => self.pending.push((next, start, end, dst)),
            Verdict::ToHost => write_host(
                &self.host,
                &VnetHeader::default(),
                &self.bufs[next][start..end],
            ),
            Verdict::Drop(_) => {}
        }
    }

    pub(super) fn rx_underlay(&mut self) {
        let now = Instant::now();
        let got = match self.underlay.recv_batch(
            &mut self.scratch,
            &mut self.bufs,
            HEADROOM,
            &mut self.meta,
        ) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "underlay recvmmsg failed");
                return;
            }
        };
        // The first datagram of each slot stands for the slot (GRO joins
        // datagrams of one flow).
        for (buf, m) in self.bufs.iter().zip(&self.meta[..got]) {
            let first = m.segment.max(1).min(m.len);
            let datagram = buf.get(HEADROOM..HEADROOM + first).unwrap_or_default();
            self.pipeline.prefetch(Input::Underlay(m.from), datagram);
        }
        for i in 0..got {
            let m = self.meta[i];
            let segment = m.segment.max(1);
            // One slot may hold several datagrams of `segment` bytes (UDP GRO).
            let mut at = 0;
            while at < m.len {
                let len = segment.min(m.len - at);
                let datagram = HEADROOM + at;
                at += len;
                let mut pkt = Packet::new(&mut self.bufs[i], datagram, len);
                let verdict = self
                    .pipeline
                    .process(now, Input::Underlay(m.from), &mut pkt);
                // The sender left the inner checksum partial (VXLAN flag).
                let (start, end, partial) = (pkt.start, pkt.end, pkt.csum_partial);
                match verdict {
                    Verdict::ToTap(p) => {
                        let bufs = &self.bufs;
                        let frame = &bufs[i][start..end];
                        let mut sink = |p: PortId, v: &VnetHeader, head: &[u8], parts: &[Part]| {
                            write_parts(&self.ports, bufs, p, v, head, parts)
                        };
                        let here = Part {
                            buf: i as u32,
                            start: start as u32,
                            len: (end - start) as u32,
                        };
                        if !self.coalescer.offer(p, frame, here, partial, &mut sink) {
                            write_tap(&self.ports, p, &partial_vnet(frame, partial), frame);
                        }
                    }
                    Verdict::ToUnderlay(dst) => self.pending.push((i, start, end, dst)),
                    Verdict::ToHost => {
                        let frame = &self.bufs[i][start..end];
                        write_host(&self.host, &partial_vnet(frame, partial), frame);
                    }
                    Verdict::Drop(_) => {}
                }
            }
        }
        let bufs = &self.bufs;
        let mut sink = |p: PortId, v: &VnetHeader, head: &[u8], parts: &[Part]| {
            write_parts(&self.ports, bufs, p, v, head, parts)
        };
        self.coalescer.flush(&mut sink);
        self.flush();
    }

    /// Sends every pending datagram in as few sendmmsg calls as possible.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut out: [(&[u8], SocketAddrV4); BATCH] =
            [(&[], SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)); BATCH];
        // A GRO buffer may leave more than a batch of datagrams to send.
        for chunk in self.pending.chunks(BATCH) {
            for (o, &(i, s, e, dst)) in out.iter_mut().zip(chunk) {
                *o = (&self.bufs[i][s..e], dst);
            }
            let (_, err) = self
                .underlay
                .send_batch(&mut self.scratch, &out[..chunk.len()]);
            if let Some(e) = err {
                tracing::debug!(error = %e, "underlay sendmmsg failed");
            }
        }
        self.pending.clear();
    }
}

/// Frames read from a TAP or TUN before any of them is processed: enough
/// for their tracking lookups to overlap, few enough that the first does
/// not wait long for the others' reads.
const READ_AHEAD: usize = 16;

/// Reads what is queued on a TAP or TUN, up to [`READ_AHEAD`] frames, one
/// per buffer of `bufs` (see [`read_one`]): their headers and lengths, and
/// how many. Reading a few before processing any lets the pipeline ask for
/// their tracking slots at once.
fn read_batch(
    fd: &OwnedFd,
    bufs: &mut [Vec<u8>],
    what: &str,
) -> ([(VnetHeader, usize); READ_AHEAD], usize) {
    let mut got = [(VnetHeader::default(), 0); READ_AHEAD];
    let mut n = 0;
    for (slot, buf) in got.iter_mut().zip(bufs.iter_mut()) {
        let Some(r) = read_one(fd, buf, what) else {
            break;
        };
        *slot = r;
        n += 1;
    }
    (got, n)
}

/// Reads one frame (TAP) or packet (TUN) with its virtio-net header into
/// `buf`: the header lands in the headroom, the frame at [`HEADROOM`].
/// Returns the header and the frame's length; `None` when nothing is queued
/// or the read failed (logged, naming the device `what`).
fn read_one(fd: &OwnedFd, buf: &mut [u8], what: &str) -> Option<(VnetHeader, usize)> {
    let at = HEADROOM - virtio::HEADER_LEN;
    let n = match tap::read(fd, &mut buf[at..]) {
        Ok(Some(n)) => n,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(device = what, error = %e, "read failed");
            return None;
        }
    };
    // A read shorter than the header leaves an empty frame, dropped later.
    let vnet = VnetHeader::parse(&buf[at..HEADROOM]).unwrap_or_default();
    Some((vnet, n.saturating_sub(virtio::HEADER_LEN)))
}

/// The virtio-net header for a decapsulated frame: asking the kernel to
/// finish the checksum the sending agent left partial, else nothing.
fn partial_vnet(frame: &[u8], partial: bool) -> VnetHeader {
    if partial {
        offload::partial_checksum_vnet(frame).unwrap_or_default()
    } else {
        VnetHeader::default()
    }
}

/// Writes the IPv4 packet inside `frame` to the host's TUN; `vnet` describes
/// the frame and is moved to the packet (no Ethernet header on a TUN).
fn write_host(host: &Option<OwnedFd>, vnet: &VnetHeader, frame: &[u8]) {
    let (Some(fd), Some(packet)) = (host, frame.get(crate::wire::ethernet::HEADER_LEN..)) else {
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
        tracing::debug!(error = %e, "ingress TUN write failed");
    }
}

/// Writes a coalesced frame: its headers, then its payload pieces from `bufs`.
fn write_parts(
    ports: &[Option<OwnedFd>],
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
            return;
        };
        *slot = bytes;
        n += 1;
    }
    if let Some(Some(fd)) = ports.get(port as usize) {
        if let Err(e) = tap::write_gather(fd, vnet, head, &pieces[..n]) {
            tracing::debug!(port, error = %e, "TAP write failed");
        }
    }
}

fn write_tap(ports: &[Option<OwnedFd>], port: PortId, vnet: &VnetHeader, frame: &[u8]) {
    if let Some(Some(fd)) = ports.get(port as usize) {
        if let Err(e) = tap::write(fd, vnet, frame) {
            tracing::debug!(port, error = %e, "TAP write failed");
        }
    }
}
