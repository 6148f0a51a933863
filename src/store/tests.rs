//! Store tests: the memory backend, and the Redis backend against a real `redis-server`
//! started per test on a Unix socket (fails when `redis-server` is missing, unless
//! `IPTGATE_SKIP_REDIS=1`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::config::{OnError, StoreBackend, StoreConfig};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn memory_revoke_and_spend() {
    let s = Store::default();
    assert_eq!(s.backend_name(), "memory");
    s.ping().await.expect("ping");
    exercise(&s).await;
}

#[test]
fn memory_expiry_and_prune() {
    let m = MemoryStore::default();
    let t0 = Instant::now();
    m.revoke_at("a", Duration::from_secs(10), t0);
    assert!(m.is_revoked_at(Some("a"), None, t0 + Duration::from_secs(9)));
    assert!(!m.is_revoked_at(Some("a"), None, t0 + Duration::from_secs(10)));
    // A shorter revocation never shortens a longer one.
    m.revoke_at("a", Duration::from_secs(100), t0);
    m.revoke_at("a", Duration::from_secs(1), t0);
    assert!(m.is_revoked_at(Some("a"), None, t0 + Duration::from_secs(50)));
    // A spent mark lasts its ttl; after it the jti counts as fresh again.
    assert_eq!(
        m.spend_at("j", "f", Duration::from_secs(10), t0),
        Spend::Fresh
    );
    assert_eq!(
        m.spend_at(
            "j",
            "f",
            Duration::from_secs(10),
            t0 + Duration::from_secs(11)
        ),
        Spend::Fresh
    );
    assert!(!m.is_revoked_at(None, Some("f"), t0 + Duration::from_secs(11)));
    assert_eq!(m.len(), (1, 1));
    m.prune_at(t0 + Duration::from_secs(20));
    assert_eq!(m.len(), (1, 1));
    m.prune_at(t0 + Duration::from_secs(50));
    assert_eq!(m.len(), (1, 0), "spent mark (renewed at 11 s) gone at 21 s");
    m.prune_at(t0 + Duration::from_secs(101));
    assert!(m.is_empty());
    // Huge ttls do not overflow.
    m.revoke_at("forever", Duration::MAX, t0);
    assert!(m.is_revoked_at(
        Some("forever"),
        None,
        t0 + Duration::from_secs(3600 * 24 * 365)
    ));
}

#[tokio::test]
async fn memory_concurrent_spend_has_one_winner() {
    let s = std::sync::Arc::new(Store::default());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.spend("j", "f", HOUR).await }));
    }
    let mut fresh = 0;
    for t in tasks {
        if t.await.expect("join").expect("spend") == Spend::Fresh {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert!(s.is_revoked(None, Some("f")).await.expect("is_revoked"));
}

/// The behaviour both backends share.
async fn exercise(s: &Store) {
    assert!(!s.is_revoked(None, None).await.expect("is_revoked"));
    assert!(!s
        .is_revoked(Some("jti-1"), Some("fam-1"))
        .await
        .expect("is_revoked"));
    s.revoke(&[("jti-1", HOUR)]).await.expect("revoke");
    assert!(s.is_revoked(Some("jti-1"), None).await.expect("is_revoked"));
    assert!(s
        .is_revoked(Some("jti-1"), Some("fam-1"))
        .await
        .expect("is_revoked"));
    assert!(!s
        .is_revoked(Some("jti-2"), Some("fam-1"))
        .await
        .expect("is_revoked"));
    s.revoke(&[("fam-1", HOUR)]).await.expect("revoke");
    assert!(s
        .is_revoked(Some("jti-2"), Some("fam-1"))
        .await
        .expect("is_revoked"));
    assert!(s.is_revoked(None, Some("fam-1")).await.expect("is_revoked"));

    // Refresh rotation: each jti spends once; a second spend revokes its family.
    assert_eq!(
        s.spend("r1", "fam-2", HOUR).await.expect("spend"),
        Spend::Fresh
    );
    assert_eq!(
        s.spend("r2", "fam-2", HOUR).await.expect("spend"),
        Spend::Fresh
    );
    assert!(!s
        .is_revoked(Some("a2"), Some("fam-2"))
        .await
        .expect("is_revoked"));
    assert_eq!(
        s.spend("r1", "fam-2", HOUR).await.expect("spend"),
        Spend::Reused
    );
    assert!(s
        .is_revoked(Some("a2"), Some("fam-2"))
        .await
        .expect("is_revoked"));
    assert!(!s.is_revoked(None, Some("fam-3")).await.expect("is_revoked"));
}

/// A `redis-server` child on a Unix socket, killed (by its own handle) on drop.
struct RedisServer {
    child: Child,
    dir: PathBuf,
}

impl RedisServer {
    /// None (test skipped) only with `IPTGATE_SKIP_REDIS=1`.
    fn start() -> Option<RedisServer> {
        static N: AtomicUsize = AtomicUsize::new(0);
        if std::env::var("IPTGATE_SKIP_REDIS").as_deref() == Ok("1") {
            eprintln!("IPTGATE_SKIP_REDIS=1: Redis store test skipped");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "iptgate-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("redis.sock");
        let child = match Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&sock)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "cannot run redis-server ({e}): install it (apt-get install -y redis-server) \
                 or set IPTGATE_SKIP_REDIS=1 to skip the Redis store tests"
                )
            }
        };
        let server = RedisServer { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }

    fn config(&self) -> StoreConfig {
        StoreConfig {
            backend: StoreBackend::Redis(self.url()),
            on_error: OnError::Closed,
        }
    }

    /// A connection of its own to the server, to look at or stir its data.
    async fn connection(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("conn")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn redis_revoke_and_spend() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = Store::connect(&server.config()).await.expect("connect");
    assert_eq!(s.backend_name(), "redis");
    s.ping().await.expect("ping");
    exercise(&s).await;

    // Keys are namespaced and expire.
    let mut c = server.connection().await;
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("iptgate:rev:jti-1")
        .query_async(&mut c)
        .await
        .expect("pttl");
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{ttl}");
    let spent: i64 = ::redis::cmd("EXISTS")
        .arg("iptgate:spent:r1")
        .query_async(&mut c)
        .await
        .expect("exists");
    assert_eq!(spent, 1);
    // A shorter revocation does not shorten a longer one; a longer one extends it.
    s.revoke(&[("jti-1", Duration::from_secs(5))])
        .await
        .expect("revoke");
    s.revoke(&[("short", Duration::from_millis(50))])
        .await
        .expect("revoke");
    s.revoke(&[("long", Duration::from_secs(5))])
        .await
        .expect("revoke");
    s.revoke(&[("long", HOUR)]).await.expect("revoke");
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("iptgate:rev:jti-1")
        .query_async(&mut c)
        .await
        .expect("pttl");
    assert!(ttl > 3_500_000, "{ttl}");
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("iptgate:rev:long")
        .query_async(&mut c)
        .await
        .expect("pttl");
    assert!(ttl > 3_500_000, "{ttl}");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(!s.is_revoked(Some("short"), None).await.expect("is_revoked"));

    // Concurrent spends of one jti: exactly one is fresh.
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.spend("race", "fam-race", HOUR).await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        if t.await.expect("join").expect("spend") == Spend::Fresh {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert!(s
        .is_revoked(None, Some("fam-race"))
        .await
        .expect("is_revoked"));
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let s = Store::connect(&server.config()).await.expect("connect");
    let cfg = server.config();
    server.stop();
    let t0 = Instant::now();
    assert!(s.ping().await.is_err());
    assert!(s.revoke(&[("x", HOUR)]).await.is_err());
    assert!(s.is_revoked(Some("x"), None).await.is_err());
    assert!(s.spend("x", "f", HOUR).await.is_err());
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());

    let t0 = Instant::now();
    let e = Store::connect(&cfg).await.err().expect("unreachable");
    assert!(e.to_string().starts_with("store unavailable: redis"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn redis_connect_times_out_on_silent_server() {
    // A listener that accepts and never answers: connect must give up within ~2 s.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let cfg = StoreConfig {
        backend: StoreBackend::Redis(format!("redis://{addr}/0")),
        on_error: OnError::Open,
    };
    let t0 = Instant::now();
    assert!(Store::connect(&cfg).await.is_err());
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    hold.abort();
}

#[tokio::test]
async fn redis_bad_url_is_an_error() {
    let cfg = StoreConfig {
        backend: StoreBackend::Redis("not a url".into()),
        on_error: OnError::Closed,
    };
    let e = Store::connect(&cfg).await.err().expect("bad url");
    assert!(!e.to_string().contains("not a url"), "{e}");
}

/// Holds the server's writes (scripts included) for `ms`, as a Redis failover does.
async fn pause_writes(server: &RedisServer, ms: u64) {
    let mut c = server.connection().await;
    let _: () = ::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(&mut c)
        .await
        .expect("pause");
}

#[tokio::test]
async fn redis_a_spend_or_revocation_cut_short_by_a_stall() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = Store::connect(&server.config()).await.expect("connect");
    // Scripts loaded (Redis caches them), as in a gateway that has served for a while.
    s.spend("r-warm", "fam-warm", HOUR).await.expect("spend");
    s.revoke(&[("jti-warm", HOUR)]).await.expect("revoke");
    pause_writes(&server, 1500).await;
    let t0 = Instant::now();
    let (spent, revoked) = tokio::join!(
        s.spend("r-cut", "fam-cut", HOUR),
        s.revoke(&[("jti-cut", HOUR), ("fam-out", HOUR)])
    );
    assert!(spent.is_err() && revoked.is_err());
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The spend, run once Redis resumed, was undone: the client told 503 retries with the
    // same refresh token, and that is no reuse.
    assert_eq!(
        s.spend("r-cut", "fam-cut", HOUR).await.expect("spend"),
        Spend::Fresh
    );
    assert!(!s
        .is_revoked(None, Some("fam-cut"))
        .await
        .expect("is_revoked"));
    // The revocation ran whole.
    assert!(s
        .is_revoked(Some("jti-cut"), None)
        .await
        .expect("is_revoked"));
    assert!(s
        .is_revoked(None, Some("fam-out"))
        .await
        .expect("is_revoked"));
}

/// A spend this instance answered 503 for, which ran all the same and was not undone (its
/// undo lost): the client's retry on this instance takes it over, and is no reuse. Another
/// spend of the same refresh token still is.
#[tokio::test]
async fn redis_a_retry_takes_over_the_failed_spend_of_its_instance() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = Store::connect(&server.config()).await.expect("connect");
    let Some(r) = s.shared() else {
        panic!("a redis store")
    };
    let mut c = server.connection().await;
    let _: () = ::redis::cmd("SET")
        .arg("iptgate:spent:r-lost")
        .arg("nonce-of-the-failed-spend")
        .query_async(&mut c)
        .await
        .expect("set");
    r.remember_failed_spend("r-lost", "nonce-of-the-failed-spend");
    assert_eq!(
        s.spend("r-lost", "fam-lost", HOUR).await.expect("spend"),
        Spend::Fresh
    );
    assert_eq!(
        s.spend("r-lost", "fam-lost", HOUR).await.expect("spend"),
        Spend::Reused
    );
    assert!(s
        .is_revoked(None, Some("fam-lost"))
        .await
        .expect("is_revoked"));
}
