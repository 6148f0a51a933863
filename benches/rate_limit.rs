//! Rate-limit check cost (one hot key; 1M distinct keys) and memory for 1M tracked IP keys, next
//! to two references measured in the same run: a bare `DashMap` read over 1M keys and one
//! dependent cache miss in a 32 MiB array (the latency of one isolated check's miss).
//!
//! `cargo bench --bench rate_limit -- --warm-up-time 2 --measurement-time 5`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use governor::clock::FakeRelativeClock;
use http::HeaderMap;
use iptgate::config::{LimitKey, RateLimitPolicy};
use iptgate::pipeline::rate_limit::{KeyInput, Limiters};

const KEYS: u32 = 1_000_000;

fn policy() -> RateLimitPolicy {
    RateLimitPolicy {
        name: "per_ip".into(),
        key: LimitKey::Ip,
        count: 100,
        per: Duration::from_secs(1),
        burst: 200,
        ipv6_prefix: 64,
    }
}

fn nth_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i))
}

fn input(ip: IpAddr, headers: &HeaderMap) -> KeyInput<'_> {
    KeyInput {
        ip,
        sub: None,
        route: "app",
        headers,
    }
}

/// Resident set size in MiB, from /proc/self/statm (Linux).
fn rss_mib() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    (pages * 4096) as f64 / (1024.0 * 1024.0)
}

fn memory(_c: &mut Criterion) {
    let clock = FakeRelativeClock::default();
    let l = Limiters::with_clock(&[policy()], None, clock.clone());
    let h = HeaderMap::new();
    let before = rss_mib();
    for i in 0..KEYS {
        black_box(l.check(0, &input(nth_ip(i), &h)));
    }
    let full = rss_mib();
    let tracked = l.tracked_keys(0);
    clock.advance(Duration::from_secs(3));
    l.prune();
    let pruned = rss_mib();
    println!(
        "memory: {tracked} IP keys: RSS {before:.1} -> {full:.1} MiB (+{:.1} MiB); \
         after prune {pruned:.1} MiB ({} keys left)",
        full - before,
        l.tracked_keys(0)
    );
}

/// Checks as the gateway makes them: at the request's arrival time, read and converted to
/// limiter time once per request before any check (`check_at`). Here that time advances every
/// 1,024 checks. The `own_clock_read` variant reads the clock inside every check instead, for
/// comparison.
fn checks(c: &mut Criterion) {
    let h = HeaderMap::new();
    let l = Limiters::new(&[policy()], None);
    let hot = input(nth_ip(1), &h);
    let mut now = l.time(Instant::now());
    let mut n = 0u32;
    c.bench_function("check/hot_key", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            if n % 1024 == 0 {
                now = l.time(Instant::now());
            }
            black_box(l.check_at(0, black_box(&hot), now))
        })
    });

    let l = Limiters::new(&[policy()], None);
    for i in 0..KEYS {
        l.check(0, &input(nth_ip(i), &h));
    }
    let mut now = l.time(Instant::now());
    let mut i = 0u32;
    c.bench_function("check/1M_distinct_keys", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            if i % 1024 == 0 {
                now = l.time(Instant::now());
            }
            black_box(l.check_at(0, &input(nth_ip(i), &h), now))
        })
    });
    c.bench_function("check/1M_distinct_keys_own_clock_read", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(l.check(0, &input(nth_ip(i), &h)))
        })
    });
}

/// Reference: a bare `DashMap<u64, u64>` read over 1M keys (a general-purpose concurrent map).
fn baseline(c: &mut Criterion) {
    let m: dashmap::DashMap<u64, u64> = dashmap::DashMap::new();
    for i in 0..u64::from(KEYS) {
        m.insert(i, i);
    }
    let mut i = 0u64;
    c.bench_function("baseline/dashmap_get_1M_keys", |b| {
        b.iter(|| {
            i = (i + 1) % u64::from(KEYS);
            black_box(m.get(&i).map(|v| *v))
        })
    });
}

/// Reference: one dependent load from a random place in 32 MiB (the size of the limiter's table
/// at 1M keys), i.e. the latency of one cache miss on this machine. A pointer chase over a
/// random cycle (Sattolo's shuffle), so every load waits for the previous one. Checks in a loop
/// overlap their misses; a lone check in a request pays this once.
fn miss_floor(c: &mut Criterion) {
    const N: usize = 32 * 1024 * 1024 / 8;
    let mut next: Vec<usize> = (0..N).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..N).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % i as u64) as usize;
        next.swap(i, j);
    }
    let mut p = 0usize;
    c.bench_function("baseline/one_dependent_miss_32MiB", |b| {
        b.iter(|| {
            p = next[p];
            black_box(p)
        })
    });
}

criterion_group!(benches, memory, checks, baseline, miss_floor);
criterion_main!(benches);
