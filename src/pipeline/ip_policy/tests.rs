#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;
use crate::config::IpLists;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn policy(allow: &[&str], deny: &[&str]) -> IpPolicy {
    IpPolicy::new(&IpLists {
        allow: nets(allow),
        deny: nets(deny),
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn empty_policy_admits_everyone() {
    let p = policy(&[], &[]);
    assert!(p.is_empty());
    assert!(IpPolicy::default().is_empty());
    for a in [
        "1.2.3.4",
        "::1",
        "::ffff:10.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
    ] {
        assert_eq!(p.check(ip(a)), Ok(()), "{a}");
    }
}

#[test]
fn mapped_v6_is_denied_by_v4_entry() {
    let p = policy(&[], &["127.0.0.66/32"]);
    assert!(!p.is_empty());
    assert_eq!(
        p.check(ip("::ffff:127.0.0.66")),
        Err(Reject::IpDenied("deny list"))
    );
    assert_eq!(
        p.check(ip("127.0.0.66")),
        Err(Reject::IpDenied("deny list"))
    );
    assert_eq!(p.check(ip("127.0.0.67")), Ok(()));
    assert_eq!(p.check(ip("::ffff:127.0.0.67")), Ok(()));
}

#[test]
fn mapped_v6_entry_denies_v4_address() {
    let p = policy(&[], &["::ffff:10.0.0.0/104"]);
    assert!(p.check(ip("10.1.2.3")).is_err());
    assert!(p.check(ip("::ffff:10.1.2.3")).is_err());
    assert!(p.check(ip("11.0.0.1")).is_ok());
    // A plain IPv6 network does not swallow IPv4 clients.
    let p = policy(&[], &["::/0"]);
    assert!(p.check(ip("10.1.2.3")).is_ok());
    assert!(p.check(ip("2001:db8::1")).is_err());
}

#[test]
fn deny_beats_allow() {
    let p = policy(&["10.0.0.0/8"], &["10.1.0.0/16"]);
    assert_eq!(p.check(ip("10.2.3.4")), Ok(()));
    assert_eq!(p.check(ip("10.1.3.4")), Err(Reject::IpDenied("deny list")));
    assert_eq!(
        p.check(ip("11.0.0.1")),
        Err(Reject::IpDenied("not in allow list"))
    );
    let p = policy(&["10.0.0.1/32"], &["10.0.0.1/32"]);
    assert!(p.check(ip("10.0.0.1")).is_err());
}

#[test]
fn allow_list_is_per_family() {
    let p = policy(&["10.0.0.0/8"], &[]);
    assert!(p.check(ip("2001:db8::1")).is_err());
    assert!(p.check(ip("::ffff:10.9.9.9")).is_ok());
    let p = policy(&["2001:db8::/32"], &[]);
    assert!(p.check(ip("2001:db8:1::1")).is_ok());
    assert!(p.check(ip("10.0.0.1")).is_err());
}

#[test]
fn edges_of_the_address_space() {
    let p = policy(
        &[],
        &[
            "0.0.0.0/32",
            "255.255.255.255/32",
            "::/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        ],
    );
    assert!(p.check(ip("0.0.0.0")).is_err());
    assert!(p.check(ip("0.0.0.1")).is_ok());
    assert!(p.check(ip("255.255.255.255")).is_err());
    assert!(p.check(ip("255.255.255.254")).is_ok());
    assert!(p.check(ip("::")).is_err());
    assert!(p.check(ip("::2")).is_ok());
    assert!(p
        .check(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        .is_err());
    let p = policy(&[], &["0.0.0.0/0", "::/0"]);
    assert!(p.check(ip("1.2.3.4")).is_err());
    assert!(p.check(ip("::1")).is_err());
}

#[test]
fn ranges_merge() {
    let set = IpRangeSet::new(&nets(&[
        "10.0.0.0/24",
        "10.0.1.0/24",
        "10.0.0.128/25",
        "10.0.3.0/24",
        "0.0.0.0/0",
        "2001:db8::/33",
        "2001:db8:8000::/33",
    ]));
    assert_eq!(set.range_count(), 2);
    let set = IpRangeSet::new(&nets(&["10.0.0.0/24", "10.0.1.0/24", "10.0.3.0/24"]));
    assert_eq!(set.range_count(), 2);
    assert!(set.contains(ip("10.0.1.255")));
    assert!(!set.contains(ip("10.0.2.0")));
    assert!(set.contains(ip("10.0.3.0")));
    assert!(!set.contains(ip("9.255.255.255")));
}

#[test]
fn canonical_net_folds_only_mapped_block() {
    assert_eq!(
        canonical_net("::ffff:0:0/96".parse().unwrap()),
        "0.0.0.0/0".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        canonical_net("::ffff:192.0.2.1/128".parse().unwrap()),
        "192.0.2.1/32".parse::<IpNet>().unwrap()
    );
    let wide: IpNet = "::ffff:0:0/95".parse().unwrap();
    assert_eq!(canonical_net(wide), wide);
    let v6: IpNet = "2001:db8::/32".parse().unwrap();
    assert_eq!(canonical_net(v6), v6);
    assert!(net_contains(
        &"10.0.0.0/8".parse().unwrap(),
        ip("::ffff:10.1.1.1")
    ));
}

/// 100k random CIDRs (3/4 IPv4, 1/4 IPv6), the same every run.
fn big_list() -> &'static (Vec<IpNet>, IpPolicy) {
    static BIG: std::sync::OnceLock<(Vec<IpNet>, IpPolicy)> = std::sync::OnceLock::new();
    BIG.get_or_init(|| {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let list: Vec<IpNet> = (0..100_000)
            .map(|i| {
                let r = next();
                if i % 4 == 0 {
                    let a = Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(r) << 32));
                    IpNet::new(IpAddr::V6(a), 40 + (r % 89) as u8)
                        .unwrap()
                        .trunc()
                } else {
                    let a = Ipv4Addr::from((r >> 32) as u32);
                    IpNet::new(IpAddr::V4(a), 12 + (r % 21) as u8)
                        .unwrap()
                        .trunc()
                }
            })
            .collect();
        let start = std::time::Instant::now();
        let p = IpPolicy::new(&IpLists {
            allow: vec![],
            deny: list.clone(),
        });
        let took = start.elapsed();
        // Debug build; release is ~10x faster.
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
        (list, p)
    })
}

#[test]
fn hundred_thousand_entries_build_fast() {
    let (list, p) = big_list();
    assert_eq!(list.len(), 100_000);
    for n in list.iter().step_by(97) {
        assert!(p.check(n.network()).is_err());
        assert!(p.check(n.broadcast()).is_err());
    }
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        // Clustered IPv4 so that networks overlap and random IPs hit them.
        (any::<u16>(), 8u8..=32).prop_map(|(hi, len)| {
            let a = Ipv4Addr::from(0x0a00_0000 | (u32::from(hi) << 8));
            IpNet::new(IpAddr::V4(a), len).unwrap().trunc()
        }),
        (any::<u32>(), 0u8..=32).prop_map(|(a, len)| IpNet::new(
            IpAddr::V4(Ipv4Addr::from(a)),
            len
        )
        .unwrap()
        .trunc()),
        (any::<u16>(), any::<u64>(), 16u8..=128).prop_map(|(hi, lo, len)| {
            let a =
                Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(hi) << 80) | u128::from(lo));
            IpNet::new(IpAddr::V6(a), len).unwrap().trunc()
        }),
        (any::<u32>(), 96u8..=128).prop_map(|(a, len)| {
            let m = Ipv4Addr::from(a).to_ipv6_mapped();
            IpNet::new(IpAddr::V6(m), len).unwrap().trunc()
        }),
    ]
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u16>()
            .prop_map(|x| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (u32::from(x) << 8) | 7))),
        any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x))),
        any::<u32>().prop_map(|x| IpAddr::V6(Ipv4Addr::from(x).to_ipv6_mapped())),
        (any::<u16>(), any::<u64>()).prop_map(|(hi, lo)| IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_u128 << 96) | (u128::from(hi) << 80) | u128::from(lo)
        ))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn hundred_thousand_table_matches_linear_scan(probes in prop::collection::vec(
        prop_oneof![
            any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x))),
            any::<u32>().prop_map(|x| IpAddr::V6(Ipv4Addr::from(x).to_ipv6_mapped())),
            any::<u64>().prop_map(|x| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(x) << 32)))),
        ], 50)) {
        let (list, p) = big_list();
        for a in probes {
            let linear = list.iter().any(|n| n.contains(&a.to_canonical()));
            prop_assert_eq!(p.check(a).is_err(), linear, "{}", a);
        }
    }
}

proptest! {
    #[test]
    fn table_matches_linear_scan(list in prop::collection::vec(arb_net(), 0..300),
                                 probes in prop::collection::vec(arb_ip(), 1..200)) {
        let set = IpRangeSet::new(&list);
        for a in probes {
            let linear = list.iter().any(|n| net_contains(n, a));
            prop_assert_eq!(set.contains(a), linear, "{}", a);
        }
    }

    #[test]
    fn policy_matches_rules(allow in prop::collection::vec(arb_net(), 0..50),
                            deny in prop::collection::vec(arb_net(), 0..50),
                            probes in prop::collection::vec(arb_ip(), 1..100)) {
        let p = IpPolicy::new(&IpLists { allow: allow.clone(), deny: deny.clone() });
        for a in probes {
            let denied = deny.iter().any(|n| net_contains(n, a));
            let allowed = allow.is_empty() || allow.iter().any(|n| net_contains(n, a));
            prop_assert_eq!(p.check(a).is_ok(), !denied && allowed, "{}", a);
        }
    }
}
