//! The UDP side of each container's 127.0.0.11, served by our own loop (TCP
//! stays with hickory-server): one receive loop per container answers local
//! names inline, without a task per query, and hands the rest to a
//! forwarding task. Every datagram is accounted for: one that does not decode
//! is counted as malformed, and a response (QR set) is never answered, so
//! two servers cannot bounce packets at each other.

use super::handler::{local_records, soa, Shared};
use hickory_server::proto::op::{Edns, Message, MessageType, Metadata, OpCode};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// The largest query read (anything longer is cut and fails to decode).
const MAX_QUERY: usize = 4096;

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back.
    Now(Vec<u8>),
    /// Not ours: forward the query as it came.
    Forward,
    /// Say nothing.
    Drop,
}

/// A bare error response: the query's ID, opcode and RD, with `rcode`.
fn error_header(query: &[u8], rcode: u8) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[..2].copy_from_slice(&query[..2]);
    h[2] = 0x80 | (query[2] & 0x79);
    h[3] = rcode & 0x0f;
    h
}

/// Answers one datagram from the container in `netns`.
pub fn answer(shared: &Shared, netns: &str, query: &[u8]) -> Answer {
    let stats = &shared.stats;
    if query.len() < 12 || query[2] & 0x80 != 0 {
        stats.malformed.fetch_add(1, Relaxed);
        return Answer::Drop;
    }
    let Ok(msg) = Message::from_vec(query) else {
        stats.malformed.fetch_add(1, Relaxed);
        return Answer::Now(error_header(query, 1));
    };
    if msg.metadata.message_type != MessageType::Query
        || msg.metadata.op_code != OpCode::Query
        || msg.queries.len() != 1
    {
        stats.malformed.fetch_add(1, Relaxed);
        let rcode = if msg.metadata.op_code == OpCode::Query {
            1
        } else {
            4
        };
        return Answer::Now(error_header(query, rcode));
    }
    stats.queries.fetch_add(1, Relaxed);
    let q = &msg.queries[0];
    let Some(answers) = local_records(shared, netns, q.name(), q.query_type()) else {
        return Answer::Forward;
    };
    stats.answered.fetch_add(1, Relaxed);
    let mut resp = Message::response(msg.metadata.id, OpCode::Query);
    resp.metadata = Metadata::response_from_request(&msg.metadata);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    // Answer with OPT only if asked with one; its size bounds the datagram.
    let mut limit = 512usize;
    if let Some(e) = &msg.edns {
        let mut r = Edns::new();
        let size = e.max_payload().max(512);
        r.set_max_payload(size);
        resp.set_edns(r);
        limit = usize::from(size);
    }
    if answers.is_empty() {
        resp.add_authorities(soa(shared.ttl));
    }
    resp.insert_answers(answers);
    encode_within(resp, limit).map_or_else(|| Answer::Now(error_header(query, 2)), Answer::Now)
}

/// Encodes `resp`, dropping answers and setting TC until it fits in `limit`.
fn encode_within(mut resp: Message, limit: usize) -> Option<Vec<u8>> {
    loop {
        let bytes = resp.to_vec().ok()?;
        if bytes.len() <= limit || resp.answers.is_empty() {
            return Some(bytes);
        }
        resp.metadata.truncation = true;
        let keep = resp.answers.len() * limit / bytes.len();
        resp.answers.truncate(keep.min(resp.answers.len() - 1));
    }
}

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
            match answer(&shared, &netns, &buf[..n]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::forward::Forwarder;
    use crate::dns::names::NameTable;
    use crate::dns::DnsStats;
    use hickory_server::proto::op::Query;
    use hickory_server::proto::rr::{Name, RecordType};
    use std::collections::HashMap;
    use std::sync::RwLock;

    fn shared() -> Shared {
        Shared {
            names: RwLock::new(Arc::new(NameTable::build(
                &Default::default(),
                HashMap::new(),
            ))),
            forwarder: Forwarder::new(vec![]),
            ttl: 2,
            stats: DnsStats::default(),
        }
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn garbage_is_counted_and_responses_are_never_answered() {
        let s = shared();
        assert_eq!(answer(&s, "c", &[1, 2, 3]), Answer::Drop);
        let mut resp = query("x.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(
            answer(&s, "c", &resp),
            Answer::Drop,
            "a response gets no answer"
        );
        let mut bad = query("x.", RecordType::A);
        bad.truncate(15);
        let Answer::Now(formerr) = answer(&s, "c", &bad) else {
            panic!("no FORMERR")
        };
        assert_eq!((formerr[0], formerr[1], formerr[3] & 0x0f), (0x42, 0x42, 1));
        assert_eq!(s.stats.malformed.load(Relaxed), 3);
    }

    #[test]
    fn other_names_are_forwarded() {
        let s = shared();
        assert_eq!(
            answer(&s, "c", &query("example.com.", RecordType::A)),
            Answer::Forward
        );
        assert_eq!(s.stats.queries.load(Relaxed), 1);
    }

    #[test]
    fn big_answers_are_truncated_to_fit() {
        use hickory_server::proto::rr::{rdata::A, RData, Record};
        let mut m = Message::response(1, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("tasks.web.").unwrap(),
            RecordType::A,
        ));
        for i in 0..40u8 {
            m.add_answer(Record::from_rdata(
                Name::from_ascii("tasks.web.").unwrap(),
                2,
                RData::A(A(std::net::Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        let bytes = encode_within(m.clone(), 512).unwrap();
        assert!(bytes.len() <= 512);
        let back = Message::from_vec(&bytes).unwrap();
        assert!(back.metadata.truncation);
        assert!(!back.answers.is_empty() && back.answers.len() < 40);
        let all = encode_within(m, 4096).unwrap();
        assert_eq!(Message::from_vec(&all).unwrap().answers.len(), 40);
    }
}
