//! The packet paths of the dataplane thread: frames read from a TAP, from
//! the host's ingress TUN and from the underlay socket, through the
//! pipeline, and sent where the verdict says: to a TAP (coalesced when it
//! can be) or the TUN (`tx`), or to the underlay (in `sendmmsg` batches,
//! super-frames cut into GSO segments).

use super::tx::{partial_vnet, Sinks};
use super::*;

/// The writers for this thread's TAPs and TUN, borrowed field by field (so
/// that the pipeline or the coalescer can be borrowed beside them).
macro_rules! sinks {
    ($d:expr) => {
        Sinks {
            ports: &$d.ports,
            host: &$d.host,
            activity: &$d.activity[..],
            failed: &$d.pipeline.counters().drops[DropReason::SendFailed as usize],
        }
    };
}

impl DriverThread {
    pub(super) fn rx_tap(&mut self, port: PortId) {
        let now = Instant::now();
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
            let Some(fd) = input_fd(&self.ports, &self.host, input) else {
                break;
            };
            let (got, n, failed) = read_batch(fd, &mut self.bufs[base..]);
            if let Some(e) = failed {
                self.unwatch(input, &e);
            }
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

    /// Stops watching the TAP or TUN `input` names after a read failed for
    /// good (`e`): the interface was deleted under it (`ip link del` in
    /// the container), say. Left in epoll, such an fd is ready forever and
    /// the thread would spin. Its fd stays open until the control side
    /// removes the port (`container detach`).
    fn unwatch(&mut self, input: Input, e: &std::io::Error) {
        let Some(fd) = input_fd(&self.ports, &self.host, input) else {
            return;
        };
        epoll_del(&self.ep, fd);
        match input {
            Input::Tap(port) => tracing::warn!(
                port, error = %e,
                "a container's TAP cannot be read any more (its interface is gone?); no longer reading it: detach the container"
            ),
            _ => tracing::error!(
                error = %e,
                "the ingress TUN cannot be read any more; published ports stop working: restart mesh-agent"
            ),
        }
    }

    /// One frame a container sent, read into `bufs[next]`.
    fn tap_frame(&mut self, now: Instant, port: PortId, next: usize, vnet: VnetHeader, len: usize) {
        if let Some(a) = self.activity.get(port as usize) {
            bump(a);
        }
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
            Verdict::ToTap(p) => sinks!(self).tap(p, &out, pkt.bytes()),
            Verdict::ToUnderlay(dst)
                if vnet.gso_kind() == virtio::GSO_TCPV4 && vnet.gso_size > 0 =>
            {
                let (start, end) = (pkt.start, pkt.end);
                self.flush();
                self.send_super_frame(next, start, end, usize::from(vnet.gso_size), dst);
            }
            Verdict::ToHost => sinks!(self).host(&out, pkt.bytes()),
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
        // Most super-frames fit the header buffer at once; one with a small
        // MSS is sent in several GSO sends.
        let mut from = Some(0);
        while let Some(first) = from {
            let headers = &mut self.segment_headers;
            let seg = match offload::segment_tcp4(datagram, mss, full_checksum, first, headers) {
                Ok(seg) => seg,
                Err(r) => {
                    bump(&self.pipeline.counters().drops[r as usize]);
                    return;
                }
            };
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
                bump(&self.pipeline.counters().drops[DropReason::SendFailed as usize]);
                tracing::debug!(error = %e, "underlay GSO send failed");
                return;
            }
            from = seg.next();
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
            Verdict::ToTap(p) => {
                sinks!(self).tap(p, &VnetHeader::default(), &self.bufs[next][start..end])
            }
            Verdict::ToUnderlay(dst) => self.pending.push((next, start, end, dst)),
            Verdict::ToHost => {
                sinks!(self).host(&VnetHeader::default(), &self.bufs[next][start..end])
            }
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
                        let out = sinks!(self);
                        let mut sink = |p: PortId, v: &VnetHeader, head: &[u8], parts: &[Part]| {
                            out.parts(bufs, p, v, head, parts)
                        };
                        let here = Part {
                            buf: i as u32,
                            start: start as u32,
                            len: (end - start) as u32,
                        };
                        if !self.coalescer.offer(p, frame, here, partial, &mut sink) {
                            out.tap(p, &partial_vnet(frame, partial), frame);
                        }
                    }
                    Verdict::ToUnderlay(dst) => self.pending.push((i, start, end, dst)),
                    Verdict::ToHost => {
                        let frame = &self.bufs[i][start..end];
                        sinks!(self).host(&partial_vnet(frame, partial), frame);
                    }
                    Verdict::Drop(_) => {}
                }
            }
        }
        let bufs = &self.bufs;
        let out = sinks!(self);
        let mut sink = |p: PortId, v: &VnetHeader, head: &[u8], parts: &[Part]| {
            out.parts(bufs, p, v, head, parts)
        };
        self.coalescer.flush(&mut sink);
        self.flush();
    }

    /// Sends every pending datagram in as few sendmmsg calls as possible,
    /// then the later fragments whose first just went.
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.flush_pending();
        }
        if self.pipeline.has_released() {
            self.send_released();
        }
    }

    /// Later fragments that came before their first, made what it became
    /// (rare: sent one by one).
    #[cold]
    fn send_released(&mut self) {
        let counters = self.pipeline.counters().clone();
        let failed = &counters.drops[DropReason::SendFailed as usize];
        let out = Sinks {
            ports: &self.ports,
            host: &self.host,
            activity: &self.activity[..],
            failed,
        };
        let (underlay, scratch) = (&self.underlay, &mut self.scratch);
        self.pipeline.released(|v, frame| match v {
            Verdict::ToTap(p) => out.tap(p, &VnetHeader::default(), frame),
            Verdict::ToHost => out.host(&VnetHeader::default(), frame),
            Verdict::ToUnderlay(dst) => {
                if underlay.send_batch(scratch, &[(frame, dst)]).2.is_some() {
                    bump(failed);
                }
            }
            Verdict::Drop(_) => {}
        });
    }

    fn flush_pending(&mut self) {
        let mut out: [(&[u8], SocketAddrV4); BATCH] =
            [(&[], SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)); BATCH];
        // A GRO buffer may leave more than a batch of datagrams to send.
        for chunk in self.pending.chunks(BATCH) {
            for (o, &(i, s, e, dst)) in out.iter_mut().zip(chunk) {
                *o = (&self.bufs[i][s..e], dst);
            }
            let (_, failed, err) = self
                .underlay
                .send_batch(&mut self.scratch, &out[..chunk.len()]);
            if let Some(e) = err {
                let drops = &self.pipeline.counters().drops[DropReason::SendFailed as usize];
                drops.fetch_add(failed as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(error = %e, failed, "underlay sendmmsg refused datagrams");
            }
        }
        self.pending.clear();
    }
}

/// The TAP (among `ports`) or TUN (`host`) that `input` names, if it is
/// (still) open. Takes the fields, so that the buffers can be borrowed beside.
fn input_fd<'a>(
    ports: &'a [Option<OwnedFd>],
    host: &'a Option<OwnedFd>,
    input: Input,
) -> Option<&'a OwnedFd> {
    match input {
        Input::Tap(port) => ports.get(port as usize).and_then(Option::as_ref),
        Input::Host => host.as_ref(),
        Input::Underlay(_) => None,
    }
}

/// Frames read from a TAP or TUN before any of them is processed: enough
/// for their tracking lookups to overlap, few enough that the first does
/// not wait long for the others' reads.
const READ_AHEAD: usize = 16;

/// Reads what is queued on a TAP or TUN, up to [`READ_AHEAD`] frames, one
/// per buffer of `bufs` (see [`read_one`]): their headers and lengths, how
/// many, and the error if a read failed for good. Reading a few before
/// processing any lets the pipeline ask for their tracking slots at once.
fn read_batch(
    fd: &OwnedFd,
    bufs: &mut [Vec<u8>],
) -> (
    [(VnetHeader, usize); READ_AHEAD],
    usize,
    Option<std::io::Error>,
) {
    let mut got = [(VnetHeader::default(), 0); READ_AHEAD];
    let mut n = 0;
    for (slot, buf) in got.iter_mut().zip(bufs.iter_mut()) {
        match read_one(fd, buf) {
            Ok(Some(r)) => *slot = r,
            Ok(None) => break,
            Err(e) => return (got, n, Some(e)),
        }
        n += 1;
    }
    (got, n, None)
}

/// Reads one frame (TAP) or packet (TUN) with its virtio-net header into
/// `buf`: the header lands in the headroom, the frame at [`HEADROOM`].
/// Returns the header and the frame's length; `None` when nothing is queued
/// (or a signal came first); an error when the device cannot be read.
fn read_one(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<(VnetHeader, usize)>> {
    let at = HEADROOM - virtio::HEADER_LEN;
    let n = match tap::read(fd, &mut buf[at..]) {
        Ok(Some(n)) => n,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(None),
        Err(e) => return Err(e),
    };
    // A read shorter than the header leaves an empty frame, dropped later;
    // a length beyond the buffer (a device that reports what it truncated)
    // is held to what is there.
    let vnet = VnetHeader::parse(&buf[at..HEADROOM]).unwrap_or_default();
    let len = n
        .saturating_sub(virtio::HEADER_LEN)
        .min(buf.len().saturating_sub(HEADROOM));
    Ok(Some((vnet, len)))
}
