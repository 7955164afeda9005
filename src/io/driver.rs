//! The dataplane thread: the loop that moves frames between the container
//! TAPs and the underlay socket through the pipeline.
//!
//! One thread, epoll over every fd. Each wake-up does bounded work: at most
//! [`BATCH`] frames per ready fd, then the next fd, so one busy container
//! cannot starve the others. Buffers and `mmsghdr` scratch are allocated once
//! when the thread starts. The control side talks to the thread through a
//! command channel plus an eventfd to wake it, and publishes new tables through
//! the [`TablesCell`], checked once per wake-up.

use super::{tap, udp};
use crate::pipeline::coalesce::{Coalescer, Part};
use crate::pipeline::counters::bump;
use crate::pipeline::{offload, Counters, DropReason, Input, Packet, Pipeline, Verdict, HEADROOM};
use crate::tables::{PortId, TablesCell};
use crate::wire::virtio::{self, VnetHeader};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Frames handled per fd per wake-up, and datagrams per system call.
pub const BATCH: usize = 64;
/// Bytes per buffer: headroom plus the largest datagram or frame we accept.
const BUF_LEN: usize = HEADROOM + 65536;
/// Room for the headers of one super-frame's segments: 128 segments (an MSS
/// of 512 bytes) of at most 8 + 14 + 60 + 60 header bytes each. A super-frame
/// with more segments is cut and sent in several pieces.
const SEGMENT_HEADERS_LEN: usize = 128 * 142;
/// How long the thread keeps polling after its last work before it sleeps,
/// unless the agent is told otherwise (`mesh-agent --busy-poll`).
pub const DEFAULT_BUSY_POLL: std::time::Duration = std::time::Duration::from_micros(200);
/// The longest busy poll the agent accepts (`mesh-agent` refuses more).
pub const MAX_BUSY_POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// Ports whose activity is tracked (port IDs are small, reused integers).
const MAX_PORTS: usize = 4096;
/// Flows coalesced at once per batch.
const COALESCE_SLOTS: usize = 8;

const TOKEN_WAKE: u64 = 0;
const TOKEN_UNDERLAY: u64 = 1;
const TOKEN_HOST: u64 = 2;
const TOKEN_PORT_BASE: u64 = 3;

/// Errors starting or commanding the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("dataplane setup failed: {0}")]
    Setup(std::io::Error),
    #[error("the dataplane thread has stopped; restart mesh-agent")]
    Stopped,
    #[error("cannot add port {0} to the dataplane: {1}")]
    AddPort(PortId, std::io::Error),
}

enum Command {
    AddPort {
        id: PortId,
        fd: OwnedFd,
        done: oneshot::Sender<Result<(), std::io::Error>>,
    },
    RemovePort {
        id: PortId,
        done: oneshot::Sender<()>,
    },
    /// The host's ingress TUN (see `io::tun`).
    SetHost {
        fd: OwnedFd,
        done: oneshot::Sender<Result<(), std::io::Error>>,
    },
}

/// The control side's handle on the dataplane thread.
pub struct Dataplane {
    commands: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
    /// Frames in and out, per port (to see when a draining task is quiet).
    activity: Arc<Vec<AtomicU64>>,
    pub counters: Arc<Counters>,
    pub tables: Arc<TablesCell>,
    /// Cancelled when the dataplane thread ends, however it ends.
    ended: tokio_util::sync::CancellationToken,
}

/// Cancels its token when dropped: at the end of the dataplane thread,
/// also when it ends by a panic (the drop runs on unwind).
struct EndSignal(tokio_util::sync::CancellationToken);

impl Drop for EndSignal {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Dataplane {
    /// Starts the dataplane thread over `underlay`. After its last work it
    /// polls for `busy_poll` before it sleeps (see [`DEFAULT_BUSY_POLL`]).
    pub fn spawn(
        underlay: udp::Underlay,
        tables: Arc<TablesCell>,
        balancer: crate::pipeline::vip::BalancerConfig,
        busy_poll: std::time::Duration,
    ) -> Result<Dataplane, DataplaneError> {
        // SAFETY: plain syscalls; fds owned right away.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(DataplaneError::Setup(std::io::Error::last_os_error()));
        }
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(DataplaneError::Setup(std::io::Error::last_os_error()));
        }
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
        epoll_add(&ep, wake.as_raw_fd(), TOKEN_WAKE).map_err(DataplaneError::Setup)?;
        epoll_add(&ep, underlay.raw_fd(), TOKEN_UNDERLAY).map_err(DataplaneError::Setup)?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let activity: Arc<Vec<AtomicU64>> =
            Arc::new((0..MAX_PORTS).map(|_| AtomicU64::new(0)).collect());
        let mut thread = DriverThread {
            activity: activity.clone(),
            ep,
            wake: wake.clone(),
            commands: rx,
            underlay,
            ports: Vec::new(),
            host: None,
            tables: tables.clone(),
            generation: 0,
            pipeline: Pipeline::with_balancer(tables.load().1, counters.clone(), balancer),
            bufs: vec![vec![0u8; BUF_LEN]; BATCH],
            meta: vec![udp::Received::EMPTY; BATCH],
            scratch: udp::Batch::new(BATCH),
            pending: Vec::with_capacity(BATCH),
            segment_headers: vec![0u8; SEGMENT_HEADERS_LEN],
            coalescer: Coalescer::new(COALESCE_SLOTS),
            busy_poll,
        };
        let ended = tokio_util::sync::CancellationToken::new();
        let signal = EndSignal(ended.clone());
        std::thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || {
                let _signal = signal;
                thread.run();
            })
            .map_err(DataplaneError::Setup)?;
        Ok(Dataplane {
            commands: tx,
            wake,
            activity,
            counters,
            tables,
            ended,
        })
    }

    /// Resolves when the dataplane thread has ended (an error it logged, or
    /// a panic): no packet moves any more, and the agent must not go on
    /// looking healthy.
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    /// A number that changes whenever port `port` sends frames.
    pub fn activity(&self, port: PortId) -> u64 {
        self.activity
            .get(port as usize)
            .map_or(0, |a| a.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn send(&self, c: Command) -> Result<(), DataplaneError> {
        self.commands.send(c).map_err(|_| DataplaneError::Stopped)?;
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        Ok(())
    }

    /// Hands a TAP fd to the dataplane as port `id`.
    pub async fn add_port(&self, id: PortId, fd: OwnedFd) -> Result<(), DataplaneError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::AddPort { id, fd, done })?;
        wait.await
            .map_err(|_| DataplaneError::Stopped)?
            .map_err(|e| DataplaneError::AddPort(id, e))
    }

    /// Hands the ingress TUN to the dataplane: from now on published ports,
    /// egress and the host's traffic to containers flow through it.
    pub async fn set_host(&self, fd: OwnedFd) -> Result<(), DataplaneError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::SetHost { fd, done })?;
        wait.await
            .map_err(|_| DataplaneError::Stopped)?
            .map_err(DataplaneError::Setup)
    }

    /// Closes port `id`'s TAP (the interface disappears) once the dataplane
    /// has let go of it.
    pub async fn remove_port(&self, id: PortId) -> Result<(), DataplaneError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::RemovePort { id, done })?;
        wait.await.map_err(|_| DataplaneError::Stopped)
    }
}

fn epoll_add(ep: &OwnedFd, fd: i32, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: valid epoll fd and event struct.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes `fd` out of the epoll set `ep` (a no-op if it is not in it).
fn epoll_del(ep: &OwnedFd, fd: &OwnedFd) {
    // SAFETY: valid epoll fd and fd; DEL takes no event.
    unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd.as_raw_fd(),
            std::ptr::null_mut(),
        )
    };
}

struct DriverThread {
    ep: OwnedFd,
    wake: Arc<OwnedFd>,
    commands: mpsc::Receiver<Command>,
    underlay: udp::Underlay,
    /// TAP fds indexed by port id.
    ports: Vec<Option<OwnedFd>>,
    /// The ingress TUN in the host's namespace.
    host: Option<OwnedFd>,
    activity: Arc<Vec<AtomicU64>>,
    tables: Arc<TablesCell>,
    generation: u64,
    pipeline: Pipeline,
    bufs: Vec<Vec<u8>>,
    meta: Vec<udp::Received>,
    scratch: udp::Batch,
    /// Datagrams waiting for the next sendmmsg: (buffer index, start, end, VTEP).
    pending: Vec<(usize, usize, usize, SocketAddrV4)>,
    /// The headers of a super-frame's segments, back to back.
    segment_headers: Vec<u8>,
    coalescer: Coalescer,
    /// How long to poll after the last work before sleeping.
    busy_poll: std::time::Duration,
}

impl DriverThread {
    fn run(&mut self) {
        // SAFETY: epoll_event is plain old data.
        let mut events: Vec<libc::epoll_event> = vec![unsafe { std::mem::zeroed() }; 64];
        let mut last_work = Instant::now();
        loop {
            // Right after work, poll without sleeping for a moment: a reply
            // usually follows within it, and a sleeping thread takes tens of
            // microseconds to wake (the two wake-ups of a ping's way through
            // two agents cost more than the kernel's whole round trip in a
            // VM). Yielding lets others on this core run.
            let spinning = last_work.elapsed() < self.busy_poll;
            let timeout = if spinning { 0 } else { 1000 };
            // SAFETY: events has room for 64 entries.
            let n =
                unsafe { libc::epoll_wait(self.ep.as_raw_fd(), events.as_mut_ptr(), 64, timeout) };
            if n == 0 && spinning {
                // SAFETY: plain syscall.
                unsafe { libc::sched_yield() };
                continue;
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "dataplane epoll_wait failed; the dataplane stops");
                return;
            }
            let g = self.tables.generation();
            if g != self.generation {
                let (g, t) = self.tables.load();
                self.generation = g;
                self.pipeline.set_tables(t);
            }
            self.pipeline.handle_timeout(Instant::now());
            for ev in events.iter().take(n as usize) {
                match ev.u64 {
                    TOKEN_WAKE => {
                        if !self.handle_commands() {
                            return;
                        }
                    }
                    TOKEN_UNDERLAY => self.rx_underlay(),
                    TOKEN_HOST => self.rx_host(),
                    t => self.rx_tap((t - TOKEN_PORT_BASE) as PortId),
                }
            }
            // The spin counts from the end of the work: a send can take a
            // while (it runs the next hop's receive), and the answer it
            // asked for is what the spin waits for.
            if n > 0 {
                last_work = Instant::now();
            }
        }
    }

    /// Applies queued commands; false when the control side is gone.
    fn handle_commands(&mut self) -> bool {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from our eventfd resets it.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        loop {
            match self.commands.try_recv() {
                Ok(Command::AddPort { id, fd, done }) => {
                    let r = epoll_add(&self.ep, fd.as_raw_fd(), TOKEN_PORT_BASE + u64::from(id));
                    if r.is_ok() {
                        let i = id as usize;
                        if self.ports.len() <= i {
                            self.ports.resize_with(i + 1, || None);
                        }
                        self.ports[i] = Some(fd);
                    }
                    let _ = done.send(r);
                }
                Ok(Command::RemovePort { id, done }) => {
                    self.pipeline.forget_port(id);
                    if let Some(fd) = self.ports.get_mut(id as usize).and_then(Option::take) {
                        // Closing it follows (it may be out of epoll already).
                        epoll_del(&self.ep, &fd);
                        drop(fd);
                    }
                    let _ = done.send(());
                }
                Ok(Command::SetHost { fd, done }) => {
                    let r = epoll_add(&self.ep, fd.as_raw_fd(), TOKEN_HOST);
                    if r.is_ok() {
                        self.host = Some(fd);
                    }
                    let _ = done.send(r);
                }
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }
}

mod rx;
mod tx;
