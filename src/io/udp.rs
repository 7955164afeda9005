//! The underlay socket: VXLAN datagrams to and from other hosts' VTEPs.
//!
//! One UDP socket bound to ADVERTISE_ADDR:4789, with the kernel's UDP offloads:
//! - receive: `UDP_GRO`, so one `recvmmsg` slot may hold many same-sized
//!   datagrams back to back (the control message says their size);
//! - send: `UDP_SEGMENT` (GSO), so the datagrams cut from one TCP super-frame
//!   leave in one message and cross the host as one buffer. Where the kernel
//!   refuses GSO, sending falls back for good to one datagram per slot.
//!
//! Plain datagrams go out with `sendmmsg`. The scratch arrays for all of it
//! are allocated once ([`Batch`]); the datagrams stay in the caller's buffers.

use super::sockopt::{self, Buffer};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// Most segments in one GSO message (the kernel's limit is 64 or 128).
const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one UDP message: an IPv4 packet is at most 64 KB.
const MAX_UDP_PAYLOAD: usize = 65507;
/// Bytes of control-message room per slot.
const CTRL_LEN: usize = 64;

/// The VXLAN socket.
pub struct Underlay {
    sock: Socket,
    gso: bool,
    gro: bool,
    /// A wait for room in the socket ran out: until a send goes through
    /// whole again, sends that find no room drop at once (see `sendmmsg`).
    congested: std::cell::Cell<bool>,
}

/// One received message: its length, sender, and the size of each datagram
/// in it when the kernel coalesced several (`UDP_GRO`), else its length.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    pub segment: usize,
}

impl Received {
    pub const EMPTY: Received = Received {
        len: 0,
        from: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        segment: 0,
    };
}

/// How long a send waits for room in the socket's buffer before giving up.
const SEND_WAIT_MS: libc::c_int = 20;

impl Underlay {
    /// Binds ADDR:PORT with large kernel buffers and the offloads the kernel
    /// grants. Sends wait for room, briefly (see `sendmmsg`); receives never do.
    pub fn bind(addr: SocketAddrV4) -> std::io::Result<Underlay> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sockopt::set_buffer(&sock, Buffer::Receive, 4 << 20);
        sockopt::set_buffer(&sock, Buffer::Send, 4 << 20);
        sock.bind(&SocketAddr::V4(addr).into())?;
        let gro = set_udp_option(&sock, libc::UDP_GRO, 1);
        if !gro {
            tracing::warn!(
                "the kernel refused UDP_GRO on the VXLAN socket; receiving one datagram per slot"
            );
        }
        // Whether the kernel knows UDP GSO at all (segment size 0: off by
        // default, each send asks for it with a control message).
        let gso = set_udp_option(&sock, libc::UDP_SEGMENT, 0);
        if !gso {
            tracing::warn!("the kernel has no UDP GSO; sending one datagram per segment");
        }
        Ok(Underlay {
            sock,
            gso,
            gro,
            congested: std::cell::Cell::new(false),
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Receives up to `bufs.len()` messages, each into `bufs[i][offset..]`.
    pub fn recv_batch(
        &self,
        scratch: &mut Batch,
        bufs: &mut [Vec<u8>],
        offset: usize,
        meta: &mut [Received],
    ) -> std::io::Result<usize> {
        let n = bufs.len().min(meta.len()).min(scratch.capacity);
        scratch.reset();
        for buf in bufs.iter_mut().take(n) {
            let at = offset.min(buf.len());
            let tail = &mut buf[at..];
            scratch.iovs.push(libc::iovec {
                iov_base: tail.as_mut_ptr().cast(),
                iov_len: tail.len(),
            });
        }
        for i in 0..n {
            scratch.push_hdr(i, i, 1, self.gro);
        }
        // SAFETY: hdrs point into iovs/addrs/ctrl and the caller's buffers,
        // all alive and unmoved for the call.
        let got = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                scratch.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let got = got as usize;
        for (i, m) in meta.iter_mut().enumerate().take(got) {
            let len = scratch.hdrs[i].msg_len as usize;
            let segment = scratch.gro_size(i).filter(|s| *s > 0).unwrap_or(len);
            *m = Received {
                len,
                from: scratch.addr_at(i),
                segment,
            };
        }
        Ok(got)
    }

    /// Sends every datagram in `out` with as few `sendmmsg` calls as the
    /// kernel allows. A datagram the kernel refuses (no route to its VTEP,
    /// say) is skipped and the rest still go; when the socket has no room
    /// left, the rest of the batch is given up. Returns how many were sent,
    /// how many were not, and the first error.
    pub fn send_batch(
        &self,
        scratch: &mut Batch,
        out: &[(&[u8], SocketAddrV4)],
    ) -> (usize, usize, Option<std::io::Error>) {
        let (mut at, mut failed, mut first) = (0, 0, None);
        while at < out.len() {
            let n = (out.len() - at).min(scratch.capacity);
            scratch.reset();
            for (i, (bytes, dst)) in out[at..at + n].iter().enumerate() {
                scratch.iovs.push(libc::iovec {
                    iov_base: bytes.as_ptr() as *mut _,
                    iov_len: bytes.len(),
                });
                scratch.addrs[i] = sockaddr_of(*dst);
            }
            for i in 0..n {
                scratch.push_hdr(i, i, 1, false);
            }
            match self.sendmmsg(scratch, n) {
                Ok(r) => at += r,
                Err(e) => {
                    let full = matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM)
                    );
                    let skip = if full { out.len() - at } else { 1 };
                    at += skip;
                    failed += skip;
                    first.get_or_insert(e);
                }
            }
        }
        (at - failed, failed, first)
    }

    /// Sends `count` datagrams to `dst`, datagram `i` being the bytes of
    /// `piece(i).0` then `piece(i).1` (headers, then payload where it lies):
    /// scatter-gather, as GSO messages of `segment`-byte datagrams where the
    /// kernel allows it. Every datagram but the last must be `segment` bytes.
    pub fn send_gather<'a>(
        &mut self,
        scratch: &mut Batch,
        count: usize,
        segment: usize,
        dst: SocketAddrV4,
        piece: impl Fn(usize) -> (&'a [u8], &'a [u8]),
    ) -> std::io::Result<()> {
        if segment == 0 || count == 0 {
            return Ok(());
        }
        if self.gso {
            match self.send_gso(scratch, count, segment, dst, &piece) {
                Ok(()) => return Ok(()),
                // This send only (segments too big for the route's MTU, a
                // blackhole route): one datagram per slot this time.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(error = %e, "the kernel refused this GSO send; sending it datagram by datagram");
                }
                // The kernel cannot do UDP GSO at all.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
                    ) =>
                {
                    tracing::warn!(error = %e, "the kernel refused UDP GSO; sending one datagram per slot from now on");
                    self.gso = false;
                }
                Err(e) => return Err(e),
            }
        }
        let mut done = 0;
        while done < count {
            let n = (count - done).min(scratch.capacity);
            scratch.reset();
            for i in 0..n {
                let (h, p) = piece(done + i);
                scratch.push_iov(h);
                scratch.push_iov(p);
                scratch.addrs[i] = sockaddr_of(dst);
            }
            for i in 0..n {
                scratch.push_hdr(i, 2 * i, 2, false);
            }
            done += self.sendmmsg(scratch, n)?;
        }
        Ok(())
    }

    fn send_gso<'a>(
        &self,
        scratch: &mut Batch,
        count: usize,
        segment: usize,
        dst: SocketAddrV4,
        piece: &impl Fn(usize) -> (&'a [u8], &'a [u8]),
    ) -> std::io::Result<()> {
        let per_message = (MAX_UDP_PAYLOAD / segment).clamp(1, MAX_GSO_SEGMENTS);
        let mut done = 0;
        while done < count {
            scratch.reset();
            let mut messages = 0;
            let mut first = done;
            while first < count
                && messages < scratch.capacity
                && scratch.iovs.len() + 2 * per_message <= scratch.iovs.capacity()
            {
                let last = (first + per_message).min(count);
                for i in first..last {
                    let (h, p) = piece(i);
                    scratch.push_iov(h);
                    scratch.push_iov(p);
                }
                scratch.addrs[messages] = sockaddr_of(dst);
                messages += 1;
                first = last;
            }
            let mut iov = 0;
            let mut seg_start = done;
            for m in 0..messages {
                let n = (count - seg_start).min(per_message);
                scratch.push_hdr(m, iov, 2 * n, false);
                if n > 1 {
                    scratch.set_segment(m, segment as u16);
                }
                iov += 2 * n;
                seg_start += n;
            }
            let sent = self.sendmmsg(scratch, messages)?;
            done = (done + sent * per_message).min(count);
        }
        Ok(())
    }

    /// One sendmmsg over the first `n` prepared headers; a call that sends
    /// nothing is an error, so callers always make progress or stop.
    ///
    /// When the socket's buffer is full it waits for room (back-pressure
    /// into the TAP reads: the containers' TCP slows down rather than
    /// losing segments), but at most [`SEND_WAIT_MS`]: an underlay that
    /// holds its packets (a shaper, a paused link) must not stall the
    /// thread that also switches between local containers and takes the
    /// agent's commands. If the wait runs out, EAGAIN goes to the caller,
    /// which drops and counts, and so does every send that finds no room
    /// until one goes through whole again: a trickle of room (a datagram
    /// or two per wait) would otherwise cost a wait per datagram.
    fn sendmmsg(&self, scratch: &mut Batch, n: usize) -> std::io::Result<usize> {
        let mut waited = self.congested.get();
        loop {
            // SAFETY: as in recv_batch; the kernel only reads the buffers.
            let r = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    scratch.hdrs.as_mut_ptr(),
                    n as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock if !waited => {
                        waited = true;
                        if self.wait_writable() {
                            continue;
                        }
                        self.congested.set(true);
                        return Err(e);
                    }
                    _ => return Err(e),
                }
            }
            if r as usize == n {
                self.congested.set(false);
            }
            return Ok((r as usize).max(1));
        }
    }

    /// Waits until the socket has room to send, [`SEND_WAIT_MS`] at most;
    /// false if it still has none.
    fn wait_writable(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, SEND_WAIT_MS) };
        r > 0 && p.revents & libc::POLLOUT != 0
    }
}

/// Sets the SOL_UDP int option `name` to `value`; false if the kernel refused.
fn set_udp_option(sock: &Socket, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: setsockopt with a valid int option value of 4 bytes.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            name,
            (&value as *const libc::c_int).cast(),
            4,
        )
    };
    r == 0
}

/// Scratch arrays for one batch of `mmsghdr`s, allocated once per thread.
pub struct Batch {
    capacity: usize,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    ctrl: Vec<[u64; CTRL_LEN / 8]>,
}

// SAFETY: the raw pointers inside only ever point at memory owned by the
// thread that uses the batch during one call.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(capacity: usize) -> Batch {
        Batch {
            capacity,
            hdrs: Vec::with_capacity(capacity),
            // Up to two iovecs (headers, payload) per datagram, and a GSO
            // message carries many datagrams.
            iovs: Vec::with_capacity(4 * capacity.max(MAX_GSO_SEGMENTS)),
            // SAFETY: sockaddr_in is plain old data.
            addrs: vec![unsafe { std::mem::zeroed() }; capacity],
            ctrl: vec![[0u64; CTRL_LEN / 8]; capacity],
        }
    }

    /// Adds an iovec; the capacity was reserved up front, so pointers to
    /// earlier ones stay valid.
    fn push_iov(&mut self, b: &[u8]) {
        if self.iovs.len() < self.iovs.capacity() {
            self.iovs.push(libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: b.len(),
            });
        }
    }

    fn reset(&mut self) {
        self.hdrs.clear();
        self.iovs.clear();
    }

    /// Header `i` over `iov_count` iovecs from `first_iov`; with `ctrl`, room
    /// for the kernel's control messages.
    fn push_hdr(&mut self, i: usize, first_iov: usize, iov_count: usize, ctrl: bool) {
        // SAFETY: msghdr is plain old data; zero is a valid start.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        h.msg_hdr.msg_iov = &mut self.iovs[first_iov];
        h.msg_hdr.msg_iovlen = iov_count;
        if ctrl {
            h.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CTRL_LEN;
        }
        self.hdrs.push(h);
    }

    /// Adds a `UDP_SEGMENT` control message to header `i`.
    fn set_segment(&mut self, i: usize, segment: u16) {
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_control = self.ctrl[i].as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE of 2 bytes (24) fits in CTRL_LEN; the pointers
        // come from the CMSG macros over that buffer.
        unsafe {
            h.msg_controllen = libc::CMSG_SPACE(2) as usize;
            let c = libc::CMSG_FIRSTHDR(h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
            std::ptr::copy_nonoverlapping(segment.to_ne_bytes().as_ptr(), libc::CMSG_DATA(c), 2);
        }
    }

    /// The `UDP_GRO` segment size the kernel reported for message `i`.
    fn gro_size(&self, i: usize) -> Option<usize> {
        let h = &self.hdrs[i].msg_hdr;
        if h.msg_control.is_null() || h.msg_controllen == 0 {
            return None;
        }
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of
        // control messages; the CMSG macros walk them within that length.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let mut v = [0u8; 4];
                    std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c), v.as_mut_ptr(), 4);
                    return usize::try_from(i32::from_ne_bytes(v)).ok();
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    fn addr_at(&self, i: usize) -> SocketAddrV4 {
        let a = &self.addrs[i];
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        )
    }
}

fn sockaddr_of(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Underlay, Underlay, SocketAddrV4) {
        let a = Underlay::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let b = Underlay::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let b_addr = match b.sock.local_addr().unwrap().as_socket() {
            Some(SocketAddr::V4(v4)) => v4,
            _ => unreachable!("bound to IPv4"),
        };
        (a, b, b_addr)
    }

    /// Receives until `want` bytes of datagrams arrived; returns each
    /// datagram, split by the reported segment size.
    fn receive(b: &Underlay, want: usize) -> Vec<Vec<u8>> {
        let mut scratch = Batch::new(8);
        let mut bufs = vec![vec![0u8; 70_000]; 8];
        let mut meta = [Received::EMPTY; 8];
        let mut out = vec![];
        let mut total = 0;
        for _ in 0..200 {
            let got = b
                .recv_batch(&mut scratch, &mut bufs, 16, &mut meta)
                .unwrap();
            for i in 0..got {
                let m = meta[i];
                assert_eq!(m.from.ip(), &Ipv4Addr::LOCALHOST);
                for d in bufs[i][16..16 + m.len].chunks(m.segment) {
                    total += d.len();
                    out.push(d.to_vec());
                }
            }
            if total >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        out
    }

    #[test]
    fn a_batch_round_trips_over_loopback() {
        let (a, b, b_addr) = pair();
        let mut scratch = Batch::new(8);
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let out: Vec<(&[u8], SocketAddrV4)> = msgs.iter().map(|m| (&m[..], b_addr)).collect();
        let (sent, failed, err) = a.send_batch(&mut scratch, &out);
        assert_eq!((sent, failed, err.is_none()), (5, 0, true));
        assert_eq!(receive(&b, 510), msgs);
    }

    #[test]
    fn a_refused_datagram_does_not_take_the_rest_of_its_batch_with_it() {
        let (a, b, b_addr) = pair();
        let mut scratch = Batch::new(8);
        let msgs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 50]).collect();
        // Port 0 is refused by the kernel (EINVAL) before anything is sent.
        let refused = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0);
        let dsts = [b_addr, refused, b_addr, b_addr];
        let out: Vec<(&[u8], SocketAddrV4)> =
            msgs.iter().zip(dsts).map(|(m, d)| (&m[..], d)).collect();
        let (sent, failed, err) = a.send_batch(&mut scratch, &out);
        assert_eq!((sent, failed), (3, 1));
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EINVAL));
        let want = vec![msgs[0].clone(), msgs[2].clone(), msgs[3].clone()];
        assert_eq!(receive(&b, 150), want);
    }

    #[test]
    fn gathered_segments_arrive_as_separate_datagrams_with_or_without_gso() {
        for gso in [true, false] {
            let (mut a, b, b_addr) = pair();
            a.gso = gso;
            let mut scratch = Batch::new(8);
            // 70 datagrams of 1000 bytes and a last one of 10, each sent as a
            // 50-byte header and a payload slice: two GSO messages.
            let data: Vec<u8> = (0..70_010u32).map(|i| (i / 1000) as u8 ^ i as u8).collect();
            let count = data.len().div_ceil(1000);
            a.send_gather(&mut scratch, count, 1000, b_addr, |i| {
                let d = &data[i * 1000..((i + 1) * 1000).min(data.len())];
                d.split_at(d.len().min(50))
            })
            .unwrap();
            let got = receive(&b, data.len());
            assert_eq!(got.len(), 71, "gso={gso}");
            assert!(got.iter().take(70).all(|d| d.len() == 1000));
            assert!(got.concat() == data);
        }
    }
}
