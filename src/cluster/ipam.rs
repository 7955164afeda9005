//! Address and identifier allocation: subnets, VNIs and container IPs.
//!
//! Pure functions over what is already taken; the cluster's leader calls them
//! while it holds the allocation lock, so two hosts creating networks or
//! attaching containers at the same moment never get the same answer.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The first VNI mesh hands out (below are left for hand-made networks).
pub const FIRST_VNI: u32 = 4096;
/// The pool default subnets are carved from, as /24s.
pub const DEFAULT_POOL: Subnet = Subnet {
    addr: Ipv4Addr::new(10, 0, 0, 0),
    prefix_len: 8,
};
pub const DEFAULT_PREFIX: u8 = 24;

/// An IPv4 prefix whose host bits are zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Subnet {
    /// A subnet; refuses host bits set and prefixes longer than /30.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Subnet, String> {
        if prefix_len > 30 {
            return Err(format!(
                "subnet {addr}/{prefix_len} is too small: use a prefix of /30 or shorter"
            ));
        }
        let s = Subnet { addr, prefix_len };
        if u32::from(addr) & !s.mask() != 0 {
            let net = Ipv4Addr::from(u32::from(addr) & s.mask());
            return Err(format!(
                "subnet {addr}/{prefix_len} has host bits set: did you mean {net}/{prefix_len}?"
            ));
        }
        Ok(s)
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
    fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }
    fn first(&self) -> u32 {
        u32::from(self.addr)
    }
    fn last(&self) -> u32 {
        self.first() | !self.mask()
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.first()
    }
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }
    /// True for the addresses no host may take: the network and broadcast addresses.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v == self.first() || v == self.last()
    }
    /// The first host address, the default gateway.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first() + 1)
    }
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        (self.first() + 1..self.last()).map(Ipv4Addr::from)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = || format!("invalid subnet '{s}': expected an IPv4 CIDR like 10.1.0.0/16");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let p: u8 = p.parse().map_err(|_| bad())?;
        if p > 32 {
            return Err(bad());
        }
        Subnet::new(addr, p)
    }
}

impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The lowest VNI from [`FIRST_VNI`] up that no network has.
pub fn next_vni(taken: impl IntoIterator<Item = u32>) -> Option<u32> {
    let mut taken: Vec<u32> = taken.into_iter().filter(|v| *v >= FIRST_VNI).collect();
    taken.sort_unstable();
    let mut candidate = FIRST_VNI;
    for v in taken {
        if v == candidate {
            candidate += 1;
        } else if v > candidate {
            break;
        }
    }
    (candidate <= crate::wire::vxlan::Vni::MAX).then_some(candidate)
}

/// The first /24 of the default pool that overlaps no existing subnet.
pub fn carve_default(taken: &[Subnet]) -> Option<Subnet> {
    let step = 1u32 << (32 - u32::from(DEFAULT_PREFIX));
    let mut at = DEFAULT_POOL.first();
    while at <= DEFAULT_POOL.last() {
        let candidate = Subnet {
            addr: Ipv4Addr::from(at),
            prefix_len: DEFAULT_PREFIX,
        };
        match taken
            .iter()
            .filter(|t| t.overlaps(&candidate))
            .map(|t| t.last())
            .max()
        {
            None => return Some(candidate),
            // Skip past the whole subnet in the way (it may be a /16).
            Some(last) => at = (last / step + 1).checked_mul(step)?,
        }
    }
    None
}

/// The lowest free host address of `subnet` that is not the gateway or taken.
pub fn next_ip(
    subnet: &Subnet,
    gateway: Ipv4Addr,
    taken: &std::collections::HashSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    subnet
        .hosts()
        .find(|ip| *ip != gateway && !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn s(x: &str) -> Subnet {
        x.parse().unwrap()
    }

    #[test]
    fn parse_and_validate() {
        assert_eq!(s("10.20.0.0/16").to_string(), "10.20.0.0/16");
        assert!("10.20.0.1/16"
            .parse::<Subnet>()
            .unwrap_err()
            .contains("did you mean 10.20.0.0/16"));
        for bad in ["10.0.0.0", "10.0.0/24", "10.0.0.0/33", "x/8", "10.0.0.0/31"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap() {
        assert!(s("10.0.0.0/16").overlaps(&s("10.0.5.0/24")));
        assert!(s("10.0.5.0/24").overlaps(&s("10.0.0.0/16")));
        assert!(!s("10.0.0.0/24").overlaps(&s("10.0.1.0/24")));
        assert!(s("10.0.0.0/8").contains("10.200.3.4".parse().unwrap()));
    }

    #[test]
    fn vnis_fill_gaps_from_4096() {
        assert_eq!(next_vni([]), Some(4096));
        assert_eq!(next_vni([4096, 4097, 4099]), Some(4098));
        assert_eq!(next_vni([100, 4097]), Some(4096));
    }

    #[test]
    fn default_subnets_skip_what_is_taken() {
        assert_eq!(carve_default(&[]), Some(s("10.0.0.0/24")));
        assert_eq!(carve_default(&[s("10.0.0.0/24")]), Some(s("10.0.1.0/24")));
        assert_eq!(carve_default(&[s("10.0.0.0/16")]), Some(s("10.1.0.0/24")));
        assert_eq!(carve_default(&[s("10.0.1.0/24")]), Some(s("10.0.0.0/24")));
        assert_eq!(carve_default(&[s("10.0.0.0/8")]), None);
    }

    #[test]
    fn ips_skip_gateway_network_broadcast_and_taken() {
        let n = s("10.0.0.0/30");
        let gw = n.first_host();
        let mut taken = HashSet::new();
        assert_eq!(next_ip(&n, gw, &taken), Some("10.0.0.2".parse().unwrap()));
        taken.insert("10.0.0.2".parse().unwrap());
        assert_eq!(next_ip(&n, gw, &taken), None);
        assert!(n.is_reserved("10.0.0.3".parse().unwrap()));
    }

    proptest! {
        /// Against a naive model: whatever is taken, a carved subnet overlaps none of it.
        #[test]
        fn carved_subnets_never_overlap(taken in proptest::collection::vec((0u32..256, 0u32..256, 8u8..28), 0..20)) {
            let taken: Vec<Subnet> = taken.into_iter().map(|(a, b, p)| {
                let raw = u32::from(Ipv4Addr::new(10, a as u8, b as u8, 0));
                let mask = u32::MAX << (32 - u32::from(p));
                Subnet::new(Ipv4Addr::from(raw & mask), p).unwrap()
            }).collect();
            if let Some(c) = carve_default(&taken) {
                prop_assert!(taken.iter().all(|t| !t.overlaps(&c)));
                prop_assert!(DEFAULT_POOL.overlaps(&c));
            }
        }
    }
}
