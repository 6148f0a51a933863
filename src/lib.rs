//! iptgate: a reverse-proxy authentication gateway.
//!
//! A request's journey (see [`pipeline`]):
//! 1. [`pipeline::client_ip`] — the canonical client IP (peer, trusted forwarding header, PROXY protocol);
//! 2. [`pipeline::ip_policy`] — global allow/deny;
//! 3. [`pipeline::route`] — normalized path ([`pipeline::path`]), host, method → route; route IP policy;
//! 4. [`pipeline::rate_limit`] — named policies and the login lock-out;
//! 5. [`pipeline::auth`] — token extraction and verification ([`token`]);
//! 6. [`pipeline::forward`] — the upstream request, streamed;
//! 7. [`pipeline::mint`] — a new token when a login route's upstream says yes.
//!
//! Around it: [`server`] (listeners, TLS, drain; [`activity`] for its timeouts), [`state`] (config generations),
//! [`reload`], [`admin`], [`metrics`], [`access_log`].

pub mod access_log;
pub mod activity;
pub mod admin;
pub mod body;
pub mod check;
pub mod cli_token;
pub mod config;
pub mod demo;
pub mod error;
pub mod explain;
pub mod metrics;
pub mod pipeline;
pub mod proxy_protocol;
pub mod reload;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod token;
pub mod tunnel;
pub mod upstream;

/// Writes a command's output to stdout. A reader that has gone away (`iptgate explain … | head`)
/// is not an error: the rest is dropped instead of panicking on the broken pipe.
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
