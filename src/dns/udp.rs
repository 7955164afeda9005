//! The UDP side of each container's 127.0.0.11: one receive loop per
//! container answers local names inline, without a task per query, and hands
//! the rest to a forwarding task.

use super::answer::{answer, forwarded, Answer, Transport, MAX_QUERY};
use super::handler::Shared;
use super::Container;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Serves `sock` for `container` until `stop`. After each wake-up it drains
/// every queued datagram before waiting again (fewer trips through the
/// runtime under load). The socket closes when this returns: forwards still
/// in flight then have nowhere to answer, and say nothing.
pub async fn serve(
    sock: UdpSocket,
    container: Arc<Container>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let netns = &container.netns;
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
            match answer(&shared, netns, &buf[..n], Transport::Udp) {
                Answer::Now(bytes) => send(&sock, &bytes, from),
                Answer::Drop => {}
                Answer::Forward => forward(&sock, &shared, &container, &buf[..n], from),
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Forwards a query on its own task; the answer (or SERVFAIL) goes back to `from`.
fn forward(
    sock: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    container: &Container,
    query: &[u8],
    from: SocketAddr,
) {
    let slot = container.forward_slot();
    let (sock, shared, query) = (Arc::downgrade(sock), shared.clone(), query.to_vec());
    tokio::spawn(async move {
        let reply = forwarded(&shared, slot, &query, Transport::Udp).await;
        if let Some(sock) = sock.upgrade() {
            send(&sock, &reply, from);
        }
    });
}

/// Sends without waiting: a reply that does not fit the socket's buffer
/// now is dropped (the client asks again), so neither the receive loop nor
/// a forward ever waits on a client, nor holds the socket past a stop.
fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if let Err(e) = sock.try_send_to(bytes, to) {
        tracing::debug!(error = %e, "DNS send failed");
    }
}
