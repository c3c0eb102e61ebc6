//! # wharf-pooler
//!
//! A PostgreSQL pooler that PgBouncer users can switch to without rewriting
//! their configuration: it reads `pgbouncer.ini` (or the same keys in TOML),
//! speaks the v3 wire protocol to clients and servers, and keeps its server
//! connections in [`wharf`] pools shared by every thread, so its limits hold
//! exactly however many cores it uses.
#![warn(missing_docs)]

pub mod config;

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cancel;
pub mod frontend;
pub mod http;
pub mod lifecycle;
pub mod pooler;
pub mod proto;
pub mod router;
pub mod stats;

pub use pooler::{Pooler, StartError};
