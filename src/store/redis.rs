//! The Redis backend over a `redis::aio::ConnectionManager` (reconnects by itself).
//!
//! Connecting gives up after [`CONNECT_TIMEOUT`], each operation after [`OP_TIMEOUT`]; errors
//! are [`StoreError`]s that never include the URL (it may carry a password).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{revoked_key, spent_key, Spend, StoreError};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);

/// `SET KEYS[1] 1 PX ARGV[1]` unless the key already lives longer (or forever).
const REVOKE: &str = r"
local cur = redis.call('PTTL', KEYS[1])
if cur == -1 or cur >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
";

/// Spend KEYS[1] (a jti) with `SET NX PX`; when already spent, revoke KEYS[2] (its family) as
/// REVOKE does and return 1.
const SPEND: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local cur = redis.call('PTTL', KEYS[2])
if cur ~= -1 and cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
end
return 1
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
    revoke: Script,
    spend: Script,
}

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(StoreError("redis: operation timed out".into())),
    }
}

impl RedisStore {
    /// Connects and checks the server answers `PING`.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError(format!("redis url: {:?}", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
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
            revoke: Script::new(REVOKE),
            spend: Script::new(SPEND),
        };
        store.ping().await?;
        Ok(store)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let pong: String = timed(redis::cmd("PING").query_async(&mut c)).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError("redis: unexpected PING answer".into()))
        }
    }

    pub async fn revoke(&self, id: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.revoke.key(revoked_key(id));
        inv.arg(px(ttl));
        let _: i64 = timed(inv.invoke_async(&mut c)).await?;
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
        let mut c = self.conn.clone();
        let n: i64 = timed(redis::cmd("EXISTS").arg(&keys).query_async(&mut c)).await?;
        Ok(n > 0)
    }

    pub async fn spend(&self, jti: &str, fam: &str, ttl: Duration) -> Result<Spend, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.spend.key(spent_key(jti));
        inv.key(revoked_key(fam)).arg(px(ttl));
        let reused: i64 = timed(inv.invoke_async(&mut c)).await?;
        Ok(if reused == 1 {
            Spend::Reused
        } else {
            Spend::Fresh
        })
    }
}
