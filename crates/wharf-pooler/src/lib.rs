//! # wharf-pooler
//!
//! A PostgreSQL pooler that PgBouncer users can switch to without rewriting
//! their configuration: it reads `pgbouncer.ini` (or the same keys in TOML),
//! speaks the v3 wire protocol to clients and servers, and keeps its server
//! connections in [`wharf`] pools shared by every thread, so its limits hold
//! exactly however many cores it uses.
//!
//! The modules are layers, each importing only from those below it:
//!
//! | layer | modules |
//! |---|---|
//! | wiring | `pooler`, `listener`, [`signals`], `janitor` |
//! | views | `http` (`/metrics`, `/health`, dashboard) |
//! | client side | `client` (startup, login, session, link, relay, protocol state, timeouts) |
//! | console | `admin` |
//! | shared rows and state | `views`, [`state`], [`lifecycle`] |
//! | routing and pools | `router`, `pool` |
//! | one server | `server` |
//! | ground | `cancel`, `prepared`, `auth`, [`tls`], `net`, [`proto`], `stats`, [`calendar`], [`config`] |
#![warn(missing_docs)]

mod admin;
mod auth;
pub mod calendar;
mod cancel;
mod client;
pub mod config;
mod http;
mod janitor;
pub mod lifecycle;
mod listener;
mod net;
mod pool;
mod pooler;
mod prepared;
pub mod proto;
mod router;
mod server;
pub mod signals;
mod sql;
pub mod state;
mod stats;
pub mod tls;
mod views;

pub use net::sd_notify;
pub use pooler::{Pooler, StartError};
pub use state::PoolerState;
