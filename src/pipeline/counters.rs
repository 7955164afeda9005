//! Packet counters. Each dataplane thread owns one [`Counters`] and is its only
//! writer, so a bump is a plain load and store (no locked read-modify-write on
//! the hot path); the control side reads them for `meshctl` at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why the pipeline dropped a frame. Every drop has a reason and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// A header did not parse (too short, bad fixed field, bad length).
    Malformed,
    /// VXLAN from an address that is neither a cluster member nor a static VTEP.
    NotMember,
    /// VXLAN for a VNI we do not serve.
    UnknownVni,
    /// A frame from a port that the tables do not know (being attached or detached).
    UnknownPort,
    /// A container sent with a source MAC other than its own.
    Spoofed,
    /// Broadcast or multicast that is not an ARP request: we never flood.
    Flood,
    /// ARP that we do not answer: a reply, or a request for an unknown address.
    ArpIgnored,
    /// Unicast to a MAC that no endpoint of the network has.
    UnknownDestination,
    /// Routed traffic (to the gateway MAC) with no route yet.
    NoRoute,
    /// An ethertype we do not carry (IPv6 for now).
    UnsupportedProtocol,
    /// A frame would go back where it came from.
    Hairpin,
    /// The buffer had no room in front for the VXLAN header.
    NoHeadroom,
    /// A new flow to a VIP with no task (refused with RST / port unreachable).
    NoBackend,
    /// A new flow to a VIP while the connection table is full (refused).
    ConntrackFull,
    /// A TCP segment to a VIP of a flow that is not tracked (answered with RST).
    UntrackedFlow,
    /// The kernel refused to send the datagram (no route to the VTEP, a
    /// firewall, a full socket) or to take the frame (TAP or TUN write).
    SendFailed,
    /// A later IPv4 fragment for the host stack, come before its first:
    /// not sent on its own but held, and a copy follows the first if it
    /// comes (see `fragments`). Not a loss by itself.
    FragmentHeld,
}

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        DropReason::Malformed,
        DropReason::NotMember,
        DropReason::UnknownVni,
        DropReason::UnknownPort,
        DropReason::Spoofed,
        DropReason::Flood,
        DropReason::ArpIgnored,
        DropReason::UnknownDestination,
        DropReason::NoRoute,
        DropReason::UnsupportedProtocol,
        DropReason::Hairpin,
        DropReason::NoHeadroom,
        DropReason::NoBackend,
        DropReason::ConntrackFull,
        DropReason::UntrackedFlow,
        DropReason::SendFailed,
        DropReason::FragmentHeld,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotMember => "not_member",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::UnknownPort => "unknown_port",
            DropReason::Spoofed => "spoofed",
            DropReason::Flood => "flood",
            DropReason::ArpIgnored => "arp_ignored",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::NoRoute => "no_route",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::Hairpin => "hairpin",
            DropReason::NoHeadroom => "no_headroom",
            DropReason::NoBackend => "vip_no_backend",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::UntrackedFlow => "vip_untracked_flow",
            DropReason::SendFailed => "send_failed",
            DropReason::FragmentHeld => "fragment_held",
        }
    }
}

/// Counters of one dataplane thread.
#[derive(Debug, Default)]
pub struct Counters {
    pub from_tap: AtomicU64,
    pub from_underlay: AtomicU64,
    pub to_tap: AtomicU64,
    pub to_underlay: AtomicU64,
    /// Packets the host stack handed us through the ingress TUN, and back.
    pub from_host: AtomicU64,
    pub to_host: AtomicU64,
    /// Frames containers sent out of the overlay (masqueraded by the host).
    pub egress: AtomicU64,
    /// Return paths not learned: the table was full, or another host
    /// already carries the same open flow.
    pub return_path_full: AtomicU64,
    pub return_path_clashes: AtomicU64,
    pub arp_replies: AtomicU64,
    /// IPv4 fragments after the first sent the way of their first, and
    /// those with no note of it (judged on their own); of these, those
    /// also kept a moment in case their first is still to come. Such a
    /// fragment counts twice: as what it became on its own (often a drop)
    /// and, if its first comes, as what its copy became (followed, and
    /// sent).
    pub fragments_followed: AtomicU64,
    pub fragments_unmatched: AtomicU64,
    pub fragments_parked: AtomicU64,
    pub drops: [AtomicU64; DropReason::ALL.len()],
}

/// Adds one to a counter that only this thread writes.
#[inline]
pub fn bump(c: &AtomicU64) {
    add(c, 1);
}

/// Adds `n` to a counter that only this thread writes.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Counters {
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize].load(Ordering::Relaxed)
    }

    /// A name -> value list for the API.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("from_tap", self.from_tap.load(Ordering::Relaxed)),
            ("from_underlay", self.from_underlay.load(Ordering::Relaxed)),
            ("to_tap", self.to_tap.load(Ordering::Relaxed)),
            ("to_underlay", self.to_underlay.load(Ordering::Relaxed)),
            ("from_host", self.from_host.load(Ordering::Relaxed)),
            ("to_host", self.to_host.load(Ordering::Relaxed)),
            ("egress", self.egress.load(Ordering::Relaxed)),
            (
                "return_path_full",
                self.return_path_full.load(Ordering::Relaxed),
            ),
            (
                "return_path_clashes",
                self.return_path_clashes.load(Ordering::Relaxed),
            ),
            ("arp_replies", self.arp_replies.load(Ordering::Relaxed)),
            (
                "fragments_followed",
                self.fragments_followed.load(Ordering::Relaxed),
            ),
            (
                "fragments_unmatched",
                self.fragments_unmatched.load(Ordering::Relaxed),
            ),
            (
                "fragments_parked",
                self.fragments_parked.load(Ordering::Relaxed),
            ),
        ];
        for r in DropReason::ALL {
            v.push((r.name(), self.dropped(r)));
        }
        v
    }
}
