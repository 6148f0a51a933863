//! Process state and config generations.
//!
//! [`State`] lives as long as the process: the upstream connection pools, the store, the
//! drain flag. [`Active`] is one config generation — the validated config plus everything
//! compiled from it (IP tables, routes, limiters, keys, TLS) — swapped atomically on reload.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};

use crate::body::Body;

use crate::config::{Config, RouteConfig, Target, UpstreamConfig};
use crate::pipeline::ip_policy::IpPolicy;
use crate::pipeline::rate_limit::{Limiters, LoginGuard};
use crate::store::Store;
use crate::token::Keys;
use crate::upstream::{Pool, PooledBody, Pools, SendFail};

/// A route compiled for the hot path.
pub struct Route {
    pub cfg: RouteConfig,
    pub ip: Option<IpPolicy>,
}

pub struct Upstream {
    pub cfg: UpstreamConfig,
    /// One per target, in the order of `cfg.targets`.
    pools: Vec<Arc<Pool>>,
    next: AtomicUsize,
    health: Health,
}

/// How long a target that could not be connected to is passed over (nginx's `fail_timeout`).
pub const TARGET_DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Targets that could not be connected to lately, passed over by round robin for
/// [`TARGET_DOWN_FOR`] (as nginx's `max_fails=1 fail_timeout=10s`), so that a dead target
/// does not cost every other request its `connect_timeout`. When every target is down, round
/// robin goes on as if none were.
struct Health {
    epoch: std::time::Instant,
    /// Per target: milliseconds since `epoch` until which it is passed over; 0 = up.
    down_until: Vec<AtomicU64>,
}

impl Health {
    fn new(targets: usize) -> Health {
        Health {
            epoch: std::time::Instant::now(),
            down_until: (0..targets).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_down(&self, i: usize) {
        let until = self
            .now_ms()
            .saturating_add(TARGET_DOWN_FOR.as_millis() as u64)
            .max(1);
        if let Some(d) = self.down_until.get(i) {
            d.store(until, Ordering::Relaxed);
        }
    }

    /// Whether target `i` is up (not passed over); `now` is read once per pick, if needed.
    fn is_up(&self, i: usize, now: &mut Option<u64>) -> bool {
        let until = self.down_until[i].load(Ordering::Relaxed);
        until == 0 || until <= *now.get_or_insert_with(|| self.now_ms())
    }
}

impl Upstream {
    /// Round robin over the targets, passing over those down lately: the next one's index,
    /// target and connection pool.
    pub fn pick(&self) -> (usize, &Target, &Arc<Pool>) {
        let i = self.next_up();
        (i, &self.cfg.targets[i], &self.pools[i])
    }

    /// The next target in round robin order that is up. A target down takes the next turn,
    /// not its neighbour's: its share is spread over all the others, as nginx does, instead
    /// of doubling the load of the one after it. When every target is down, the first turn.
    fn next_up(&self) -> usize {
        let n = self.cfg.targets.len().max(1);
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        if n == 1 {
            return first;
        }
        let mut now = None;
        let mut i = first;
        for _ in 0..n {
            if self.health.is_up(i, &mut now) {
                return i;
            }
            i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        }
        // Concurrent picks may have taken every turn of the targets up: the first one up
        // after this turn, in order; when none is, the turn itself.
        (0..n)
            .map(|k| (first + k) % n)
            .find(|&j| self.health.is_up(j, &mut now))
            .unwrap_or(first)
    }

    /// Whether there are targets to fail over to.
    pub fn has_others(&self) -> bool {
        self.pools.len() > 1
    }

    /// Target `first` could not be connected to (refused, unreachable, TLS handshake failed,
    /// `connect_timeout`), so nothing was sent: the request goes to the next target that takes
    /// the same path (same base path), each tried once. An error once the request is on its
    /// way is not retried: the upstream may have acted on it.
    pub async fn failover(
        &self,
        first: usize,
        mut fail: SendFail,
        at: std::time::Instant,
    ) -> Result<Response<PooledBody>, SendFail> {
        let Some(req) = fail.unsent.take() else {
            return Err(fail);
        };
        let mut req: Request<Body> = *req;
        let n = self.pools.len();
        let base = &self.cfg.targets[first].base_path;
        let mut i = first;
        self.health.mark_down(first);
        for k in 1..n {
            let j = (first + k) % n;
            if self.cfg.targets[j].base_path != *base {
                continue;
            }
            tracing::warn!(target = self.pools[i].addr(), error = %fail.err, "upstream target unreachable: trying the next one");
            // An HTTP/1.0 request without Host was given the target's own.
            if req.headers().get(http::header::HOST).map(|h| h.as_bytes())
                == Some(self.cfg.targets[i].authority.as_str().as_bytes())
            {
                if let Ok(v) = http::HeaderValue::from_str(self.cfg.targets[j].authority.as_str()) {
                    req.headers_mut().insert(http::header::HOST, v);
                }
            }
            match self.pools[j].send(req, at).await {
                Ok(r) => return Ok(r),
                Err(SendFail {
                    err,
                    unsent: Some(back),
                }) => {
                    self.health.mark_down(j);
                    (fail, req, i) = (err.into(), *back, j);
                }
                Err(f) => return Err(f),
            }
        }
        Err(fail)
    }
}

/// One config generation.
pub struct Active {
    pub config: Config,
    pub ip_policy: IpPolicy,
    pub routes: Vec<Route>,
    /// Whether any route matches on `host` (else the request's host is not looked up).
    pub host_routes: bool,
    pub upstreams: Vec<Upstream>,
    pub limiters: Limiters,
    /// Per policy: its `RateLimit-Policy` header and its structured-field name.
    pub ratelimit_headers: Vec<(http::HeaderValue, String)>,
    /// Metric handles per route, and one for requests that matched no route.
    pub route_metrics: Vec<crate::metrics::RouteMetrics>,
    pub unrouted_metrics: crate::metrics::RouteMetrics,
    pub login: Option<Arc<LoginGuard>>,
    pub keys: Option<Keys>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub generation: u64,
}

impl Active {
    pub fn route(&self, i: usize) -> &Route {
        &self.routes[i]
    }
}

/// Everything that outlives a config generation.
/// What the process was started with that a reload does not change (listeners, workers, the
/// store's connection): a reload compares with these, not with the previous generation.
pub struct Boot {
    pub server: crate::config::ServerConfig,
    pub store: crate::config::StoreBackend,
}

pub struct State {
    pub active: ArcSwap<Active>,
    pub boot: Boot,
    pub store: Store,
    pub draining: AtomicBool,
    pub connections: AtomicUsize,
    /// Of `connections`, those that became WebSocket tunnels: a drain does not wait for them.
    pub tunnels: AtomicUsize,
    generation: AtomicU64,
    pub pools: Pools,
}

impl State {
    /// Build the first generation and the process state around it.
    pub async fn new(config: Config) -> Result<Arc<State>, String> {
        let store = Store::connect(&config.store)
            .await
            .map_err(|e| e.to_string())?;
        let pools = Pools::default();
        let boot = Boot {
            server: config.server.clone(),
            store: config.store.backend.clone(),
        };
        let active = build_active(config, None, &pools, 1)?;
        Ok(Arc::new(State {
            active: ArcSwap::from_pointee(active),
            boot,
            store,
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
            generation: AtomicU64::new(1),
            pools,
        }))
    }

    /// Build a complete new generation off the hot path and swap it in; on error the
    /// running one stays.
    pub fn swap(&self, config: Config) -> Result<u64, String> {
        let prev = self.active.load_full();
        let gen = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let next = build_active(config, Some(&prev), &self.pools, gen)?;
        self.active.store(Arc::new(next));
        Ok(gen)
    }
}

fn build_active(
    config: Config,
    prev: Option<&Active>,
    pools: &Pools,
    generation: u64,
) -> Result<Active, String> {
    let tls = match &config.server.tls {
        Some(p) => Some(crate::tls::server_config(p).map_err(|e| format!("server.tls: {e}"))?),
        // TLS taken out by a reload: the listener was bound speaking TLS and does until a
        // restart, so it keeps the certificate it has.
        None => prev.and_then(|p| p.tls.clone()),
    };
    let keys = match &config.token {
        Some(t) => Some(Keys::new(t).map_err(|e| format!("token: {e}"))?),
        None => None,
    };
    let mut upstreams = Vec::with_capacity(config.upstreams.len());
    for u in &config.upstreams {
        let pools = u
            .targets
            .iter()
            .map(|t| pools.get(t, u))
            .collect::<Result<Vec<_>, _>>()?;
        upstreams.push(Upstream {
            cfg: u.clone(),
            health: Health::new(pools.len()),
            pools,
            next: AtomicUsize::new(0),
        });
    }
    let routes = config
        .routes
        .iter()
        .map(|r| Route {
            cfg: r.clone(),
            ip: r.ip.as_ref().map(IpPolicy::new),
        })
        .collect();
    let limiters = Limiters::new(&config.rate_limits, prev.map(|p| &p.limiters));
    let login = config.login_protection.as_ref().map(|lp| {
        prev.and_then(|p| {
            p.login
                .as_ref()
                .filter(|_| p.config.login_protection.as_ref() == Some(lp))
                .cloned()
        })
        .unwrap_or_else(|| Arc::new(LoginGuard::new(lp)))
    });
    let ratelimit_headers = config
        .rate_limits
        .iter()
        .map(|p| {
            (
                crate::pipeline::rate_limit::policy_header(p),
                crate::pipeline::rate_limit::sf_name(p),
            )
        })
        .collect();
    let route_metrics = config
        .routes
        .iter()
        .map(|r| crate::metrics::RouteMetrics::new(&r.name))
        .collect();
    Ok(Active {
        host_routes: config.routes.iter().any(|r| r.host.is_some()),
        route_metrics,
        unrouted_metrics: crate::metrics::RouteMetrics::new(""),
        ratelimit_headers,
        ip_policy: IpPolicy::new(&config.ip),
        routes,
        upstreams,
        limiters,
        login,
        keys,
        tls,
        generation,
        config,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[tokio::test]
    async fn a_target_down_is_passed_over_until_every_one_is() {
        let state = State::new(config(
            r#""http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3""#,
        ))
        .await
        .unwrap();
        let active = state.active.load_full();
        let up = &active.upstreams[0];
        let picks = |k: usize| (0..k).map(|_| up.next_up()).collect::<Vec<_>>();
        assert_eq!(picks(3), [0, 1, 2]);
        up.health.mark_down(1);
        // Its turns go to the others in turn: an even share each, not all to target 2.
        let got = picks(30);
        assert!(!got.contains(&1), "{got:?}");
        let twos = got.iter().filter(|&&i| i == 2).count();
        assert_eq!(twos, 15, "{got:?}");
        up.health.mark_down(2);
        assert!(picks(5).iter().all(|&i| i == 0));
        up.health.mark_down(0);
        assert_eq!(picks(3).len(), 3, "all down: round robin as if none were");
        // Back once its time is up.
        let h = Health::new(2);
        h.down_until[1].store(h.now_ms().max(1), Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(h.is_up(1, &mut None));
    }

    fn config(targets: &str) -> Config {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "off"

[upstreams.app]
targets = [{targets}]

[[routes]]
name = "all"
prefix = "/"
auth = "public"
upstream = "app"
"#
        );
        Config::from_toml(&text, Path::new("test.toml")).unwrap()
    }

    #[tokio::test]
    async fn a_reload_that_drops_a_target_lets_the_sweep_forget_its_pool() {
        let state = State::new(config(r#""http://127.0.0.1:1", "http://127.0.0.1:2""#))
            .await
            .unwrap();
        assert_eq!(state.pools.len(), 2);
        state
            .swap(config(r#""http://127.0.0.1:2", "http://127.0.0.1:3""#))
            .unwrap();
        // The dropped target's pool is still in the map until a sweep; a generation (or a
        // request) still holding it keeps it.
        assert_eq!(state.pools.len(), 3);
        let old = state.active.load_full();
        state.swap(config(r#""http://127.0.0.1:3""#)).unwrap();
        state.pools.sweep();
        assert_eq!(state.pools.len(), 2, "the held generation keeps :2");
        drop(old);
        state.pools.sweep();
        assert_eq!(state.pools.len(), 1, "only :3 is in use");
    }
}
