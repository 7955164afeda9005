//! The DNS request handler, one per container namespace: hickory-server parses
//! and encodes, this answers from the [`NameTable`] or forwards.

use super::forward::{ForwardError, Forwarder};
use super::names::{parse_reverse, Lookup, NameTable};
use super::DnsStats;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, PTR, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

/// What every container's handler shares.
pub struct Shared {
    pub names: RwLock<Arc<NameTable>>,
    pub forwarder: Forwarder,
    pub ttl: u32,
    pub stats: DnsStats,
}

impl Shared {
    pub fn names(&self) -> Arc<NameTable> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The handler of one container's 127.0.0.11.
pub struct Handler {
    /// The container's namespace, as attached (it picks the networks in scope).
    pub netns: String,
    pub shared: Arc<Shared>,
}

fn servfail(req: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&req.metadata);
    metadata.response_code = ResponseCode::ServFail;
    Header {
        metadata,
        counts: HeaderCounts::default(),
    }
    .into()
}

/// Our answer for `qname`/`qtype` asked from `netns`: the records (maybe
/// none: the name is ours but has no data of that type), or `None` when the
/// name is not ours and must be forwarded.
pub fn local_records(
    shared: &Shared,
    netns: &str,
    qname: &Name,
    qtype: RecordType,
) -> Option<Vec<Record>> {
    let names = shared.names();
    let ascii = qname.to_ascii();
    let ttl = shared.ttl;
    match qtype {
        RecordType::PTR => parse_reverse(&ascii)
            .and_then(|ip| names.reverse(netns, ip))
            .map(|target| {
                Name::from_ascii(format!("{target}."))
                    .map(|t| vec![Record::from_rdata(qname.clone(), ttl, RData::PTR(PTR(t)))])
                    .unwrap_or_default()
            }),
        qtype => match names.lookup(netns, &ascii) {
            Lookup::Found(ips) if qtype == RecordType::A || qtype == RecordType::ANY => Some(
                ips.into_iter()
                    .map(|ip| Record::from_rdata(qname.clone(), ttl, RData::A(A(ip))))
                    .collect(),
            ),
            // The name is ours but has only IPv4 addresses: NOERROR, no data.
            Lookup::Found(_) => Some(vec![]),
            Lookup::NotOurs => None,
        },
    }
}

/// The SOA sent with answers that have no records, so resolvers cache the
/// absence only for the TTL (RFC 2308).
pub fn soa(ttl: u32) -> Option<Record> {
    let zone = Name::from_ascii("mesh.").ok()?;
    let admin = Name::from_ascii("hostmaster.mesh.").ok()?;
    Some(Record::from_rdata(
        zone.clone(),
        ttl,
        RData::SOA(SOA::new(zone, admin, 1, 60, 60, 60, ttl)),
    ))
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let stats = &self.shared.stats;
        stats.queries.fetch_add(1, Relaxed);
        // Answer with OPT only if asked with one, sized as the client said:
        // hickory truncates UDP answers to it (512 without EDNS) and sets TC.
        let edns = request.edns.as_ref().map(|e| {
            let mut r = Edns::new();
            r.set_max_payload(e.max_payload().max(512));
            r
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let query = match request.request_info() {
            Ok(info)
                if request.metadata.message_type == MessageType::Query
                    && request.metadata.op_code == OpCode::Query =>
            {
                info.query
            }
            _ => {
                stats.malformed.fetch_add(1, Relaxed);
                let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return response
                    .send_response(resp)
                    .await
                    .unwrap_or_else(|_| servfail(request));
            }
        };
        let qname = Name::from(query.name());
        let ttl = self.shared.ttl;
        let answers = local_records(&self.shared, &self.netns, &qname, query.query_type());
        if let Some(answers) = answers {
            stats.answered.fetch_add(1, Relaxed);
            let mut md = Metadata::response_from_request(&request.metadata);
            md.authoritative = true;
            md.recursion_available = true;
            let soa: Vec<Record> = if answers.is_empty() {
                soa(ttl).into_iter().collect()
            } else {
                vec![]
            };
            let resp = builder.build(md, answers.iter(), [], soa.iter(), []);
            return response
                .send_response(resp)
                .await
                .unwrap_or_else(|_| servfail(request));
        }
        stats.forwarded.fetch_add(1, Relaxed);
        let tcp = request.protocol() == Protocol::Tcp;
        let upstream = match self.shared.forwarder.forward(request.as_slice(), tcp).await {
            Ok(bytes) => Message::from_vec(&bytes).ok(),
            Err(ForwardError::Overloaded) => {
                stats.overloaded.fetch_add(1, Relaxed);
                None
            }
            Err(ForwardError::NoUpstream | ForwardError::AllFailed) => None,
        };
        let Some(up) = upstream else {
            stats.forward_failed.fetch_add(1, Relaxed);
            let resp = builder.error_msg(&request.metadata, ResponseCode::ServFail);
            return response
                .send_response(resp)
                .await
                .unwrap_or_else(|_| servfail(request));
        };
        // The upstream's rcode (NXDOMAIN...) and flags, and its authority
        // section with the SOA, go back as they came.
        let mut md = up.metadata;
        md.id = request.metadata.id;
        let resp = builder.build(
            md,
            up.answers.iter(),
            up.authorities.iter(),
            [],
            up.additionals.iter(),
        );
        response
            .send_response(resp)
            .await
            .unwrap_or_else(|_| servfail(request))
    }
}
