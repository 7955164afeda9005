//! The TCP side of each container's 127.0.0.11: length-prefixed queries on
//! connections that a container keeps for a while (glibc opens one when an
//! answer was truncated). Answered like UDP ([`super::answer`]), without the
//! size limit; other names are forwarded upstream over TCP and their answer
//! relayed as it came.
//!
//! A container's connections are bounded: at most [`MAX_CONNECTIONS`] at a
//! time (more are closed at once), each closed after [`IDLE`] without a
//! query or when a write stalls as long (a client that sends and never
//! reads). A container opening thousands of connections would otherwise
//! use up the agent's file descriptors, and every container's DNS and
//! attach with them.

use super::answer::{answer, forwarded, Answer, Transport};
use super::handler::Shared;
use super::Container;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Connections served at once per container.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may sit without a query, or a write may stall.
pub const IDLE: Duration = Duration::from_secs(10);

/// Serves `listener` for `container` until `stop`; the connections end
/// with it.
pub async fn serve(
    listener: TcpListener,
    container: Arc<Container>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let netns = &container.netns;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, say: wait instead of spinning.
                    tracing::debug!(netns = %netns, error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap the finished ones, so the set does not grow.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.stats.refused.fetch_add(1, Relaxed);
            continue;
        };
        let (container, shared) = (container.clone(), shared.clone());
        connections.spawn(async move {
            connection(stream, &container, &shared).await;
            drop(slot);
        });
    }
    connections.shutdown().await;
}

/// One connection: queries in, answers out, in order, until the client
/// closes, goes idle, or stalls.
async fn connection(mut stream: TcpStream, container: &Container, shared: &Shared) {
    loop {
        let len = match tokio::time::timeout(IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        let mut query = vec![0u8; len];
        match tokio::time::timeout(IDLE, stream.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let reply = match answer(shared, &container.netns, &query, Transport::Tcp) {
            Answer::Now(bytes) => bytes,
            Answer::Drop => continue,
            Answer::Forward => {
                let slot = container.forward_slot();
                forwarded(shared, slot, &query, Transport::Tcp).await
            }
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(2 + reply.len());
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&reply);
        match tokio::time::timeout(IDLE, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
