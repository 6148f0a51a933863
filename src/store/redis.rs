//! The Redis backend over a `redis::aio::ConnectionManager` (reconnects by itself).
//!
//! Connecting gives up after [`CONNECT_TIMEOUT`], each operation after [`OP_TIMEOUT`]; errors
//! are [`StoreError`]s that never include the URL (it may carry a password).
//!
//! An operation that finds its connection dropped (Redis restarted, a proxy or Redis's own
//! `timeout` closed an idle client, `CLIENT KILL`) or refused (the manager's last reconnect,
//! tried during an outage since over) is sent once more on the connection the manager makes
//! anew, within the same [`OP_TIMEOUT`]: a dropped connection is not a store outage, and with
//! `on_error = "open"` treating it as one would skip a revocation check. Every
//! operation is safe to send twice: reads and revocations are idempotent, a spend carries a
//! nonce so that its own first attempt is not taken for a reuse, and a counted login failure or
//! rate-limit hit counted twice errs on the side of refusing.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{revoked_key, spent_key, Spend, StoreError};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);

/// For each KEYS[i]: `SET KEYS[i] 1 PX ARGV[i]` unless the key already lives longer (or
/// forever). All of them or none: a logout revokes its access token and its refresh family in
/// one step, so that one cut short by a Redis stall never leaves the family alive behind an
/// access token already revoked.
const REVOKE: &str = r"
for i, key in ipairs(KEYS) do
  local ttl = tonumber(ARGV[i])
  local cur = redis.call('PTTL', key)
  if cur ~= -1 and cur < ttl then
    redis.call('SET', key, '1', 'PX', ttl)
  end
end
return 0
";

/// Spend KEYS[1] (a jti) with `SET NX PX`, the value being this spend's nonce ARGV[2]; when
/// already spent by another spend, revoke KEYS[2] (its family) as REVOKE does and return 1.
/// A spend by ARGV[3] (when not empty: this instance's earlier spend of the jti, which failed
/// and was answered 503) is no other spend: it is taken over.
const SPEND: &str = r"
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[1]) then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[2] then return 0 end
if ARGV[3] ~= '' and cur == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return 0
end
local cur = redis.call('PTTL', KEYS[2])
if cur ~= -1 and cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
end
return 1
";

/// Undo the spend of KEYS[1] whose nonce is ARGV[1], if it is still that spend's.
const UNSPEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// How long an undone spend may wait behind the spend it undoes (a Redis stall), and how long
/// this instance remembers a failed spend for the client's retry.
const UNSPEND_WAIT: Duration = Duration::from_secs(60);
/// Failed spends remembered at most (a stall under load fails many).
const FAILED_SPENDS_MAX: usize = 10_000;

/// A login failure for KEYS[1] (the times of the key's recent failures, oldest first, by the
/// server's clock): those older than ARGV[1] ms go, and at ARGV[2] left in the window the key is
/// locked (KEYS[2]) for ARGV[3] ms and 1 returned. The window slides, as in the in-memory guard.
const LOGIN_FAILURE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
redis.call('RPUSH', KEYS[1], now)
redis.call('LTRIM', KEYS[1], -max, -1)
while true do
  local oldest = redis.call('LINDEX', KEYS[1], 0)
  if oldest and tonumber(oldest) <= now - window then
    redis.call('LPOP', KEYS[1])
  else
    break
  end
end
if redis.call('LLEN', KEYS[1]) >= max then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('PEXPIRE', KEYS[1], window)
return 0
";

/// GCRA on KEYS[1] with the server's clock: ARGV[1] = emission interval (ms, may be
/// fractional), ARGV[2] = burst. Returns {allowed, remaining, reset_ms, retry_ms}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local T = tonumber(ARGV[1])
local tau = T * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + T
local allow_at = new_tat - tau
if allow_at > now then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, math.floor((tau - (new_tat - now)) / T), math.ceil(new_tat - now), 0}
";

/// TTL in milliseconds for `PX`: rounded up, at least 1, at most 100 years.
fn px(ttl: Duration) -> u64 {
    const MAX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(MAX_MS).clamp(1, MAX_MS)
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

pub struct RedisStore {
    conn: ConnectionManager,
    /// Spends that failed (answered 503) and may still have run, by jti: their nonce, and
    /// when. A retry of the refresh on this instance takes such a spend over.
    failed_spends: Mutex<HashMap<String, (String, Instant)>>,
    revoke: Script,
    spend: Script,
    login_failure: Script,
    gcra: Script,
}

/// Runs `op` on a handle of `conn`, once more when the connection turns out dropped (see the
/// module docs), all within [`OP_TIMEOUT`].
async fn timed<T, F, Fut>(conn: &ConnectionManager, mut op: F) -> Result<T, StoreError>
where
    F: FnMut(ConnectionManager) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let attempts = async {
        match op(conn.clone()).await {
            // A refusal too: the manager keeps the result of its last reconnect, so the first
            // operation after an outage gets the refusal of a reconnect tried while Redis was
            // down, however long ago; the second try reconnects. While Redis is really down
            // it is refused again (within the same timeout).
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                op(conn.clone()).await
            }
            r => r,
        }
    };
    match tokio::time::timeout(OP_TIMEOUT, attempts).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(StoreError("redis: operation timed out".into())),
    }
}

impl RedisStore {
    /// One command, as [`timed`] runs it.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        timed(
            &self.conn,
            |mut c| async move { cmd.query_async(&mut c).await },
        )
        .await
    }

    /// One script, as [`timed`] runs it.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        timed(
            &self.conn,
            |mut c| async move { inv.invoke_async(&mut c).await },
        )
        .await
    }

    /// Connects and checks the server answers `PING`.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError(format!("redis url: {:?}", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            // One try per reconnect: [`timed`] sends an operation once more after a refusal
            // or a drop, and a manager backing off between tries would hold every request for
            // the back-off while Redis is down (half a second each, measured), where a refusal
            // takes milliseconds.
            .set_number_of_retries(0);
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(r) => r.map_err(err)?,
            Err(_) => return Err(StoreError("redis: connect timed out".into())),
        };
        let store = RedisStore {
            conn,
            failed_spends: Default::default(),
            revoke: Script::new(REVOKE),
            spend: Script::new(SPEND),
            login_failure: Script::new(LOGIN_FAILURE),
            gcra: Script::new(GCRA),
        };
        store.ping().await?;
        Ok(store)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError("redis: unexpected PING answer".into()))
        }
    }

    pub async fn revoke(&self, ids: &[(&str, Duration)]) -> Result<(), StoreError> {
        let mut inv = self.revoke.prepare_invoke();
        for &(id, ttl) in ids {
            inv.key(revoked_key(id)).arg(px(ttl));
        }
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }

    pub async fn is_revoked(
        &self,
        jti: Option<&str>,
        fam: Option<&str>,
    ) -> Result<bool, StoreError> {
        let keys: Vec<String> = [jti, fam].into_iter().flatten().map(revoked_key).collect();
        if keys.is_empty() {
            return Ok(false);
        }
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(&keys);
        let n: i64 = self.query(&cmd).await?;
        Ok(n > 0)
    }

    pub async fn spend(&self, jti: &str, fam: &str, ttl: Duration) -> Result<Spend, StoreError> {
        let nonce: u128 = rand::random();
        let nonce = format!("{nonce:032x}");
        let key = spent_key(jti);
        let earlier = self
            .failed()
            .get(jti)
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        let mut inv = self.spend.key(&key);
        inv.key(revoked_key(fam))
            .arg(px(ttl))
            .arg(&nonce)
            .arg(&earlier);
        let r = self.invoke::<i64>(&inv).await;
        let mut failed = self.failed();
        match r {
            Ok(n) => {
                failed.remove(jti);
                Ok(if n == 1 { Spend::Reused } else { Spend::Fresh })
            }
            Err(e) => {
                let now = Instant::now();
                if failed.len() >= FAILED_SPENDS_MAX {
                    failed.retain(|_, (_, at)| now.duration_since(*at) < UNSPEND_WAIT);
                }
                if failed.len() < FAILED_SPENDS_MAX {
                    failed.insert(jti.to_string(), (nonce.clone(), now));
                }
                drop(failed);
                self.unspend_later(key, nonce);
                Err(e)
            }
        }
    }

    /// As a spend of `jti` with `nonce` that failed would leave it.
    #[cfg(test)]
    pub(super) fn remember_failed_spend(&self, jti: &str, nonce: &str) {
        self.failed()
            .insert(jti.to_string(), (nonce.to_string(), Instant::now()));
    }

    fn failed(&self) -> MutexGuard<'_, HashMap<String, (String, Instant)>> {
        // Plain entries: a panic elsewhere cannot leave the map inconsistent.
        self.failed_spends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A spend that failed (timed out: Redis stalled, as in a failover) may still run once
    /// Redis resumes; the client, told 503, got no tokens and retries with the same refresh
    /// token, which must not then count as a reuse (that revokes the client's own family).
    /// A retry on this instance takes the failed spend over (see `SPEND`); for one on another
    /// instance, the spend is undone if it ran: sent now, on the same connection, this runs
    /// after it, if it gets through.
    fn unspend_later(&self, key: String, nonce: String) {
        let mut conn = self.conn.clone();
        tokio::spawn(async move {
            // EVAL, not EVALSHA: a script missing from Redis's cache would be loaded and sent
            // again, after the client's retry perhaps.
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(UNSPEND).arg(1).arg(key).arg(nonce);
            let undo = cmd.query_async::<i64>(&mut conn);
            // Its answer may time out while Redis is still stalled; it runs all the same.
            if let Ok(Err(e)) = tokio::time::timeout(UNSPEND_WAIT, undo).await {
                if !e.is_timeout() {
                    tracing::debug!(error = %e, "undoing a failed refresh-token spend failed");
                }
            }
        });
    }

    /// Remaining lock-out of a login key, if locked.
    pub async fn login_locked(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(format!("iptgate:lock:{key}"));
        let ms: i64 = self.query(&cmd).await?;
        Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
    }

    /// Count a failed login; `true` when this failure locked the key.
    pub async fn login_failure(
        &self,
        key: &str,
        window: Duration,
        max: u32,
        lockout: Duration,
    ) -> Result<bool, StoreError> {
        // `fails` (a list of times), not the `fail` counter of earlier versions: a gateway of
        // either kind sharing this Redis during an upgrade never meets the other's key type.
        let mut inv = self.login_failure.key(format!("iptgate:fails:{key}"));
        inv.key(format!("iptgate:lock:{key}"))
            .arg(px(window))
            .arg(max)
            .arg(px(lockout));
        let locked: i64 = self.invoke(&inv).await?;
        Ok(locked == 1)
    }

    /// One GCRA decision on a shared bucket: (allowed, remaining, reset, retry_after).
    pub async fn gcra(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<(bool, u32, Duration, Duration), StoreError> {
        let mut inv = self.gcra.key(format!("iptgate:rl:{key}"));
        inv.arg(interval.as_secs_f64() * 1000.0).arg(burst);
        let r: Vec<i64> = self.invoke(&inv).await?;
        let get = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok((
            get(0) == 1,
            get(1) as u32,
            Duration::from_millis(get(2)),
            Duration::from_millis(get(3)),
        ))
    }
}
