use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::*;
use crate::config::LoginProtection;

fn policy(name: &str, key: LimitKey, count: u32, per: Duration, burst: u32) -> RateLimitPolicy {
    RateLimitPolicy {
        name: name.to_string(),
        key,
        count,
        per,
        burst,
        ipv6_prefix: 64,
    }
}

fn per_ip() -> RateLimitPolicy {
    // 1 request earned back per second, burst 3.
    policy("per_ip", LimitKey::Ip, 1, Duration::from_secs(1), 3)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn input<'a>(ip: IpAddr, headers: &'a HeaderMap) -> KeyInput<'a> {
    KeyInput {
        ip,
        sub: None,
        route: "app",
        headers,
    }
}

fn fake(policies: &[RateLimitPolicy]) -> (Limiters<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (Limiters::with_clock(policies, None, clock.clone()), clock)
}

#[test]
fn burst_then_refusal() {
    let (l, clock) = fake(&[per_ip()]);
    let h = HeaderMap::new();
    let k = input(ip("192.0.2.1"), &h);
    for expect in [2, 1, 0] {
        let d = l.check(0, &k);
        assert!(d.allowed);
        assert_eq!(d.remaining, expect);
        assert_eq!(d.retry_after, Duration::ZERO);
        assert_eq!(d.reset, Duration::from_secs(u64::from(3 - expect)));
    }
    let d = l.check(0, &k);
    assert_eq!(
        d,
        Decision {
            allowed: false,
            remaining: 0,
            reset: Duration::from_secs(3),
            retry_after: Duration::from_secs(1),
        }
    );
    clock.advance(Duration::from_millis(400));
    let d = l.check(0, &k);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_millis(600));
    assert_eq!(d.reset, Duration::from_millis(2600));
    clock.advance(Duration::from_millis(600));
    let d = l.check(0, &k);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.reset, Duration::from_secs(3));
    // Idle long enough: full burst again.
    clock.advance(Duration::from_secs(10));
    assert_eq!(l.check(0, &k).remaining, 2);
}

#[test]
fn two_ips_are_separate() {
    let (l, _clock) = fake(&[per_ip()]);
    let h = HeaderMap::new();
    for _ in 0..3 {
        assert!(l.check(0, &input(ip("192.0.2.1"), &h)).allowed);
    }
    assert!(!l.check(0, &input(ip("192.0.2.1"), &h)).allowed);
    assert!(l.check(0, &input(ip("192.0.2.2"), &h)).allowed);
    // IPv4-mapped IPv6 is the IPv4 address.
    assert!(!l.check(0, &input(ip("::ffff:192.0.2.1"), &h)).allowed);
}

#[test]
fn ipv6_grouped_by_prefix() {
    let hs = RandomState::new();
    let a = ip("2001:db8:1:2:aaaa::1");
    let b = ip("2001:db8:1:2:ffff:ffff:ffff:ffff");
    let c = ip("2001:db8:1:3::1");
    assert_eq!(ip_key(&a, 64, &hs), ip_key(&b, 64, &hs));
    assert_ne!(ip_key(&a, 64, &hs), ip_key(&c, 64, &hs));
    assert_eq!(ip_key(&a, 48, &hs), ip_key(&c, 48, &hs));
    assert_ne!(ip_key(&a, 128, &hs), ip_key(&b, 128, &hs));
    assert_eq!(ip_key(&a, 128, &hs), ip_key(&a, 128, &hs));
    assert_eq!(
        ip_key(&a, 96, &hs),
        ip_key(&ip("2001:db8:1:2:aaaa::2"), 96, &hs)
    );
    assert_eq!(ip_key(&a, 0, &hs), ip_key(&c, 0, &hs));
    // IPv4 keys never meet IPv6 ones, mapped addresses are IPv4.
    let v4 = ip("192.0.2.1");
    assert_eq!(
        ip_key(&v4, 64, &hs),
        ip_key(&ip("::ffff:192.0.2.1"), 64, &hs)
    );
    assert_ne!(ip_key(&v4, 64, &hs), ip_key(&ip("::"), 0, &hs));
    assert_ne!(ip_key(&v4, 64, &hs), ip_key(&ip("192.0.2.2"), 64, &hs));
    assert_eq!(ip_key(&Ipv4Addr::UNSPECIFIED.into(), 64, &hs), V4_TAG);
    assert_eq!(ip_key(&Ipv6Addr::UNSPECIFIED.into(), 64, &hs), 0);

    // Through the limiter: the whole /64 shares one bucket.
    let (l, _clock) = fake(&[per_ip()]);
    let h = HeaderMap::new();
    for _ in 0..3 {
        assert!(l.check(0, &input(a, &h)).allowed);
    }
    assert!(!l.check(0, &input(b, &h)).allowed);
    assert!(l.check(0, &input(c, &h)).allowed);
}

#[test]
fn subject_keying() {
    let p = policy("per_sub", LimitKey::Subject, 1, Duration::from_secs(1), 1);
    let (l, _clock) = fake(&[p]);
    let h = HeaderMap::new();
    let alice = KeyInput {
        ip: ip("192.0.2.1"),
        sub: Some("alice"),
        route: "app",
        headers: &h,
    };
    assert!(l.check(0, &alice).allowed);
    assert!(!l.check(0, &alice).allowed);
    // Same subject from another IP: same bucket.
    let alice2 = KeyInput {
        ip: ip("192.0.2.9"),
        ..alice
    };
    assert!(!l.check(0, &alice2).allowed);
    let bob = KeyInput {
        sub: Some("bob"),
        ..alice
    };
    assert!(l.check(0, &bob).allowed);
    // No verified subject: the policy does not apply.
    let anon = KeyInput { sub: None, ..alice };
    assert_eq!(l.bucket_key(0, &anon), None);
    for _ in 0..5 {
        let d = l.check(0, &anon);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }
    assert_eq!(l.tracked_keys(0), 2);
}

#[test]
fn header_keying() {
    let name = HeaderName::from_static("x-api-key");
    let p = policy(
        "per_key",
        LimitKey::Header(name.clone()),
        1,
        Duration::from_secs(1),
        1,
    );
    let (l, _clock) = fake(&[p]);
    let with = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(name.clone(), HeaderValue::from_str(v).expect("value"));
        h
    };
    let (a, b, none) = (with("key-a"), with("key-b"), HeaderMap::new());
    assert!(l.check(0, &input(ip("192.0.2.1"), &a)).allowed);
    assert!(!l.check(0, &input(ip("192.0.2.2"), &a)).allowed);
    assert!(l.check(0, &input(ip("192.0.2.1"), &b)).allowed);
    // Absent header: one shared bucket for everyone without it.
    assert!(l.check(0, &input(ip("192.0.2.1"), &none)).allowed);
    assert!(!l.check(0, &input(ip("192.0.2.3"), &none)).allowed);
    // Long values are hashed: fixed-size keys, still distinct.
    let long1 = with(&"x".repeat(10_000));
    let long2 = with(&format!("{}y", "x".repeat(9_999)));
    assert!(l.check(0, &input(ip("192.0.2.1"), &long1)).allowed);
    assert!(l.check(0, &input(ip("192.0.2.1"), &long2)).allowed);
    assert!(!l.check(0, &input(ip("192.0.2.1"), &long1)).allowed);
    // All values count, in order.
    let mut two = with("key-a");
    two.append(name.clone(), HeaderValue::from_static("key-b"));
    assert_ne!(
        l.bucket_key(0, &input(ip("192.0.2.1"), &two)),
        l.bucket_key(0, &input(ip("192.0.2.1"), &a))
    );
}

#[test]
fn route_and_global() {
    let route = policy("per_route", LimitKey::Route, 1, Duration::from_secs(1), 1);
    let global = policy("all", LimitKey::Global, 1, Duration::from_secs(1), 2);
    let (l, _clock) = fake(&[route, global]);
    let h = HeaderMap::new();
    let r1 = KeyInput {
        ip: ip("192.0.2.1"),
        sub: None,
        route: "one",
        headers: &h,
    };
    let r2 = KeyInput { route: "two", ..r1 };
    assert!(l.check(0, &r1).allowed);
    assert!(
        !l.check(
            0,
            &KeyInput {
                ip: ip("192.0.2.7"),
                ..r1
            }
        )
        .allowed
    );
    assert!(l.check(0, &r2).allowed);

    assert!(l.check(1, &r1).allowed);
    assert!(
        l.check(
            1,
            &KeyInput {
                ip: ip("2001:db8::1"),
                ..r2
            }
        )
        .allowed
    );
    assert!(
        !l.check(
            1,
            &KeyInput {
                ip: ip("192.0.2.99"),
                ..r1
            }
        )
        .allowed
    );
    assert_eq!(l.tracked_keys(1), 1);
}

#[test]
fn state_survives_reload_of_unchanged_policy() {
    let clock = FakeRelativeClock::default();
    let same = per_ip();
    let other = policy("other", LimitKey::Ip, 1, Duration::from_secs(1), 3);
    let gen1 = Limiters::with_clock(&[same.clone(), other.clone()], None, clock.clone());
    let h = HeaderMap::new();
    let k = input(ip("192.0.2.1"), &h);
    for i in 0..2 {
        for _ in 0..3 {
            assert!(gen1.check(i, &k).allowed);
        }
        assert!(!gen1.check(i, &k).allowed);
    }
    // Reload: `per_ip` unchanged (and moved), `other` gets a bigger burst.
    let mut changed = other.clone();
    changed.burst = 4;
    let gen2 = Limiters::with_clock(&[changed, same], Some(&gen1), clock.clone());
    assert_eq!(gen2.policy(1).name, "per_ip");
    assert!(
        !gen2.check(1, &k).allowed,
        "unchanged policy keeps its state"
    );
    let d = gen2.check(0, &k);
    assert!(d.allowed, "changed policy starts empty");
    assert_eq!(d.remaining, 3);
    // Shared, not copied: gen1 sees gen2's use.
    clock.advance(Duration::from_secs(1));
    assert!(gen2.check(1, &k).allowed);
    assert!(!gen1.check(0, &k).allowed);
}

#[test]
fn later_generation_policy_counts_from_the_shared_epoch() {
    let clock = FakeRelativeClock::default();
    let gen1 = Limiters::with_clock(&[per_ip()], None, clock.clone());
    clock.advance(Duration::from_secs(100));
    // 1 request per second, burst 2, created 100 s after the epoch.
    let late = policy("late", LimitKey::Ip, 1, Duration::from_secs(1), 2);
    let gen2 = Limiters::with_clock(&[per_ip(), late], Some(&gen1), clock.clone());
    let h = HeaderMap::new();
    let k = input(ip("192.0.2.1"), &h);
    // One arrival time serves both policies, as in the pipeline.
    let now = gen2.time(clock.now());
    assert_eq!(now, gen1.time(clock.now()), "one epoch across generations");
    let d = gen2.check_at(1, &k, now);
    assert!(d.allowed);
    assert_eq!((d.remaining, d.reset), (1, Duration::from_secs(1)));
    assert!(gen2.check_at(1, &k, now).allowed);
    let d = gen2.check_at(1, &k, now);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    assert!(gen2.check(1, &k).allowed, "earned back one second later");
    assert_eq!(
        gen2.check_at(0, &k, now).remaining,
        2,
        "per_ip: burst 3, first use"
    );
}

#[test]
fn cap_refuses_new_keys_keeps_known_ones() {
    let clock = FakeRelativeClock::default();
    let l = Limiters::with_clock_and_cap(&[per_ip()], None, clock.clone(), 3);
    let h = HeaderMap::new();
    for i in 1..=3 {
        assert!(l.check(0, &input(ip(&format!("192.0.2.{i}")), &h)).allowed);
    }
    assert_eq!(l.tracked_keys(0), 3);
    // New key at the cap: the inline prune finds nothing idle, so it is refused.
    let d = l.check(0, &input(ip("192.0.2.4"), &h));
    assert!(!d.allowed);
    assert_eq!(d.retry_after, CAP_RETRY_AFTER);
    assert_eq!(l.tracked_keys(0), 3);
    // Known keys are judged as usual.
    let d = l.check(0, &input(ip("192.0.2.1"), &h));
    assert!(d.allowed);
    assert_eq!(d.remaining, 1);
    // Once buckets are full again, the next new key triggers an inline prune and gets in.
    clock.advance(Duration::from_secs(5));
    assert!(l.check(0, &input(ip("192.0.2.4"), &h)).allowed);
    assert_eq!(l.tracked_keys(0), 1);
}

#[test]
fn cap_inline_prune_at_most_once_per_second() {
    let clock = FakeRelativeClock::default();
    let l = Limiters::with_clock_and_cap(&[per_ip()], None, clock.clone(), 1);
    let h = HeaderMap::new();
    assert!(l.check(0, &input(ip("192.0.2.1"), &h)).allowed);
    assert!(!l.check(0, &input(ip("192.0.2.2"), &h)).allowed); // prunes inline, still full
    clock.advance(Duration::from_millis(999));
    // 192.0.2.1's bucket is full again at 1 s: it would be prunable only after that.
    assert!(!l.check(0, &input(ip("192.0.2.3"), &h)).allowed);
    clock.advance(Duration::from_millis(1));
    assert!(l.check(0, &input(ip("192.0.2.3"), &h)).allowed);
}

#[test]
fn prune_drops_idle_keys() {
    let (l, clock) = fake(&[per_ip()]);
    let h = HeaderMap::new();
    for i in 0..10_000u32 {
        let a = IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i));
        l.check(0, &input(a, &h));
    }
    let busy = input(ip("192.0.2.1"), &h);
    for _ in 0..3 {
        l.check(0, &busy);
    }
    assert_eq!(l.tracked_keys(0), 10_001);
    l.prune();
    assert_eq!(l.tracked_keys(0), 10_001, "nothing idle yet");
    clock.advance(Duration::from_secs(1));
    l.prune();
    // Single-request keys are full again after 1 s; the busy one is not.
    assert_eq!(l.tracked_keys(0), 1);
    // One request earned back, not a fresh burst: pruning never forgets a live bucket.
    assert_eq!(l.check(0, &busy).remaining, 0);
    clock.advance(Duration::from_secs(3));
    l.prune();
    assert_eq!(l.tracked_keys(0), 0);
    assert!(l.slots[0].gcra.capacity() < 1_000, "tables shrink");
}

#[test]
fn headers_format() {
    let p = policy("per_ip", LimitKey::Ip, 100, Duration::from_secs(1), 200);
    let d = Decision {
        allowed: true,
        remaining: 199,
        reset: Duration::from_millis(10),
        retry_after: Duration::ZERO,
    };
    let (pol, now) = headers(&p, &d);
    assert_eq!(pol, "\"per_ip\";q=200;w=2");
    assert_eq!(now, "\"per_ip\";r=199;t=1");
    let odd = policy("a\"b\\c", LimitKey::Ip, 5, Duration::from_secs(60), 5);
    let (pol, _) = headers(&odd, &d);
    assert_eq!(pol, "\"a\\\"b\\\\c\";q=5;w=60");
}

#[test]
fn default_clock_limiter_works() {
    let l = Limiters::new(&[per_ip()], None);
    let h = HeaderMap::new();
    let d = l.check(0, &input(ip("192.0.2.1"), &h));
    assert!(d.allowed);
    assert_eq!(d.remaining, 2);
    let l2 = Limiters::new(&[per_ip()], Some(&l));
    assert_eq!(l2.check(0, &input(ip("192.0.2.1"), &h)).remaining, 1);
}

proptest! {
    /// Same decisions and remaining capacity as governor's own keyed limiter.
    #[test]
    fn matches_governor(
        burst in 1u32..6,
        period_ms in 1u64..2_000,
        steps in proptest::collection::vec((0u64..3_000, 0u8..3), 1..60),
    ) {
        let clock = FakeRelativeClock::default();
        let period = Duration::from_millis(period_ms);
        let ours = keyed::KeyedGcra::new(period, burst, clock.clone(), 100);
        let quota = Quota::with_period(period)
            .expect("period")
            .allow_burst(NonZeroU32::new(burst).expect("burst"));
        let theirs = RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        for (advance_ms, key) in steps {
            clock.advance(Duration::from_millis(advance_ms));
            let a = ours.check(u64::from(key));
            let b = theirs.check_key(&key);
            match (a, b) {
                (keyed::Outcome::Allowed { remaining, .. }, Ok(snap)) => {
                    prop_assert_eq!(remaining, snap.remaining_burst_capacity());
                }
                (keyed::Outcome::Refused { retry_after, .. }, Err(not_until)) => {
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(&clock));
                    prop_assert_eq!(Duration::from_nanos(retry_after), wait);
                }
                (a, b) => prop_assert!(false, "ours {:?}, governor {:?}", a, b.is_ok()),
            }
        }
    }
}

fn login_cfg() -> LoginProtection {
    LoginProtection {
        max_failures: 3,
        window: Duration::from_secs(600),
        lockout: Duration::from_secs(900),
        failure_status: vec![401, 403],
    }
}

#[test]
fn login_locks_after_n_failures() {
    let g = LoginGuard::new(&login_cfg());
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    assert!(g.is_failure(401) && g.is_failure(403) && !g.is_failure(200));
    assert_eq!(g.failure_at(a, t0), None);
    assert_eq!(g.failure_at(a, t0 + Duration::from_secs(1)), None);
    assert_eq!(g.locked_at(a, t0 + Duration::from_secs(2)), None);
    assert_eq!(
        g.failure_at(a, t0 + Duration::from_secs(2)),
        Some(Duration::from_secs(900))
    );
    assert_eq!(
        g.locked_at(a, t0 + Duration::from_secs(12)),
        Some(Duration::from_secs(890))
    );
    // Another client is not affected; the same /64 is.
    assert_eq!(g.locked_at(ip("192.0.2.2"), t0), None);
    let v6 = ip("2001:db8::1");
    for _ in 0..3 {
        g.failure_at(v6, t0);
    }
    assert!(g.locked_at(ip("2001:db8::2:3"), t0).is_some());
    assert!(g.locked_at(ip("2001:db8:0:1::1"), t0).is_none());
}

#[test]
fn login_lock_expires_and_window_resets() {
    let g = LoginGuard::new(&login_cfg());
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    for s in 0..3 {
        g.failure_at(a, t0 + Duration::from_secs(s));
    }
    // Failures while locked do not extend the lock.
    g.failure_at(a, t0 + Duration::from_secs(100));
    assert_eq!(
        g.locked_at(a, t0 + Duration::from_secs(902)),
        None,
        "lock expired"
    );
    // The count restarted after the lock: two more failures do not lock.
    let t1 = t0 + Duration::from_secs(1000);
    g.failure_at(a, t1);
    g.failure_at(a, t1);
    assert_eq!(g.locked_at(a, t1), None);
    // Failures spread over more than the window do not lock; the window slides.
    let b = ip("192.0.2.2");
    g.failure_at(b, t0);
    g.failure_at(b, t0 + Duration::from_secs(300));
    g.failure_at(b, t0 + Duration::from_secs(601)); // the first has left the window
    assert_eq!(g.locked_at(b, t0 + Duration::from_secs(601)), None);
    assert_eq!(
        g.failure_at(b, t0 + Duration::from_secs(700)), // 300, 601, 700
        Some(Duration::from_secs(900))
    );
}

#[test]
fn login_window_slides_over_a_burst_at_its_edge() {
    // Three failures within 600 s lock, wherever the first failure of the client fell: a
    // window fixed at the first one would restart at 600 s and let this burst through.
    let g = LoginGuard::new(&login_cfg());
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    for s in [0, 599, 601] {
        assert_eq!(g.failure_at(a, t0 + Duration::from_secs(s)), None, "{s}");
    }
    assert_eq!(
        g.failure_at(a, t0 + Duration::from_secs(602)),
        Some(Duration::from_secs(900))
    );
}

#[test]
fn login_failures_count_across_successes() {
    // The guard has no notion of success: a client holding one valid account cannot clear its
    // count by logging in between guesses (the pipeline records only failures).
    let g = LoginGuard::new(&login_cfg());
    let t0 = Instant::now();
    let a = ip("192.0.2.1");
    for _ in 0..2 {
        assert_eq!(g.failure_at(a, t0), None);
    }
    assert!(g.failure_at(a, t0).is_some());
    assert!(g.locked_at(a, t0).is_some());
}

#[test]
fn login_prune_and_cap() {
    let g = LoginGuard::with_cap(&login_cfg(), 2);
    let t0 = Instant::now();
    let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
    g.failure_at(a, t0);
    for _ in 0..3 {
        g.failure_at(b, t0);
    }
    // Full (both live): the new client is not tracked.
    g.failure_at(c, t0);
    assert_eq!(g.tracked(), 2);
    // a's window closes at 600 s, b's lock at 900 s.
    g.prune_at(t0 + Duration::from_secs(601));
    assert_eq!(g.tracked(), 1);
    assert!(g.locked_at(b, t0 + Duration::from_secs(601)).is_some());
    g.prune_at(t0 + Duration::from_secs(901));
    assert_eq!(g.tracked(), 0);
    // At the cap, an inline prune makes room once entries are stale.
    g.failure_at(a, t0 + Duration::from_secs(1000));
    g.failure_at(b, t0 + Duration::from_secs(1000));
    g.failure_at(c, t0 + Duration::from_secs(2000));
    assert_eq!(g.tracked(), 1);
}

/// 50k keys (enough to grow every shard several times), checked in rounds with a prune in
/// between: every decision matches governor's keyed limiter, so no key is lost or mixed up by
/// growth or rebuilds.
#[test]
fn table_keeps_every_key_through_growth_and_rebuilds() {
    const KEYS: u64 = 50_000;
    let clock = FakeRelativeClock::default();
    let period = Duration::from_millis(100);
    let ours = keyed::KeyedGcra::new(period, 3, clock.clone(), 1_000_000);
    let quota = Quota::with_period(period)
        .expect("period")
        .allow_burst(NonZeroU32::new(3).expect("burst"));
    let theirs = RateLimiter::dashmap_with_clock(quota, clock.clone())
        .with_middleware::<StateInformationMiddleware>();
    for round in 0..5 {
        for k in 0..KEYS {
            let key = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            match (ours.check(key), theirs.check_key(&key)) {
                (keyed::Outcome::Allowed { remaining, .. }, Ok(snap)) => {
                    assert_eq!(remaining, snap.remaining_burst_capacity(), "key {k}");
                }
                (keyed::Outcome::Refused { .. }, Err(_)) => {}
                (a, b) => panic!(
                    "round {round} key {k}: ours {a:?}, governor {:?}",
                    b.is_ok()
                ),
            }
        }
        assert_eq!(ours.len(), KEYS as usize);
        if round == 1 {
            clock.advance(Duration::from_millis(150));
            ours.retain_recent();
            assert_eq!(ours.len(), KEYS as usize, "no bucket is full again yet");
        }
    }
    clock.advance(Duration::from_secs(2));
    ours.retain_recent();
    assert_eq!(ours.len(), 0);
    assert_eq!(ours.capacity(), 0, "an empty table holds no slots");
}
