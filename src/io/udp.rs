//! The underlay socket: VXLAN datagrams to and from other hosts' VTEPs.
//!
//! One UDP socket bound to ADVERTISE_ADDR:4789. Reads use `recvmmsg` and
//! writes `sendmmsg`, so a batch of datagrams costs one system call. The
//! scratch arrays for both are allocated once ([`Batch`]); the datagrams stay in
//! the caller's buffers (VXLAN header written in their headroom).

use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// The VXLAN socket.
pub struct Underlay {
    sock: Socket,
}

impl Underlay {
    /// Binds ADDR:PORT with large kernel buffers. Sends block (back-pressure
    /// into the TAP reads); receives never do.
    pub fn bind(addr: SocketAddrV4) -> std::io::Result<Underlay> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Best effort: the kernel caps these at net.core.[rw]mem_max.
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        sock.bind(&SocketAddr::V4(addr).into())?;
        Ok(Underlay { sock })
    }

    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Receives up to `bufs.len()` datagrams, each into `bufs[i][offset..]`.
    /// Fills `meta[i]` with length and sender; returns how many arrived.
    pub fn recv_batch(
        &self,
        scratch: &mut Batch,
        bufs: &mut [Vec<u8>],
        offset: usize,
        meta: &mut [(usize, SocketAddrV4)],
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
            scratch.push_hdr(i);
        }
        // SAFETY: hdrs point into iovs/addrs and the caller's buffers, all
        // alive and unmoved for the call.
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
            *m = (scratch.hdrs[i].msg_len as usize, scratch.addr_at(i));
        }
        Ok(got)
    }

    /// Sends every datagram in `out` (a byte slice and its VTEP) with as few
    /// `sendmmsg` calls as the kernel allows. Returns how many were sent; the
    /// rest failed with the returned error.
    pub fn send_batch(
        &self,
        scratch: &mut Batch,
        out: &[(&[u8], SocketAddrV4)],
    ) -> (usize, Option<std::io::Error>) {
        let mut sent = 0;
        while sent < out.len() {
            let n = (out.len() - sent).min(scratch.capacity);
            scratch.reset();
            for (i, (bytes, dst)) in out[sent..sent + n].iter().enumerate() {
                scratch.iovs.push(libc::iovec {
                    iov_base: bytes.as_ptr() as *mut _,
                    iov_len: bytes.len(),
                });
                scratch.addrs[i] = sockaddr_of(*dst);
            }
            for i in 0..n {
                scratch.push_hdr(i);
            }
            // SAFETY: as in recv_batch; the kernel only reads the buffers.
            let r = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    scratch.hdrs.as_mut_ptr(),
                    n as u32,
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return (sent, Some(e));
            }
            // A short count means the next datagram failed; skip it rather
            // than loop on it forever (it is counted by the caller).
            sent += (r as usize).max(1);
        }
        (sent.min(out.len()), None)
    }
}

/// Scratch arrays for one batch of `mmsghdr`s, allocated once per thread.
pub struct Batch {
    capacity: usize,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
}

// SAFETY: the raw pointers inside only ever point at memory owned by the
// thread that uses the batch during one call.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(capacity: usize) -> Batch {
        Batch {
            capacity,
            hdrs: Vec::with_capacity(capacity),
            iovs: Vec::with_capacity(capacity),
            // SAFETY: sockaddr_in is plain old data.
            addrs: vec![unsafe { std::mem::zeroed() }; capacity],
        }
    }

    fn reset(&mut self) {
        self.hdrs.clear();
        self.iovs.clear();
    }

    fn push_hdr(&mut self, i: usize) {
        // SAFETY: msghdr is plain old data; zero is a valid start.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        h.msg_hdr.msg_iov = &mut self.iovs[i];
        h.msg_hdr.msg_iovlen = 1;
        self.hdrs.push(h);
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

    #[test]
    fn a_batch_round_trips_over_loopback() {
        let a = Underlay::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let b = Underlay::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let b_addr = match b.sock.local_addr().unwrap().as_socket() {
            Some(SocketAddr::V4(v4)) => v4,
            _ => unreachable!("bound to IPv4"),
        };
        let mut scratch = Batch::new(8);
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let out: Vec<(&[u8], SocketAddrV4)> = msgs.iter().map(|m| (&m[..], b_addr)).collect();
        let (sent, err) = a.send_batch(&mut scratch, &out);
        assert_eq!((sent, err.is_none()), (5, true));
        let mut bufs = vec![vec![0u8; 2048]; 8];
        let mut meta = [(0, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); 8];
        let mut got = 0;
        for _ in 0..100 {
            got += b
                .recv_batch(&mut scratch, &mut bufs[got..], 16, &mut meta[got..])
                .unwrap();
            if got == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 5);
        for (i, (len, from)) in meta.iter().take(5).enumerate() {
            assert_eq!(*len, 100 + i);
            assert_eq!(from.ip(), &Ipv4Addr::LOCALHOST);
            assert_eq!(bufs[i][16], i as u8);
        }
    }
}
