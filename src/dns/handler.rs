//! What every container's DNS server shares, and the records it holds for a
//! name (in hickory-proto's types, for the answers [`super::answer`] encodes).

use super::forward::Forwarder;
use super::names::{parse_reverse, Lookup, NameTable};
use super::DnsStats;
use hickory_proto::rr::rdata::{A, PTR, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::sync::{Arc, RwLock};

/// What every container's DNS server shares.
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
