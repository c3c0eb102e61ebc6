//! The pool: channels leased by load, on the engine's shared-connection
//! pool ([`wharf::shared`]).

use tonic::transport::Endpoint;
use wharf::shared::{SharedError, SharedPool, SharedSettings};

use crate::channel::PooledChannel;
use crate::config::{Builder, Settings};
use crate::opener::GrpcOpener;
use crate::Error;

/// A pool of gRPC channels to one service (one or several endpoints).
///
/// A channel is one HTTP/2 connection that carries many calls at once, so
/// the pool does not hand channels out exclusively, as a database pool
/// does its connections: [`channel`](Self::channel) leases the channel
/// with the fewest calls in flight, and opens another (up to
/// `max_channels`) only when every open one has `streams_per_channel`
/// calls in flight. That is what Google's gRPC libraries for Go and Java
/// do with their channel pools, and what one tonic `Channel` cannot do:
/// it keeps a single connection, so one connection's stream limit and its
/// framing cap its throughput.
///
/// Channels idle for `idle_timeout` beyond `min_channels` are closed, the
/// pool is topped up to `min_channels`, and with a health check configured
/// idle channels are asked `grpc.health.v1.Health/Check`, by a
/// maintenance task that lives as long as the pool. A channel whose call
/// fails at the transport (refused, reset, keepalive unanswered) or whose
/// health check fails is replaced.
///
/// Cloning the pool is cheap and shares it.
#[derive(Debug, Clone)]
pub struct GrpcPool {
    shared: SharedPool<GrpcOpener>,
    settings: Settings,
}

/// A pool's state, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// Each open channel.
    pub channels: Vec<ChannelStatus>,
    /// Leases taken since the pool started.
    pub leases: u64,
    /// Channels opened since the pool started.
    pub opened: u64,
    /// Channels closed for being idle.
    pub closed_idle: u64,
    /// Channels taken out after a transport failure or a failed health
    /// check.
    pub replaced: u64,
    /// Attempts to open a channel that failed.
    pub connect_failures: u64,
}

impl GrpcStatus {
    /// Calls in flight over all channels.
    pub fn in_flight(&self) -> usize {
        self.channels.iter().map(|c| c.in_flight).sum()
    }
}

/// One open channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStatus {
    /// The pool's id for it.
    pub id: u64,
    /// The endpoint it is connected to.
    pub endpoint: String,
    /// Leases (calls) on it now.
    pub in_flight: usize,
}

impl GrpcPool {
    /// Starts building a pool of channels to `endpoints` (`http://host:port`;
    /// new channels go to them in turn).
    pub fn builder<I, S>(endpoints: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Builder::new(endpoints.into_iter().map(Into::into).collect())
    }

    pub(crate) async fn start(
        endpoints: Vec<(String, Endpoint)>,
        settings: Settings,
    ) -> Result<Self, Error> {
        let opener = GrpcOpener::new(
            endpoints,
            settings.health_check.clone(),
            settings.connect_timeout,
        );
        let shared = SharedSettings {
            max_connections: settings.max_channels,
            min_connections: settings.min_channels,
            per_connection: settings.streams_per_channel,
            idle_timeout: settings.idle_timeout,
            maintenance_interval: settings.maintenance_interval,
            check_idle: settings.health_check.is_some(),
            connect_timeout: settings.connect_timeout,
        };
        let shared = SharedPool::start(opener, shared)
            .await
            .map_err(|err| match err {
                SharedError::Settings(what) => Error::InvalidSetting(what),
                other => unreachable!("start only refuses settings: {other}"),
            })?;
        Ok(Self { shared, settings })
    }

    /// Leases the open channel with the fewest calls in flight, opening a
    /// new one first when every open channel has `streams_per_channel`
    /// in flight and fewer than `max_channels` are open. When a new
    /// channel cannot connect but others are open, the least loaded of
    /// those is leased.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when no channel is open and none can be opened,
    /// [`Error::Closed`] after [`close`](Self::close).
    pub async fn channel(&self) -> Result<PooledChannel, Error> {
        match self.shared.lease().await {
            Ok(lease) => Ok(PooledChannel::new(lease)),
            Err(SharedError::Open(failure)) => Err(Error::Connect {
                endpoint: failure.endpoint,
                source: failure.source,
            }),
            Err(SharedError::OpenTimeout(after)) => Err(Error::ConnectTimeout(after)),
            Err(SharedError::Closed) => Err(Error::Closed),
            Err(SharedError::Settings(what)) => Err(Error::InvalidSetting(what)),
        }
    }

    /// The pool's channels and counters now.
    pub fn status(&self) -> GrpcStatus {
        let status = self.shared.status();
        GrpcStatus {
            channels: status
                .connections
                .into_iter()
                .map(|c| ChannelStatus {
                    id: c.id,
                    endpoint: c.label,
                    in_flight: c.in_flight,
                })
                .collect(),
            leases: status.leases,
            opened: status.opened,
            closed_idle: status.closed_idle,
            replaced: status.replaced,
            connect_failures: status.open_failures,
        }
    }

    /// The settings the pool runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Closes the pool: no new leases; each channel closes once the calls
    /// on it end. The maintenance task stops.
    pub fn close(&self) {
        self.shared.close();
    }
}
