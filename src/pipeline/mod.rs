//! The request's journey, one phase per module.

pub mod client_ip;
pub mod ip_policy;
pub mod path;
pub mod rate_limit;
