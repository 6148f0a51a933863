//! A keyed GCRA limiter over compact `u64` keys with a hard cap on tracked keys.
//!
//! The arithmetic is governor's GCRA (`governor::Quota` supplies the parameters,
//! `governor::clock::Clock` the time, so tests inject `FakeRelativeClock`): per key one
//! theoretical arrival time (TAT, nanoseconds since the limiter's start, `0` = untracked) in an
//! `AtomicU64`, updated with a compare-and-swap loop. It is implemented here rather than through
//! `governor::RateLimiter` because the gateway needs two things that limiter does not expose:
//! the TAT after a decision (for an exact `reset`) and a decision point at which a *new* key can
//! be refused without inserting it (the cap), both in a single map lookup.
//! `tests::matches_governor` checks decisions against `governor::RateLimiter`.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::clock::{Clock, Reference};
use governor::Quota;

/// Folded multiply: the 128-bit product's halves xored (foldhash's mixing step).
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The table's hasher for `u64` keys: two folded multiplies with per-table random seeds
/// (foldhash's construction, the default of hashbrown). Several times cheaper than SipHash,
/// and still keyed: without the seeds a client cannot aim keys at one bucket chain.
#[derive(Clone)]
pub(crate) struct KeyHasher {
    seed: u64,
    mul: u64,
}

impl KeyHasher {
    fn new() -> Self {
        let rs = RandomState::new();
        KeyHasher {
            seed: rs.hash_one(0x5eed_u64),
            mul: rs.hash_one(0x3a11_u64) | 1,
        }
    }
}

pub(crate) struct KeyHasherState {
    acc: u64,
    mul: u64,
}

impl BuildHasher for KeyHasher {
    type Hasher = KeyHasherState;
    fn build_hasher(&self) -> KeyHasherState {
        KeyHasherState {
            acc: self.seed,
            mul: self.mul,
        }
    }
}

impl Hasher for KeyHasherState {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.acc = fold(self.acc ^ x, self.mul);
    }

    fn finish(&self) -> u64 {
        fold(self.acc, self.mul.rotate_left(23) | 1)
    }
}

/// Result of one check on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed {
        remaining: u32,
        /// Nanoseconds until the bucket is full again.
        reset: u64,
    },
    Refused {
        /// Nanoseconds until the next request would pass.
        retry_after: u64,
        reset: u64,
    },
    /// A new key while `max_keys` keys are tracked: refused, not inserted.
    Full,
}

pub(crate) struct KeyedGcra<C: Clock> {
    /// Emission interval: time to earn one request back.
    t: u64,
    /// Tolerance: `t * (burst - 1)`.
    tau: u64,
    clock: C,
    start: C::Instant,
    map: DashMap<u64, AtomicU64, KeyHasher>,
    /// Number of entries in `map`, kept exact under the shard locks.
    len: AtomicUsize,
    max_keys: usize,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<C: Clock> KeyedGcra<C> {
    /// `count` per `interval`-spaced requests with `burst` tolerance, as
    /// `Quota::with_period(interval).allow_burst(burst)`.
    pub(crate) fn new(interval: Duration, burst: u32, clock: C, max_keys: usize) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let t = nanos(quota.replenish_interval()).max(1);
        let tau = t.saturating_mul(u64::from(quota.burst_size().get() - 1));
        let start = clock.now();
        KeyedGcra {
            t,
            tau,
            clock,
            start,
            map: DashMap::with_hasher(KeyHasher::new()),
            len: AtomicUsize::new(0),
            max_keys,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    pub(crate) fn check(&self, key: u64) -> Outcome {
        let now = self.now();
        if let Some(cell) = self.map.get(&key) {
            return self.gcra(&cell, now);
        }
        match self.map.entry(key) {
            Entry::Occupied(o) => self.gcra(o.get(), now),
            Entry::Vacant(v) => {
                if self.len.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    return Outcome::Full;
                }
                let cell = AtomicU64::new(0);
                let out = self.gcra(&cell, now);
                v.insert(cell);
                out
            }
        }
    }

    fn gcra(&self, cell: &AtomicU64, now: u64) -> Outcome {
        let mut prev = cell.load(Ordering::Acquire);
        loop {
            let tat = if prev == 0 { now } else { prev };
            let earliest = tat.saturating_sub(self.tau);
            if now < earliest {
                return Outcome::Refused {
                    retry_after: earliest - now,
                    reset: tat - now,
                };
            }
            // Never 0 (t >= 1), so a stored TAT is never mistaken for "untracked".
            let next = tat.max(now).saturating_add(self.t);
            match cell.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let full = self.tau.saturating_add(self.t);
                    let room = now.saturating_add(full).saturating_sub(next).min(full);
                    return Outcome::Allowed {
                        remaining: u32::try_from(room / self.t).unwrap_or(u32::MAX),
                        reset: next - now,
                    };
                }
                Err(p) => prev = p,
            }
        }
    }

    /// Drops every key whose state is indistinguishable from a fresh one (TAT not after now):
    /// forgetting it changes no future decision.
    pub(crate) fn retain_recent(&self) {
        let now = self.now();
        let mut removed = 0usize;
        self.map.retain(|_, cell| {
            let keep = cell.load(Ordering::Relaxed) > now;
            if !keep {
                removed += 1;
            }
            keep
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
    }

    pub(crate) fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Current time in the limiter's clock, nanoseconds since its start.
    pub(crate) fn elapsed(&self) -> u64 {
        self.now()
    }
}
