//! Sorted range tables for CIDR sets: the data structure behind [`super::IpPolicy`].
//!
//! A list of CIDRs becomes, per address family, a sorted vector of disjoint, non-adjacent
//! inclusive `[start, end]` ranges (`u32` for IPv4, `u128` for IPv6). Building sorts and
//! merges once per config generation (100k CIDRs in a few milliseconds); a lookup is one
//! binary search, whatever the list size.
//!
//! IPv4-mapped IPv6 is folded into IPv4 on both sides: addresses go through
//! [`IpAddr::to_canonical`], and a network inside `::ffff:0:0/96` (prefix ≥ 96) is stored as
//! the IPv4 network it maps, so `::ffff:10.0.0.0/104` and `10.0.0.0/8` mean the same thing.
//! A wider IPv6 network (say `::/0`) stays an IPv6 network and does not cover IPv4 clients.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// `::ffff:0:0/96`, the IPv4-mapped block, as (network, mask) bits.
const MAPPED_PREFIX: u128 = 0xffff_u128 << 32;
const MAPPED_MASK: u128 = !0u128 << 32;

/// Rewrites a network inside `::ffff:0:0/96` (prefix ≥ 96) as the IPv4 network it maps;
/// every other network is returned unchanged.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => {
            let bits = u128::from(n.network());
            if bits & MAPPED_MASK == MAPPED_PREFIX {
                // Lossless: the low 32 bits are the IPv4 address and the prefix fits.
                let v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
                match Ipv4Net::new(v4, n.prefix_len() - 96) {
                    Ok(v4net) => IpNet::V4(v4net),
                    Err(_) => net,
                }
            } else {
                net
            }
        }
        other => other,
    }
}

/// Does `net` contain `ip`, with both sides canonicalized (IPv4-mapped IPv6 is IPv4)?
pub fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    canonical_net(*net).contains(&ip.to_canonical())
}

fn v4_range(n: &Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

fn v6_range(n: &Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

/// Sorts and merges overlapping or adjacent ranges in place.
fn merge<T: Copy + Ord + MaxInc>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut out = 0usize;
    for i in 0..ranges.len() {
        let (s, e) = ranges[i];
        if out > 0 {
            let last = &mut ranges[out - 1];
            // Overlapping or adjacent (last.1 + 1 >= s, without overflow).
            if last.1.succ().is_none_or(|next| next >= s) {
                if e > last.1 {
                    last.1 = e;
                }
                continue;
            }
        }
        ranges[out] = (s, e);
        out += 1;
    }
    ranges.truncate(out);
    ranges.shrink_to_fit();
}

/// `x + 1`, or `None` at the top of the address space.
trait MaxInc: Sized {
    fn succ(self) -> Option<Self>;
}

impl MaxInc for u32 {
    fn succ(self) -> Option<u32> {
        self.checked_add(1)
    }
}

impl MaxInc for u128 {
    fn succ(self) -> Option<u128> {
        self.checked_add(1)
    }
}

/// Is `x` inside one of the sorted, disjoint `ranges`?
fn lookup<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // Index of the first range starting after x; the candidate is the one before it.
    let i = ranges.partition_point(|r| r.0 <= x);
    i > 0 && ranges[i - 1].1 >= x
}

/// An immutable set of IP networks with O(log n) membership.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IpRangeSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpRangeSet {
    /// Builds the table: O(n log n) time, O(n) memory.
    pub fn new<'a, I: IntoIterator<Item = &'a IpNet>>(nets: I) -> IpRangeSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match canonical_net(*net) {
                IpNet::V4(n) => v4.push(v4_range(&n)),
                IpNet::V6(n) => v6.push(v6_range(&n)),
            }
        }
        merge(&mut v4);
        merge(&mut v6);
        IpRangeSet { v4, v6 }
    }

    /// Is `ip` (canonicalized first) inside one of the networks?
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => lookup(&self.v4, u32::from(a)),
            IpAddr::V6(a) => lookup(&self.v6, u128::from(a)),
        }
    }

    /// No network at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Number of disjoint ranges after merging (IPv4 + IPv6).
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

impl fmt::Debug for IpRangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpRangeSet")
            .field("v4_ranges", &self.v4.len())
            .field("v6_ranges", &self.v6.len())
            .finish()
    }
}
