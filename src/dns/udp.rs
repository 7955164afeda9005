//! The UDP side of each container's 127.0.0.11: one receive loop per
//! container answers local names inline, without a task per query, and hands
//! the rest to a forwarding task.

use super::answer::{answer, error_header, Answer, Transport, MAX_QUERY};
use super::handler::Shared;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Serves `sock` for the container in `netns` until `stop`. After each wake-up
/// it drains every queued datagram before waiting again (fewer trips through
/// the runtime under load).
pub async fn serve(sock: UdpSocket, netns: String, shared: Arc<Shared>, stop: CancellationToken) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = sock.readable() => {
                if let Err(e) = r {
                    tracing::debug!(netns = %netns, error = %e, "DNS socket failed");
                    return;
                }
            }
        }
        // Bounded: at most 256 datagrams before yielding to other tasks.
        for _ in 0..256 {
            let (n, from) = match sock.try_recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(netns = %netns, error = %e, "DNS receive failed");
                    break;
                }
            };
            match answer(&shared, &netns, &buf[..n], Transport::Udp) {
                Answer::Now(bytes) => send(&sock, &bytes, from).await,
                Answer::Drop => {}
                Answer::Forward => forward(&sock, &shared, &buf[..n], from),
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Forwards a query on its own task; the answer (or SERVFAIL) goes back to `from`.
fn forward(sock: &Arc<UdpSocket>, shared: &Arc<Shared>, query: &[u8], from: SocketAddr) {
    shared.stats.forwarded.fetch_add(1, Relaxed);
    let (sock, shared, query) = (sock.clone(), shared.clone(), query.to_vec());
    tokio::spawn(async move {
        match shared.forwarder.forward(&query, false).await {
            Ok(bytes) => send(&sock, &bytes, from).await,
            Err(e) => {
                if e == super::forward::ForwardError::Overloaded {
                    shared.stats.overloaded.fetch_add(1, Relaxed);
                }
                shared.stats.forward_failed.fetch_add(1, Relaxed);
                send(&sock, &error_header(&query, 2), from).await;
            }
        }
    });
}

async fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    match sock.try_send_to(bytes, to) {
        Ok(_) => return,
        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
            tracing::debug!(error = %e, "DNS send failed");
            return;
        }
        Err(_) => {}
    }
    if let Err(e) = sock.send_to(bytes, to).await {
        tracing::debug!(error = %e, "DNS send failed");
    }
}
