//! A keyed GCRA limiter over compact `u64` keys with a hard cap on tracked keys.
//!
//! The arithmetic is governor's GCRA (`governor::Quota` supplies the parameters,
//! `governor::clock::Clock` the time, so tests inject `FakeRelativeClock`): per key one
//! theoretical arrival time (TAT, nanoseconds since the limiter's start, `0` = untracked). It is
//! implemented here rather than through `governor::RateLimiter` because the gateway needs two
//! things that limiter does not expose: the TAT after a decision (for an exact `reset`) and a
//! decision point at which a *new* key can be refused without inserting it (the cap), both in a
//! single lookup. `tests::matches_governor` checks decisions against `governor::RateLimiter`.
//!
//! # The table
//! With a million tracked keys a check costs what its cache misses cost, so the table is laid
//! out for one miss per check: [`SHARDS`] small open-addressing tables (linear probing over
//! 16-byte `(key, TAT)` slots, at most 3/4 full), each behind its own mutex. The shard locks
//! themselves stay in cache (40 KiB for all of them), a key's slot is usually the only line
//! fetched, and two threads only wait for each other on the same shard. A shard grows by
//! doubling when it passes 3/4; keys leave only when [`KeyedGcra::retain_recent`] rebuilds a
//! shard from its live keys (so there are no tombstones and lookups stop at the first empty
//! slot). A general-purpose concurrent map (DashMap, i.e. hashbrown under sharded locks) costs
//! two misses per lookup: the control bytes, then the bucket.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::Quota;

/// Number of shards (a power of two); keys pick one by the top bits of their hash.
const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;
/// Slots a shard starts with when it gets its first key.
const MIN_SLOTS: usize = 8;

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

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: u64,
    /// 0: empty.
    tat: u64,
}

#[derive(Default)]
struct Shard {
    /// Empty, or a power of two long.
    slots: Vec<Slot>,
    len: usize,
}

impl Shard {
    /// The index of `key`'s slot, or of the empty slot where it would go.
    fn find(&self, key: u64, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s.tat == 0 || s.key == key {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// A table of `slots` slots holding the given entries.
    fn rebuild(&mut self, slots: usize, hasher: &KeyHasher, keep: impl Fn(&Slot) -> bool) {
        let old = std::mem::take(&mut self.slots);
        let mut new = Shard {
            slots: vec![Slot::default(); slots],
            len: 0,
        };
        for s in old.into_iter().filter(|s| s.tat != 0 && keep(s)) {
            let i = new.find(s.key, hasher.hash_one(s.key));
            new.slots[i] = s;
            new.len += 1;
        }
        *self = new;
    }
}

/// Slots for `len` keys at most 3/4 full (at least [`MIN_SLOTS`]), or none for no keys.
fn slots_for(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len.saturating_mul(4) / 3 + 1)
            .next_power_of_two()
            .max(MIN_SLOTS)
    }
}

pub(crate) struct KeyedGcra<C: Clock> {
    /// Emission interval: time to earn one request back.
    t: u64,
    /// Tolerance: `t * (burst - 1)`.
    tau: u64,
    clock: C,
    start: C::Instant,
    hasher: KeyHasher,
    shards: Box<[Mutex<Shard>]>,
    /// Number of tracked keys over all shards.
    len: AtomicUsize,
    max_keys: usize,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<C: Clock> KeyedGcra<C> {
    /// `count` per `interval`-spaced requests with `burst` tolerance, as
    /// `Quota::with_period(interval).allow_burst(burst)`; its time starts now.
    #[cfg(test)]
    pub(crate) fn new(interval: Duration, burst: u32, clock: C, max_keys: usize) -> Self {
        let start = clock.now();
        Self::with_start(interval, burst, clock, start, max_keys)
    }

    /// As [`KeyedGcra::new`], with the table's time counted from `start` (a shared epoch, so
    /// one conversion of a request's arrival time serves every table).
    pub(crate) fn with_start(
        interval: Duration,
        burst: u32,
        clock: C,
        start: C::Instant,
        max_keys: usize,
    ) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let t = nanos(quota.replenish_interval()).max(1);
        let tau = t.saturating_mul(u64::from(quota.burst_size().get() - 1));
        KeyedGcra {
            t,
            tau,
            clock,
            start,
            hasher: KeyHasher::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
            max_keys,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard lock cannot leave a slot half-written (slots are
        // plain copies), so a poisoned lock is still a consistent table.
        self.shards[(hash >> (64 - SHARD_BITS)) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub(crate) fn check(&self, key: u64) -> Outcome {
        self.check_at(key, self.now())
    }

    /// As [`KeyedGcra::check`] at `now`, nanoseconds since the table's start, which the caller
    /// has already read (the request's arrival). That saves more than the read itself: on the
    /// x86 hosts measured, `rdtsc` (under every monotonic clock) does not issue before the
    /// loads ahead of it complete, so a clock read per check puts a full cache miss between any
    /// two checks.
    pub(crate) fn check_at(&self, key: u64, now: u64) -> Outcome {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        if !shard.slots.is_empty() {
            let i = shard.find(key, hash);
            let slot = &mut shard.slots[i];
            if slot.tat != 0 {
                return self.gcra(&mut slot.tat, now);
            }
        }
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return Outcome::Full;
        }
        let mut tat = 0;
        let out = self.gcra(&mut tat, now);
        if tat == 0 {
            // Refused without a state change (a fresh key never is): nothing to track.
            self.len.fetch_sub(1, Ordering::Relaxed);
            return out;
        }
        if (shard.len + 1) * 4 > shard.slots.len() * 3 {
            let slots = slots_for(shard.len + 1);
            shard.rebuild(slots, &self.hasher, |_| true);
        }
        let i = shard.find(key, hash);
        shard.slots[i] = Slot { key, tat };
        shard.len += 1;
        out
    }

    /// The state of `key`'s bucket at `now` without counting a request: requests allowed right
    /// now and until the bucket is full. `None` when the key is not tracked (a full bucket).
    pub(crate) fn peek_at(&self, key: u64, now: u64) -> Option<(u32, u64)> {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        if shard.slots.is_empty() {
            return None;
        }
        let i = shard.find(key, hash);
        let tat = shard.slots[i].tat;
        if tat == 0 {
            return None;
        }
        let full = self.tau.saturating_add(self.t);
        let room = now
            .saturating_add(full)
            .saturating_sub(tat.max(now))
            .min(full);
        Some((
            u32::try_from(room / self.t).unwrap_or(u32::MAX),
            tat.saturating_sub(now),
        ))
    }

    /// Gives back one request `key` was allowed at `now` (another policy refused it): its TAT
    /// moves back one interval, never before `now`. `None` when the key is not tracked.
    pub(crate) fn refund_at(&self, key: u64, now: u64) -> Option<Outcome> {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        if shard.slots.is_empty() {
            return None;
        }
        let i = shard.find(key, hash);
        let slot = &mut shard.slots[i];
        if slot.tat == 0 {
            return None;
        }
        // Still non-zero (tracked); `retain_recent` drops it once it is not after now.
        slot.tat = slot.tat.saturating_sub(self.t).max(now).max(1);
        let full = self.tau.saturating_add(self.t);
        let room = now.saturating_add(full).saturating_sub(slot.tat).min(full);
        Some(Outcome::Allowed {
            remaining: u32::try_from(room / self.t).unwrap_or(u32::MAX),
            reset: slot.tat.saturating_sub(now),
        })
    }

    fn gcra(&self, cell: &mut u64, now: u64) -> Outcome {
        let tat = if *cell == 0 { now } else { *cell };
        let earliest = tat.saturating_sub(self.tau);
        if now < earliest {
            return Outcome::Refused {
                retry_after: earliest - now,
                reset: tat - now,
            };
        }
        // Never 0 (t >= 1), so a stored TAT is never mistaken for "untracked".
        let next = tat.max(now).saturating_add(self.t);
        *cell = next;
        let full = self.tau.saturating_add(self.t);
        let room = now.saturating_add(full).saturating_sub(next).min(full);
        Outcome::Allowed {
            remaining: u32::try_from(room / self.t).unwrap_or(u32::MAX),
            reset: next - now,
        }
    }

    /// Drops every key whose state is indistinguishable from a fresh one (TAT not after now):
    /// forgetting it changes no future decision. Shards are rebuilt at the size their live
    /// keys need, so memory follows the number of live keys down as well as up.
    pub(crate) fn retain_recent(&self) {
        let now = self.now();
        for lock in self.shards.iter() {
            let mut shard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            let live = shard.slots.iter().filter(|s| s.tat > now).count();
            let removed = shard.len - live;
            if removed == 0 && shard.slots.len() == slots_for(live) {
                continue;
            }
            shard.rebuild(slots_for(live), &self.hasher, |s| s.tat > now);
            self.len.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).slots.len())
            .sum()
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Current time in the limiter's clock, nanoseconds since its start.
    pub(crate) fn elapsed(&self) -> u64 {
        self.now()
    }
}
