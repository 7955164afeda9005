//! What to answer to one query from a container, over UDP or TCP: local
//! names straight from the [`NameTable`](super::names::NameTable) (a plain
//! `A` query without decoding it at all), other names forwarded. Every
//! query is accounted for: one that does not decode is counted as
//! malformed, and a response (QR set) is never answered, so two servers
//! cannot bounce packets at each other.

use super::forward::ForwardError;
use super::handler::{local_records, soa, Shared};
use super::names::Lookup;
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode};
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::OwnedSemaphorePermit;

/// The largest query read over UDP (anything longer is cut and fails to decode).
pub const MAX_QUERY: usize = 4096;

/// The transport a query came over: it bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// 512 bytes, or the client's EDNS size; what does not fit is cut and TC set.
    Udp,
    /// Up to 64 KB: everything.
    Tcp,
}

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

/// An error response: the query's ID, opcode and RD, with `rcode`, and its
/// question when it has one that reads (stub resolvers such as glibc's
/// ignore an answer whose question differs from theirs, and would wait out
/// their timeout instead of failing at once).
pub fn error_header(query: &[u8], rcode: u8) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[..2].copy_from_slice(&query[..2]);
    h[2] = 0x80 | (query[2] & 0x79);
    h[3] = rcode & 0x0f;
    if let Some(end) = question_end(query) {
        h[5] = 1;
        h.extend_from_slice(&query[12..end]);
    }
    h
}

/// Where the only question of `query` ends, if it has exactly one that reads
/// (uncompressed, as a question's name always is).
fn question_end(query: &[u8]) -> Option<usize> {
    if query.get(4..6)? != [0, 1] {
        return None;
    }
    let (_, after_name) = read_qname(query, &mut [0u8; 255])?;
    let end = after_name + 4;
    (end <= query.len()).then_some(end)
}

/// Reads the question's name (from byte 12) into `name`, lowercased and
/// dotted; returns its length and where the name ends in `query`.
fn read_qname(query: &[u8], name: &mut [u8; 255]) -> Option<(usize, usize)> {
    let mut len = 0;
    let mut at = 12;
    loop {
        let l = usize::from(*query.get(at)?);
        at += 1;
        if l == 0 {
            return Some((len, at));
        }
        if l > 63 || len + l + 1 > name.len() {
            return None;
        }
        if len > 0 {
            name[len] = b'.';
            len += 1;
        }
        for &c in query.get(at..at + l)? {
            name[len] = c.to_ascii_lowercase();
            len += 1;
        }
        at += l;
    }
}

/// The fast path: a plain `A` query (one question, class IN, at most an OPT
/// record) for a name we have addresses for is answered straight from the
/// wire bytes, without decoding into a message. Anything else: `None`, and
/// the general path decides.
fn answer_a_fast(
    shared: &Shared,
    netns: &str,
    query: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let be16 = |at: usize| {
        query
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    // Opcode QUERY, one question, no answer or authority records.
    if query[2] & 0x78 != 0 || be16(4)? != 1 || be16(6)? != 0 || be16(8)? != 0 || be16(10)? > 1 {
        return None;
    }
    let mut name = [0u8; 255];
    let (len, at) = read_qname(query, &mut name)?;
    let (qtype, qclass) = (be16(at)?, be16(at + 2)?);
    let question_end = at + 4;
    if qtype != 1 || qclass != 1 {
        return None;
    }
    // An OPT record: root name, type 41, class = the client's UDP size.
    let mut size = 512u16;
    let edns = be16(10)? == 1;
    if edns {
        if *query.get(question_end)? != 0 || be16(question_end + 1)? != 41 {
            return None;
        }
        size = be16(question_end + 3)?.max(512);
    }
    let limit = match transport {
        Transport::Udp => usize::from(size),
        Transport::Tcp => usize::from(u16::MAX),
    };
    let name = std::str::from_utf8(&name[..len]).ok()?;
    let Lookup::Found(ips) = shared.names().lookup_normalized(netns, name) else {
        return None;
    };
    if ips.is_empty() {
        return None;
    }
    let opt_len = if edns { 11 } else { 0 };
    let fits = (limit.saturating_sub(question_end + opt_len)) / 16;
    let n = ips.len().min(fits);
    let mut out = Vec::with_capacity(question_end + 16 * n + opt_len);
    out.extend_from_slice(&query[..2]);
    // QR, AA, RD as asked, RA; TC if not all addresses fit.
    out.push(0x84 | (query[2] & 0x01) | if n < ips.len() { 0x02 } else { 0 });
    out.push(0x80);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, u8::from(edns)]);
    out.extend_from_slice(&query[12..question_end]);
    for ip in ips.iter().take(n) {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&shared.ttl.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    if edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    shared.stats.queries.fetch_add(1, Relaxed);
    shared.stats.answered.fetch_add(1, Relaxed);
    Some(out)
}

/// Answers one query (a datagram, or a TCP message without its length)
/// from the container in `netns`.
pub fn answer(shared: &Shared, netns: &str, query: &[u8], transport: Transport) -> Answer {
    let stats = &shared.stats;
    if query.len() < 12 || query[2] & 0x80 != 0 {
        stats.malformed.fetch_add(1, Relaxed);
        return Answer::Drop;
    }
    if let Some(bytes) = answer_a_fast(shared, netns, query, transport) {
        return Answer::Now(bytes);
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
    if transport == Transport::Tcp {
        limit = usize::from(u16::MAX);
    }
    if answers.is_empty() {
        resp.add_authorities(soa(shared.ttl));
    }
    resp.insert_answers(answers);
    encode_within(resp, limit).map_or_else(|| Answer::Now(error_header(query, 2)), Answer::Now)
}

/// The answer to a query that is not ours: the upstream's, as it came (it
/// carries the query's ID), or SERVFAIL when no upstream answered or there
/// was no forward `slot` left (the container's, see
/// [`super::Container::forward_slot`]) or none of the agent's.
pub async fn forwarded(
    shared: &Shared,
    slot: Option<OwnedSemaphorePermit>,
    query: &[u8],
    transport: Transport,
) -> Vec<u8> {
    shared.stats.forwarded.fetch_add(1, Relaxed);
    let result = match slot {
        // Held until the upstream has answered.
        Some(_slot) => {
            let tcp = transport == Transport::Tcp;
            shared.forwarder.forward(query, tcp).await
        }
        None => Err(ForwardError::Overloaded),
    };
    result.unwrap_or_else(|e| {
        if e == ForwardError::Overloaded {
            shared.stats.overloaded.fetch_add(1, Relaxed);
        }
        shared.stats.forward_failed.fetch_add(1, Relaxed);
        error_header(query, 2)
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::forward::Forwarder;
    use crate::dns::names::NameTable;
    use crate::dns::DnsStats;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};
    use std::collections::HashMap;
    use std::sync::{Arc, RwLock};

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
        assert_eq!(answer(&s, "c", &[1, 2, 3], Transport::Udp), Answer::Drop);
        let mut resp = query("x.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(
            answer(&s, "c", &resp, Transport::Udp),
            Answer::Drop,
            "a response gets no answer"
        );
        let mut bad = query("x.", RecordType::A);
        bad.truncate(15);
        let Answer::Now(formerr) = answer(&s, "c", &bad, Transport::Udp) else {
            panic!("no FORMERR")
        };
        assert_eq!((formerr[0], formerr[1], formerr[3] & 0x0f), (0x42, 0x42, 1));
        assert_eq!(s.stats.malformed.load(Relaxed), 3);
    }

    #[tokio::test]
    async fn a_container_with_all_its_forwards_in_flight_gets_servfail_at_once() {
        use crate::dns::{Container, MAX_FORWARDS_PER_CONTAINER};
        let s = shared();
        let c = Container::new("c");
        let held: Vec<_> = (0..MAX_FORWARDS_PER_CONTAINER)
            .map(|_| c.forward_slot().expect("a slot"))
            .collect();
        assert!(c.forward_slot().is_none());
        let q = query("ext.example.", RecordType::A);
        let reply = forwarded(&s, c.forward_slot(), &q, Transport::Udp).await;
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(u16::from(m.metadata.response_code), 2);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(s.stats.overloaded.load(Relaxed), 1);
        // Another container's forwards are its own.
        assert!(Container::new("d").forward_slot().is_some());
        drop(held);
        assert!(c.forward_slot().is_some());
    }

    #[test]
    fn an_error_answer_carries_the_question_a_stub_resolver_matches() {
        let q = query("ext.Example.", RecordType::A);
        let servfail = error_header(&q, 2);
        let m = Message::from_vec(&servfail).unwrap();
        assert_eq!(
            (m.metadata.id, u16::from(m.metadata.response_code)),
            (0x4242, 2)
        );
        assert_eq!(
            m.queries.len(),
            1,
            "glibc drops an answer without its question"
        );
        assert_eq!(m.queries[0].name().to_ascii(), "ext.Example.");
        assert_eq!(m.queries[0].query_type(), RecordType::A);
        // A query whose question does not read gets a bare header.
        let mut bad = q.clone();
        bad.truncate(15);
        assert_eq!(error_header(&bad, 1).len(), 12);
        bad = q.clone();
        bad[5] = 2;
        assert_eq!(error_header(&bad, 1)[4..6], [0, 0]);
    }

    fn with_web() -> Shared {
        use crate::cluster::model::{ContainerEndpoint, Network, View};
        let mut v = View::default();
        v.networks
            .insert("n".into(), Network::for_tests("n", "demo", 4096));
        for i in 2..50u8 {
            let ip = std::net::Ipv4Addr::new(10, 0, 0, i);
            v.containers.push(ContainerEndpoint {
                network_id: "n".into(),
                ip,
                mac: crate::wire::Mac::for_ip(ip),
                name: if i == 2 {
                    "Web".into()
                } else {
                    format!("big{i}")
                },
                netns: "x".into(),
                node_id: "a".into(),
                service: None,
                weight: 1,
                draining: false,
            });
        }
        let s = shared();
        *s.names.write().unwrap() = Arc::new(NameTable::build(
            &v,
            HashMap::from([("c".to_string(), vec!["n".to_string()])]),
        ));
        s
    }

    #[test]
    fn the_fast_path_answers_like_a_resolver_expects() {
        let s = with_web();
        let Answer::Now(bytes) = answer(&s, "c", &query("WEB.", RecordType::A), Transport::Udp)
        else {
            panic!("no answer")
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.authoritative && !m.metadata.truncation);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "WEB.",
            "the question comes back as asked"
        );
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, 2);
        assert_eq!(m.answers[0].data.to_string(), "10.0.0.2");
        // With EDNS the OPT comes back; AAAA takes the general path (no data).
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_max_payload(1232);
        q.set_edns(e);
        let Answer::Now(bytes) = answer(&s, "c", &q.to_vec().unwrap(), Transport::Udp) else {
            panic!("no answer")
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.edns.map(|e| e.max_payload()), Some(1232));
        let Answer::Now(bytes) = answer(&s, "c", &query("web.", RecordType::AAAA), Transport::Udp)
        else {
            panic!("no answer")
        };
        assert!(Message::from_vec(&bytes).unwrap().answers.is_empty());
    }

    #[test]
    fn other_names_are_forwarded() {
        let s = shared();
        assert_eq!(
            answer(
                &s,
                "c",
                &query("example.com.", RecordType::A),
                Transport::Udp
            ),
            Answer::Forward
        );
        assert_eq!(s.stats.queries.load(Relaxed), 1);
    }

    #[test]
    fn big_answers_are_truncated_to_fit() {
        use hickory_proto::rr::{rdata::A, RData, Record};
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
