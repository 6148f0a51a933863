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
            let (old, new) = (&current.config.server, &cfg.server);
            if old.listen != new.listen
                || old.admin_listen != new.admin_listen
                || old.redirect_http != new.redirect_http
            {
                tracing::warn!("listener addresses changed: they take effect after a restart");
            }
            if old.workers != new.workers || old.max_connections != new.max_connections {
                tracing::warn!(
                    "server.workers or server.max_connections changed: they take effect after a restart"
                );
            }
            if old.tls.is_some() != new.tls.is_some() {
                tracing::warn!("TLS on/off changed: it takes effect after a restart");
            }
            if current.config.store.backend != cfg.store.backend {
                tracing::warn!(
                    "store backend or url changed: it takes effect after a restart (on_error applies now)"
                );
            }
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
