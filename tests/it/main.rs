#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests: the real gateway and real upstreams on 127.0.0.1, over real sockets.

mod harness;

mod client_ip;
mod config;
mod core;
mod demo;
mod explain;
mod forward_auth;
mod ops;
mod rate_limit;
mod store;
mod tokens;
mod upstream;
