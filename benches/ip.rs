//! Benchmarks for phases 1–2: IP policy lookups in sorted range tables against a naive
//! linear scan of the CIDR list, table build time, and client-IP resolution over
//! `X-Forwarded-For` chains of growing length.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use iptgate::config::{ClientIpConfig, ForwardHeader, IpLists};
use iptgate::pipeline::client_ip;
use iptgate::pipeline::ip_policy::IpPolicy;

/// xorshift64: deterministic inputs without a dev-dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` random networks, three IPv4 for one IPv6.
fn cidrs(n: usize, rng: &mut Rng) -> Vec<IpNet> {
    (0..n)
        .filter_map(|i| {
            let r = rng.next();
            let net = if i % 4 == 0 {
                let a = Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(r) << 32));
                IpNet::new(IpAddr::V6(a), 40 + (r % 89) as u8)
            } else {
                IpNet::new(
                    IpAddr::V4(Ipv4Addr::from((r >> 32) as u32)),
                    12 + (r % 21) as u8,
                )
            };
            net.ok().map(|n| n.trunc())
        })
        .collect()
}

fn probes(rng: &mut Rng) -> Vec<IpAddr> {
    (0..1024)
        .map(|i| {
            let r = rng.next();
            if i % 4 == 0 {
                IpAddr::V6(Ipv6Addr::from(
                    (0x2001_0db8_u128 << 96) | (u128::from(r) << 32),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from((r >> 32) as u32))
            }
        })
        .collect()
}

fn linear_denied(list: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    list.iter().any(|n| n.contains(&ip))
}

fn lookup(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let probes = probes(&mut rng);
    let mut group = c.benchmark_group("ip_lookup");
    for n in [10usize, 1_000, 100_000] {
        let list = cidrs(n, &mut rng);
        let policy = IpPolicy::new(&IpLists {
            allow: vec![],
            deny: list.clone(),
        });
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("table", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(policy.check(black_box(probes[i])).is_err())
            })
        });
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("linear", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(linear_denied(&list, black_box(probes[i])))
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let lists = IpLists {
        allow: vec![],
        deny: cidrs(100_000, &mut rng),
    };
    let mut group = c.benchmark_group("ip_build");
    group.sample_size(10);
    group.bench_function("table_100k", |b| {
        b.iter(|| IpPolicy::new(black_box(&lists)))
    });
    group.finish();
}

fn resolve(c: &mut Criterion) {
    let cfg = ClientIpConfig {
        trusted_proxies: vec![
            "10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!()),
            "fd00::/8".parse().unwrap_or_else(|_| unreachable!()),
        ],
        header: ForwardHeader::XForwardedFor,
        proxy_protocol: false,
    };
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let mut group = c.benchmark_group("resolve_xff");
    for hops in [1usize, 5, 20] {
        // The client, then hops-1 trusted proxies: the walk visits every element.
        let mut chain = vec!["198.51.100.7".to_string()];
        chain.extend((1..hops).map(|h| format!("10.0.{}.{}", h / 250, h % 250 + 2)));
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&chain.join(", ")) {
            headers.append("x-forwarded-for", v);
        }
        group.bench_with_input(BenchmarkId::from_parameter(hops), &hops, |b, _| {
            b.iter(|| {
                client_ip::resolve(
                    black_box(peer),
                    client_ip::Proxied::No,
                    black_box(&headers),
                    &cfg,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, build, resolve);
criterion_main!(benches);
