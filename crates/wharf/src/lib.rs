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
//! - **Resilience** (each off unless configured): a circuit breaker
//!   ([`Builder::circuit_breaker`]) that answers callers at once while the
//!   backend keeps failing and probes it back; [`Pool::retry`] for
//!   idempotent work, with full-jitter backoff, a deadline, a retry budget
//!   and a classifier the adapters supply; and lanes ([`Builder::lane`],
//!   [`Pool::get_in`]) that cap what slow work may take of the pool.
//! - **Replica sets** ([`ReplicaSet`]): a primary pool and replica pools,
//!   reads on the least busy replica that is reachable and within
//!   `max_lag` (probed with [`Manager::probe_role`]), the primary when none
//!   is, and read-your-writes through a [`WriteToken`].
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
//!
//! # Sizing the pool
//!
//! A pool larger than the database can serve in parallel does not make
//! anything faster: the extra connections queue inside the database
//! (contending for CPU, locks and buffers) instead of in the pool, where
//! waiting is cheap and fair. Start from the database server and work back
//! to [`Config::max_size`].
//!
//! **How many connections the database wants in total.** The rule of thumb
//! from PostgreSQL's wiki and HikariCP's "About Pool Sizing":
//!
//! ```text
//! connections = cores × 2 + effective spindles
//! ```
//!
//! `cores` are the **database server's** cores, not the application's:
//! they are what runs the queries. `effective spindles` is how many disk
//! operations can be in flight usefully: 0 when the working set fits in
//! memory (nothing waits on disk), about one per spinning disk, a few for
//! SSD storage. A 4-core server with its data cached wants about 8 busy
//! connections; measure around that, since the rule assumes short queries
//! that keep a core busy while they run.
//!
//! **Dividing it among clients.** That total is for every client of the
//! server together, and it has to fit under the server's own limit:
//!
//! ```text
//! max_size × instances (at their most, e.g. during a rolling deploy or
//!   an autoscaling peak) + every other client (migrations, cron jobs,
//!   consoles, a pooler) + superuser_reserved_connections
//!   ≤ max_connections
//! ```
//!
//! So with the total above at 8 and 4 application instances (up to 8 while
//! a deploy runs old and new side by side), `max_size` is 1 or 2 per
//! instance, not the 10 a default gives; when that leaves too little per
//! instance, put a pooler (such as this repository's) in front of the
//! database and give the instances larger pools of it. Read replicas are
//! separate servers: size each replica's pools with that replica's cores
//! and `max_connections`, and the primary's only with the traffic that goes
//! to the primary. Little's law gives the other bound: busy connections ≈
//! requests per second × time each holds a connection (500/s × 10 ms = 5);
//! a `max_size` below that leaves callers always waiting. Watch
//! [`Metrics::acquire_wait`] and `in_use_time` to see which side you are on.
//!
//! **Choosing `acquire_timeout`.** It is how long a caller may queue for a
//! connection, so it should end before whoever waits on the caller gives up:
//! below the request's own deadline (the client's or load balancer's
//! timeout), leaving time to run the query and answer with an error that
//! says why. For request handlers that is typically 1 to 5 s, not the 30 s
//! default (which suits batch work). A timeout that fires often means the
//! pool is too small for the load, or connections are held too long (see
//! `leak_detection_threshold`); with [`Config::max_waiting`] an overloaded
//! service refuses at once instead of building a queue nobody will wait for.
#![warn(missing_docs)]

mod acquire;
mod admission;
mod breaker;
mod budget;
mod config;
mod connector;
mod error;
#[cfg(feature = "metrics")]
mod facade;
mod histogram;
mod hooks;
mod interact;
mod janitor;
mod lanes;
mod leak;
mod manage;
mod manager;
mod metrics;
mod padded;
mod pool;
mod pooled;
mod queue;
mod replica;
mod retry;
pub mod shared;
mod tunables;
mod wait_timer;
mod waiters;

pub use breaker::{BreakerConfig, CircuitMetrics, CircuitState, Failure};
pub use budget::{Budget, BudgetShare, BudgetStatus};
pub use config::{Builder, Config};
pub use connector::ConnectTimeout;
pub use error::{BoxError, ConfigError, ConnectError, Error};
pub use histogram::{AtomicHistogram, Histogram, PROMETHEUS_BOUNDS_SECS};
pub use hooks::{CloseReason, ConnHook, HookFuture, StateHook};
pub use interact::InteractError;
pub use lanes::{LaneConfig, LaneMetrics};
pub use manage::{AddError, AddRefusal};
pub use manager::{Manager, Role};
pub use metrics::{render_prometheus, Metrics, MetricsRegistry, Status};
pub use pool::{Pool, WeakPool};
pub use pooled::{ConnInfo, Pooled};
pub use replica::{
    MemberState, MemberStatus, ReplicaSet, ReplicaSetBuilder, ReplicaSetStatus, WriteToken,
};
pub use retry::{ErrorClass, RetryBudget, RetryPolicy, WorkFuture};
