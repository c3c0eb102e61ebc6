//! A pool of gRPC channels on tonic, for the many calls one service
//! client makes at once.
//!
//! A tonic [`Channel`](tonic::transport::Channel) is one HTTP/2 connection:
//! every call shares its streams and its framing, and hyper does not open
//! a second connection to the same address. [`GrpcPool`] keeps several
//! and spreads calls over them by load: each call leases the channel with
//! the fewest calls in flight; a new channel is opened when every open one
//! has `streams_per_channel` in flight (up to `max_channels`); channels idle
//! for `idle_timeout` beyond `min_channels` are closed; channels that fail
//! at the transport or a `grpc.health.v1` check are replaced.
//!
//! A channel is shared, not checked out, so the pool is built on the
//! engine's shared-connection pool ([`wharf::shared`]), which counts
//! leases, rather than on its exclusive checkout. A lease
//! ([`PooledChannel`]) lasts until the handle, the clients built on it and
//! the response streams that came through it are all gone.
//!
//! The defaults follow the articles' gRPC settings (10 channels at most,
//! 2 at least, a minute's idle timeout) and `@grpc/grpc-js`'s keepalive
//! (`keepalive_time_ms` 30 s, `keepalive_timeout_ms` 5 s,
//! `keepalive_permit_without_calls` on); see [`Settings`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tonic_health::pb::health_client::HealthClient;
//! use tonic_health::pb::HealthCheckRequest;
//!
//! let pool = wharf_grpc::GrpcPool::builder(["http://127.0.0.1:50051"])
//!     .max_channels(16)
//!     .streams_per_channel(50)
//!     .build()
//!     .await?;
//! // One lease per call: the client is dropped when the call is done.
//! let mut client = HealthClient::new(pool.channel().await?);
//! let reply = client
//!     .check(HealthCheckRequest { service: String::new() })
//!     .await?;
//! println!("{:?}", reply.into_inner().status());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod channel;
mod config;
mod error;
mod opener;
mod pool;

pub use channel::PooledChannel;
pub use config::{Builder, Settings};
pub use error::Error;
pub use pool::{ChannelStatus, GrpcPool, GrpcStatus};
