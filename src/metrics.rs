//! Prometheus metrics (SPEC §7). Low cardinality only: labels are route names, status
//! codes, refusal codes and policy names — never a path or an IP.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder once; later calls return the same handle.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The text exposition, or an empty string when no recorder could be installed.
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

fn describe() {
    metrics::describe_counter!(
        "iptgate_requests_total",
        "Requests by route, status and refusal code"
    );
    metrics::describe_histogram!("iptgate_request_duration_seconds", "Whole request time");
    metrics::describe_histogram!(
        "iptgate_upstream_duration_seconds",
        "Upstream time until response headers"
    );
    metrics::describe_counter!(
        "iptgate_tokens_minted_total",
        "Tokens minted, by type (access, refresh), at login and at refresh"
    );
    metrics::describe_counter!(
        "iptgate_tokens_refreshed_total",
        "Refresh rotations that succeeded"
    );
    metrics::describe_counter!(
        "iptgate_tokens_verified_total",
        "Token verifications by result"
    );
    metrics::describe_counter!(
        "iptgate_tokens_revoked_total",
        "Revocations (logout, refresh reuse)"
    );
    metrics::describe_counter!("iptgate_denials_total", "Refusals by code");
    metrics::describe_counter!(
        "iptgate_rate_limited_total",
        "Rate-limit refusals by policy"
    );
    metrics::describe_counter!(
        "iptgate_dry_run_total",
        "Refusals a dry-run route let through, by code"
    );
    metrics::describe_gauge!("iptgate_active_connections", "Open client connections");
    metrics::describe_counter!("iptgate_config_reloads_total", "Config reloads by result");
    // Series with a fixed label set are there from the start at 0, so that `rate()` and
    // `absent()` work before the first event.
    for result in ["ok", "failed"] {
        counter!("iptgate_config_reloads_total", "result" => result).increment(0);
    }
    for kind in ["access", "refresh"] {
        counter!("iptgate_tokens_minted_total", "kind" => kind).increment(0);
    }
    counter!("iptgate_tokens_revoked_total").increment(0);
    counter!("iptgate_tokens_refreshed_total").increment(0);
    gauge!("iptgate_active_connections").set(0.0);
}

/// Per-route metric handles, registered once per config generation so the hot path does no
/// label formatting or registry lookups.
pub struct RouteMetrics {
    route: String,
    duration: metrics::Histogram,
    upstream: metrics::Histogram,
    counters: dashmap::DashMap<(u16, &'static str), metrics::Counter>,
    /// `status="200", code=""`, made on first use.
    ok: OnceLock<metrics::Counter>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            duration: histogram!("iptgate_request_duration_seconds", "route" => route.to_string()),
            upstream: histogram!("iptgate_upstream_duration_seconds", "route" => route.to_string()),
            counters: dashmap::DashMap::new(),
            ok: OnceLock::new(),
        }
    }

    pub fn request(
        &self,
        status: u16,
        code: Option<&'static str>,
        secs: f64,
        upstream: Option<f64>,
    ) {
        if status == 200 && code.is_none() {
            // The common case, without a map lookup.
            self.ok
                .get_or_init(|| counter!("iptgate_requests_total", "route" => self.route.clone(), "status" => "200", "code" => ""))
                .increment(1);
        } else {
            self.count(status, code);
        }
        self.duration.record(secs);
        if let Some(u) = upstream {
            self.upstream.record(u);
        }
        if let Some(c) = code.filter(|c| !crate::access_log::is_upstream_failure(c)) {
            denial(c);
        }
    }

    fn count(&self, status: u16, code: Option<&'static str>) {
        let key = (status, code.unwrap_or(""));
        match self.counters.get(&key) {
            Some(c) => c.increment(1),
            None => {
                let c = counter!("iptgate_requests_total", "route" => self.route.clone(), "status" => status.to_string(), "code" => key.1);
                c.increment(1);
                // Bounded: statuses and codes are a small closed set per route.
                if self.counters.len() < 256 {
                    self.counters.insert(key, c);
                }
            }
        }
    }
}

fn denial(code: &'static str) {
    static DENIALS: OnceLock<dashmap::DashMap<&'static str, metrics::Counter>> = OnceLock::new();
    let map = DENIALS.get_or_init(dashmap::DashMap::new);
    if let Some(c) = map.get(code) {
        c.increment(1);
        return;
    }
    let c = counter!("iptgate_denials_total", "code" => code);
    c.increment(1);
    map.insert(code, c);
}

/// Fold recorded histogram samples into their buckets (keeps memory flat between scrapes).
pub fn upkeep() {
    if let Some(h) = install() {
        h.run_upkeep();
    }
}

pub fn minted(kind: &'static str) {
    counter!("iptgate_tokens_minted_total", "kind" => kind).increment(1);
}

pub fn verified(refused: Option<&'static str>) {
    static VERIFIED: OnceLock<dashmap::DashMap<&'static str, metrics::Counter>> = OnceLock::new();
    let result = refused.unwrap_or("ok");
    let map = VERIFIED.get_or_init(dashmap::DashMap::new);
    if let Some(c) = map.get(result) {
        c.increment(1);
        return;
    }
    let c = counter!("iptgate_tokens_verified_total", "result" => result);
    c.increment(1);
    map.insert(result, c);
}

pub fn refreshed() {
    counter!("iptgate_tokens_refreshed_total").increment(1);
}

pub fn revoked() {
    counter!("iptgate_tokens_revoked_total").increment(1);
}

pub fn rate_limited(policy: &str) {
    counter!("iptgate_rate_limited_total", "policy" => policy.to_string()).increment(1);
}

pub fn dry_run(code: &'static str) {
    counter!("iptgate_dry_run_total", "code" => code).increment(1);
}

pub fn connections(n: usize) {
    gauge!("iptgate_active_connections").set(n as f64);
}

pub fn reload(ok: bool) {
    counter!("iptgate_config_reloads_total", "result" => if ok { "ok" } else { "failed" })
        .increment(1);
}
