//! # wharf
//!
//! An async connection pool for Tokio, generic over the pooled resource.
//!
//! A [`Manager`] says how to open and check one kind of connection; the
//! [`Pool`] does the rest:
//!
//! - **Sizing**: never more than `max_size` connections (counting those
//!   being opened); `min_idle` kept ready in the background.
//! - **Waiting**: callers queue first come, first served, with an
//!   `acquire_timeout` whose error says what the pool was doing, and an
//!   optional `max_waiting` bound for backpressure.
//! - **Health**: connections idle past `validate_after` are checked before
//!   use, every return runs [`Manager::has_broken`], optional keepalive
//!   checks idle ones.
//! - **Lifetimes**: `idle_timeout`, jittered `max_lifetime`, `max_uses`; a
//!   connection in use is never closed under its user.
//! - **Failures**: connects are bounded in number, retried with full-jitter
//!   exponential backoff, and probed one at a time while the backend is
//!   down, so a restarted database is not stampeded.
//! - **Leaks**: connections held past `leak_detection_threshold` are
//!   reported with the call site that took them.
//! - **Hooks**, **metrics** (with Prometheus rendering) and graceful
//!   [`close`](Pool::close).
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! struct Numbers;
//!
//! impl wharf::Manager for Numbers {
//!     type Connection = Vec<u32>;
//!     type Error = Infallible;
//!
//!     async fn connect(&self) -> Result<Vec<u32>, Infallible> {
//!         Ok(Vec::new())
//!     }
//!
//!     async fn check(&self, _conn: &mut Vec<u32>) -> Result<(), Infallible> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = wharf::Pool::builder(Numbers)
//!     .max_size(4)
//!     .acquire_timeout(Duration::from_secs(2))
//!     .build()?;
//!
//! let mut conn = pool.get().await?;
//! conn.push(1);
//! drop(conn); // back to the pool
//!
//! assert_eq!(pool.status().idle, 1);
//! pool.close().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod config;
mod connector;
mod error;
#[cfg(feature = "metrics")]
mod facade;
mod histogram;
mod hooks;
mod janitor;
mod leak;
mod manager;
mod metrics;
mod pool;
mod pooled;
mod queue;
mod tunables;

pub use config::{Builder, Config};
pub use connector::ConnectTimeout;
pub use error::{BoxError, ConfigError, ConnectError, Error};
pub use histogram::{AtomicHistogram, Histogram, PROMETHEUS_BOUNDS_SECS};
pub use hooks::{CloseReason, HookFuture};
pub use manager::Manager;
pub use metrics::{render_prometheus, Metrics, MetricsRegistry, Status};
pub use pool::{Pool, WeakPool};
pub use pooled::{ConnInfo, Pooled};
