//! Phase 4: named rate-limit policies and the login lock-out.
//!
//! # Limiters
//! [`Limiters`] holds one keyed GCRA limiter per `[rate_limits.*]` policy: `count` requests per
//! `per`, i.e. one request earned back every `per / count`, with `burst` requests of tolerance
//! (governor's `Quota::with_period(interval).allow_burst(burst)`). One `Limiters` is built per
//! config generation; a policy equal to one of the previous generation (same
//! [`RateLimitPolicy`] value, name included) shares that generation's state, so a reload does
//! not hand every client a fresh burst. A changed policy starts empty.
//!
//! Keys are a `u64` per policy (16 bytes per tracked key with its state, ~35 MiB for 1M keys
//! including the hash table's slack):
//! - `ip`: IPv4 exactly (`0xFFFF_FFFF_0000_0000 | addr`, a value no IPv6 source can produce:
//!   `ffff:ffff::/32` is multicast); IPv6 masked to `ipv6_prefix` bits — for prefixes up to 64
//!   the masked prefix itself, longer ones a keyed hash of the masked address. IPv4-mapped
//!   IPv6 counts as IPv4.
//! - `subject`: keyed hash of the verified `sub`; no subject → the policy does not apply.
//! - `route`: keyed hash of the route name. `global`: one bucket.
//! - `header:NAME`: keyed hash of all the header's values in order (any length); an absent
//!   header is one shared bucket.
//!
//! Hashes are SipHash with a random per-policy key (std `RandomState`), so a client cannot aim
//! a collision at another client's bucket; accidental collisions among 1M keys have a
//! probability around 3·10⁻⁸.
//!
//! # The cap on tracked keys
//! Keyed limiters never shrink by themselves: [`Limiters::prune`] (run by a background task)
//! forgets every key whose bucket is full again — its state is then indistinguishable from a
//! fresh one, so forgetting it changes no decision — and shrinks the tables. Between prunes a
//! policy tracks at most [`MAX_KEYS_PER_POLICY`] keys. At the cap, requests for keys already
//! tracked are judged as usual, and a request for a **new** key is refused as rate limited
//! (fail closed; `Retry-After` one second, metric `iptgate_rate_limit_key_cap_total`). Before
//! refusing, the limiter prunes itself inline, at most once per second, so the refusals last
//! only while the table is genuinely full of live buckets.
//!
//! Why not the alternatives: evicting an old key to admit the new one lets a client reset its
//! own bucket by flooding fresh keys (spoofed headers, rotated IPv6 addresses), which defeats the
//! limit exactly when it matters; admitting the new key untracked (fail open) does the same
//! without even the flood. Refusing new keys keeps every limit intact and bounds memory; its cost
//! — new clients refused while an attacker holds 1M *live* buckets — needs the attacker to keep
//! 1M distinct keys busy, and lasts one prune after the flood stops.

mod keyed;
mod login;
#[cfg(test)]
mod tests;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock, Reference};
use http::{HeaderMap, HeaderValue};

use crate::config::{LimitKey, RateLimitPolicy};

use keyed::{KeyedGcra, Outcome};
pub use login::{LoginGuard, MAX_TRACKED_LOGIN_KEYS};

/// Hard cap on keys tracked per policy between prunes (see the module docs).
pub const MAX_KEYS_PER_POLICY: usize = 1_000_000;

/// `Retry-After` for a new key refused at the cap.
const CAP_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Minimum spacing of the inline prunes triggered by the cap, in nanoseconds.
const CAP_PRUNE_SPACING: u64 = 1_000_000_000;

/// The key of the shared bucket used when a `header:NAME` policy's header is absent.
const ABSENT_HEADER_KEY: u64 = 0;
/// The key of the single `global` bucket.
const GLOBAL_KEY: u64 = 0;
/// Tag of IPv4 keys (see the module docs).
const V4_TAG: u64 = 0xFFFF_FFFF_0000_0000;

/// What a key function may read.
pub struct KeyInput<'a> {
    pub ip: IpAddr,
    /// Verified subject only.
    pub sub: Option<&'a str>,
    pub route: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests allowed right now (after this one).
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until the next request would pass.
    pub retry_after: Duration,
}

impl Decision {
    /// A bucket nothing was counted against: the whole burst left.
    pub fn untouched(burst: u32) -> Decision {
        Decision {
            allowed: true,
            remaining: burst,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
        }
    }
}

/// One policy's limiter, shared between generations while the policy is unchanged.
struct PolicyLimiter<C: Clock> {
    policy: RateLimitPolicy,
    gcra: KeyedGcra<C>,
    hasher: RandomState,
    /// `gcra.elapsed()` at the last inline prune + 1 (0 = never).
    last_cap_prune: AtomicU64,
}

impl<C: Clock> PolicyLimiter<C> {
    fn key(&self, input: &KeyInput<'_>) -> Option<u64> {
        Some(match &self.policy.key {
            LimitKey::Ip => ip_key(&input.ip, self.policy.ipv6_prefix, &self.hasher),
            LimitKey::Subject => self.hasher.hash_one(input.sub?.as_bytes()),
            LimitKey::Route => self.hasher.hash_one(input.route.as_bytes()),
            LimitKey::Global => GLOBAL_KEY,
            LimitKey::Header(name) => {
                let mut values = input.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    ABSENT_HEADER_KEY
                } else {
                    let mut h = self.hasher.build_hasher();
                    for v in values {
                        h.write_usize(v.len());
                        h.write(v.as_bytes());
                    }
                    match h.finish() {
                        ABSENT_HEADER_KEY => 1,
                        k => k,
                    }
                }
            }
        })
    }

    fn check(&self, key: u64, now: Time) -> Decision {
        let now = now.0;
        let mut out = self.gcra.check_at(key, now);
        if out == Outcome::Full && self.cap_prune() {
            out = self.gcra.check_at(key, now);
        }
        match out {
            Outcome::Allowed { remaining, reset } => Decision {
                allowed: true,
                remaining,
                reset: Duration::from_nanos(reset),
                retry_after: Duration::ZERO,
            },
            Outcome::Refused { retry_after, reset } => Decision {
                allowed: false,
                remaining: 0,
                reset: Duration::from_nanos(reset),
                retry_after: Duration::from_nanos(retry_after),
            },
            Outcome::Full => {
                metrics::counter!("iptgate_rate_limit_key_cap_total", "policy" => self.policy.name.clone())
                    .increment(1);
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset: CAP_RETRY_AFTER,
                    retry_after: CAP_RETRY_AFTER,
                }
            }
        }
    }

    /// Prunes inline when the last inline prune is more than a second old; true if it ran.
    fn cap_prune(&self) -> bool {
        let now = self.gcra.elapsed().saturating_add(1);
        let last = self.last_cap_prune.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < CAP_PRUNE_SPACING {
            return false;
        }
        if self
            .last_cap_prune
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        tracing::warn!(
            policy = %self.policy.name,
            keys = self.gcra.len(),
            "rate-limit key table full: pruning inline, refusing new keys until there is room"
        );
        self.gcra.retain_recent();
        true
    }
}

/// The bucket key of an `ip` policy (see the module docs).
///
/// Takes the address by reference and reads only the variant's own field: a request's
/// `KeyInput` was just written field by field, and one wide load of the whole `IpAddr` could
/// not be served from those narrower stores, so it would wait for them to reach the cache.
fn ip_key(ip: &IpAddr, ipv6_prefix: u8, hasher: &RandomState) -> u64 {
    let v4_key = |v4: std::net::Ipv4Addr| V4_TAG | u64::from(v4.to_bits());
    let v6 = match ip {
        IpAddr::V4(v4) => return v4_key(*v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return v4_key(v4),
            None => v6,
        },
    };
    let prefix = u32::from(ipv6_prefix.min(128));
    let masked = match prefix {
        0 => 0,
        p => v6.to_bits() & (u128::MAX << (128 - p)),
    };
    if prefix <= 64 {
        (masked >> 64) as u64
    } else {
        hasher.hash_one(masked)
    }
}

/// A point in the limiters' time: nanoseconds since their epoch ([`Limiters::time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(u64);

/// One generation's limiters; state carries over from `previous` for unchanged policies.
///
/// Generic over governor's [`Clock`] so tests can use `FakeRelativeClock`; the default is
/// `std::time::Instant`, the clock the pipeline stamps each request with. All tables of all
/// generations count time from one epoch, so a request's arrival converts to limiter
/// [`Time`] once and serves every check it meets ([`Limiters::check_at`]).
pub struct Limiters<C: Clock = MonotonicClock> {
    slots: Vec<Arc<PolicyLimiter<C>>>,
    clock: C,
    epoch: C::Instant,
}

impl Limiters {
    pub fn new(policies: &[RateLimitPolicy], previous: Option<&Limiters>) -> Limiters {
        Limiters::with_clock(policies, previous, MonotonicClock)
    }
}

impl<C: Clock + Clone> Limiters<C> {
    /// As [`Limiters::new`] with an explicit clock (new policies only; shared ones keep theirs).
    pub fn with_clock(
        policies: &[RateLimitPolicy],
        previous: Option<&Limiters<C>>,
        clock: C,
    ) -> Limiters<C> {
        Self::with_clock_and_cap(policies, previous, clock, MAX_KEYS_PER_POLICY)
    }

    /// As [`Limiters::with_clock`] with a cap on tracked keys per new policy.
    pub fn with_clock_and_cap(
        policies: &[RateLimitPolicy],
        previous: Option<&Limiters<C>>,
        clock: C,
        max_keys: usize,
    ) -> Limiters<C> {
        // The epoch passes from generation to generation, so a table shared with the previous
        // generation counts from the same instant as the new ones.
        let epoch = previous.map_or_else(|| clock.now(), |p| p.epoch);
        let slots = policies
            .iter()
            .map(|p| {
                previous
                    .and_then(|prev| prev.slots.iter().find(|s| s.policy == *p))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(PolicyLimiter {
                            policy: p.clone(),
                            gcra: KeyedGcra::with_start(
                                p.interval(),
                                p.burst,
                                clock.clone(),
                                epoch,
                                max_keys,
                            ),
                            hasher: RandomState::new(),
                            last_cap_prune: AtomicU64::new(0),
                        })
                    })
            })
            .collect();
        Limiters {
            slots,
            clock,
            epoch,
        }
    }
}

impl<C: Clock> Limiters<C> {
    pub fn policy(&self, idx: usize) -> &RateLimitPolicy {
        &self.slots[idx].policy
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The bucket a request falls into for policy `idx`; `None` when the policy does not apply
    /// (a `subject` policy without a verified subject).
    pub fn bucket_key(&self, idx: usize, input: &KeyInput<'_>) -> Option<u64> {
        self.slots[idx].key(input)
    }

    /// `t` (a reading of the limiters' clock) in limiter time.
    pub fn time(&self, t: C::Instant) -> Time {
        Time(t.duration_since(self.epoch).as_u64())
    }

    /// Counts one request against policy `idx`, now.
    pub fn check(&self, idx: usize, input: &KeyInput<'_>) -> Decision {
        self.check_at(idx, input, self.time(self.clock.now()))
    }

    /// Counts one request against policy `idx` at `now`, read and converted once per request
    /// (the request's arrival), however many policies it meets.
    pub fn check_at(&self, idx: usize, input: &KeyInput<'_>, now: Time) -> Decision {
        let slot = &self.slots[idx];
        match slot.key(input) {
            Some(key) => slot.check(key, now),
            None => Decision::untouched(slot.policy.burst),
        }
    }

    /// The state of the request's bucket in policy `idx` at `now`, counting nothing (a request
    /// refused before the limits ran still reports where its client stands).
    pub fn peek_at(&self, idx: usize, input: &KeyInput<'_>, now: Time) -> Decision {
        let slot = &self.slots[idx];
        match slot.key(input).and_then(|k| slot.gcra.peek_at(k, now.0)) {
            Some((remaining, reset)) => Decision {
                allowed: true,
                remaining,
                reset: Duration::from_nanos(reset),
                retry_after: Duration::ZERO,
            },
            None => Decision::untouched(slot.policy.burst),
        }
    }

    /// Gives back one request counted against policy `idx` at `now` (a later policy refused
    /// it): the bucket's state after, or `None` when nothing was counted for that key.
    pub fn refund_at(&self, idx: usize, input: &KeyInput<'_>, now: Time) -> Option<Decision> {
        let slot = &self.slots[idx];
        match slot.gcra.refund_at(slot.key(input)?, now.0)? {
            Outcome::Allowed { remaining, reset } => Some(Decision {
                allowed: true,
                remaining,
                reset: Duration::from_nanos(reset),
                retry_after: Duration::ZERO,
            }),
            _ => None,
        }
    }

    /// Keys currently tracked by policy `idx`.
    pub fn tracked_keys(&self, idx: usize) -> usize {
        self.slots[idx].gcra.len()
    }

    /// Drop idle keys and bound memory; called by a background task.
    pub fn prune(&self) {
        for slot in &self.slots {
            slot.gcra.retain_recent();
            let (len, max) = (slot.gcra.len(), slot.gcra.max_keys());
            if len >= max / 10 * 9 {
                tracing::warn!(policy = %slot.policy.name, keys = len, max, "rate-limit key table near its cap");
            }
        }
    }
}

/// Quotes `s` as a structured-field string (RFC 8941 §3.3.3): `"` and `\` escaped, other
/// characters outside printable ASCII replaced by `_`.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// `RateLimit-Policy` and `RateLimit` header values (IETF httpapi structured headers):
/// `"name";q=<burst>;w=<seconds to refill the whole burst, rounded up>` and
/// `"name";r=<remaining>;t=<seconds until full, rounded up>`.
pub fn headers(p: &RateLimitPolicy, d: &Decision) -> (HeaderValue, HeaderValue) {
    let name = sf_name(p);
    (policy_header(p), state_header(&name, d))
}

/// The policy name as a structured-field string (`"per_ip"`), computed once per generation.
pub fn sf_name(p: &RateLimitPolicy) -> String {
    sf_string(&p.name)
}

/// `RateLimit-Policy` for a policy: constant per generation.
pub fn policy_header(p: &RateLimitPolicy) -> HeaderValue {
    let refill = p.interval().checked_mul(p.burst).unwrap_or(Duration::MAX);
    let w = crate::error::ceil_secs(refill);
    let pol = format!("{};q={};w={w}", sf_name(p), p.burst);
    HeaderValue::from_str(&pol).unwrap_or(HeaderValue::from_static(""))
}

/// `RateLimit` for one decision, given the policy's precomputed `sf_name`. Built by hand
/// (`itoa`, one buffer handed to the value): it is written on every limited request.
pub fn state_header(sf_name: &str, d: &Decision) -> HeaderValue {
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (r, t) = (
        r.format(d.remaining),
        t.format(crate::error::ceil_secs(d.reset)),
    );
    // Exactly the length: a full `Vec` becomes `Bytes` without a second allocation.
    let mut v = Vec::with_capacity(sf_name.len() + 6 + r.len() + t.len());
    v.extend_from_slice(sf_name.as_bytes());
    v.extend_from_slice(b";r=");
    v.extend_from_slice(r.as_bytes());
    v.extend_from_slice(b";t=");
    v.extend_from_slice(t.as_bytes());
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).unwrap_or(HeaderValue::from_static(""))
}
