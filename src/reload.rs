//! Reload (SIGHUP, `POST /reload`): re-read gateway.toml and every file it names, build a
//! complete new generation off the hot path and swap it atomically. A config that fails
//! validation is logged and the running one kept.

use std::sync::Arc;

use crate::config::Config;
use crate::state::State;

pub fn reload(state: &State) -> Result<u64, String> {
    let current = state.active.load_full();
    let path = current.config.source.clone();
    let result = Config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|cfg| {
            restart_needed(&state.boot, &cfg);
            for w in &cfg.warnings {
                tracing::warn!(file = %path.display(), "config: {w}");
            }
            state.swap(cfg)
        });
    match &result {
        Ok(gen) => {
            crate::metrics::reload(true);
            tracing::info!(generation = gen, file = %path.display(), "config reloaded");
        }
        Err(e) => {
            crate::metrics::reload(false);
            tracing::error!(file = %path.display(), error = %e, "reload failed: keeping the running config");
        }
    }
    result
}

/// Warn about what differs from what the process was started with and only a restart
/// applies, naming the values (a change reverted by a later reload warns no more).
fn restart_needed(boot: &crate::state::Boot, cfg: &Config) {
    let (old, new) = (&boot.server, &cfg.server);
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
    for (key, was, now) in [
        (
            "server.listen",
            addr(Some(old.listen)),
            addr(Some(new.listen)),
        ),
        (
            "server.admin_listen",
            addr(old.admin_listen),
            addr(new.admin_listen),
        ),
        (
            "server.redirect_http",
            addr(old.redirect_http),
            addr(new.redirect_http),
        ),
        (
            "server.workers",
            old.workers.to_string(),
            new.workers.to_string(),
        ),
        (
            "server.max_connections",
            old.max_connections.to_string(),
            new.max_connections.to_string(),
        ),
        (
            "server.tls",
            if old.tls.is_some() { "on" } else { "off" }.to_string(),
            if new.tls.is_some() { "on" } else { "off" }.to_string(),
        ),
    ] {
        if was != now {
            tracing::warn!(key, running = %was, configured = %now, "{key} changed: it takes effect after a restart");
        }
    }
    if boot.store != cfg.store.backend {
        tracing::warn!(
            "store backend or url changed: it takes effect after a restart (on_error applies now)"
        );
    }
}

/// Reload on every SIGHUP until the process ends.
#[cfg(unix)]
pub fn on_sighup(state: Arc<State>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = reload(&state);
        }
    });
}

#[cfg(not(unix))]
pub fn on_sighup(_state: Arc<State>) {}
