//! How a [`GrpcPool`](crate::GrpcPool) is sized, timed and kept alive.

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::pool::GrpcPool;
use crate::Error;

/// A pool's settings. The defaults are the articles' gRPC row and
/// `@grpc/grpc-js` channel options: 10 channels at most, 2 kept open, idle
/// channels closed after a minute, keepalive pings every 30 s answered
/// within 5 s, and pings allowed without calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Most channels (HTTP/2 connections) open at once.
    pub max_channels: usize,
    /// Channels kept open even when idle, opened at start.
    pub min_channels: usize,
    /// Calls in flight on one channel before another is opened (HTTP/2
    /// servers commonly allow 100 concurrent streams per connection).
    pub streams_per_channel: usize,
    /// An idle channel beyond `min_channels` is closed after this long.
    pub idle_timeout: Duration,
    /// HTTP/2 keepalive ping interval (`grpc.keepalive_time_ms`).
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection
    /// is dropped (`grpc.keepalive_timeout_ms`).
    pub keepalive_timeout: Duration,
    /// Ping idle connections too (`grpc.keepalive_permit_without_calls`).
    pub keepalive_while_idle: bool,
    /// How long opening a channel may take; also how long a health check
    /// may go unanswered.
    pub connect_timeout: Duration,
    /// How often the maintenance task closes idle channels, tops the pool
    /// up to `min_channels` and runs the health check.
    pub maintenance_interval: Duration,
    /// With `Some(service)`, each idle channel is asked
    /// `grpc.health.v1.Health/Check` for that service (the empty string
    /// asks about the server as a whole) at every maintenance round, and
    /// replaced when the answer is not SERVING or does not come.
    pub health_check: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_channels: 10,
            min_channels: 2,
            streams_per_channel: 100,
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(5),
            keepalive_while_idle: true,
            connect_timeout: Duration::from_secs(5),
            maintenance_interval: Duration::from_secs(1),
            health_check: None,
        }
    }
}

impl Settings {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_channels == 0 {
            return Err(Error::InvalidSetting("max_channels must be at least 1"));
        }
        if self.min_channels > self.max_channels {
            return Err(Error::InvalidSetting(
                "min_channels must not exceed max_channels",
            ));
        }
        if self.streams_per_channel == 0 {
            return Err(Error::InvalidSetting(
                "streams_per_channel must be at least 1",
            ));
        }
        if self.maintenance_interval.is_zero() {
            return Err(Error::InvalidSetting(
                "maintenance_interval must not be zero",
            ));
        }
        Ok(())
    }

    /// `endpoint` with these settings' keepalive and timeouts.
    pub(crate) fn tune(&self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(self.keepalive_while_idle)
    }
}

/// Builds a [`GrpcPool`].
///
/// ```no_run
/// # async fn run() -> Result<(), wharf_grpc::Error> {
/// use std::time::Duration;
///
/// let pool = wharf_grpc::GrpcPool::builder(["http://10.0.0.7:50051", "http://10.0.0.8:50051"])
///     .max_channels(16)
///     .min_channels(2)
///     .streams_per_channel(50)
///     .idle_timeout(Duration::from_secs(60))
///     .health_check("")
///     .build()
///     .await?;
/// let channel = pool.channel().await?;
/// // let mut client = MyServiceClient::new(channel);
/// # drop(channel);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    endpoints: Vec<String>,
    settings: Settings,
}

impl Builder {
    pub(crate) fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            settings: Settings::default(),
        }
    }

    /// Most channels open at once.
    pub fn max_channels(mut self, n: usize) -> Self {
        self.settings.max_channels = n;
        self
    }

    /// Channels kept open even when idle.
    pub fn min_channels(mut self, n: usize) -> Self {
        self.settings.min_channels = n;
        self
    }

    /// Calls in flight per channel before another channel is opened.
    pub fn streams_per_channel(mut self, n: usize) -> Self {
        self.settings.streams_per_channel = n;
        self
    }

    /// How long a channel beyond `min_channels` may stay idle.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive: ping interval and how long a ping may go
    /// unanswered.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.settings.keepalive_interval = interval;
        self.settings.keepalive_timeout = timeout;
        self
    }

    /// How long opening a channel may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How often idle channels are closed, the pool topped up and the
    /// health check run.
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.settings.maintenance_interval = interval;
        self
    }

    /// Checks idle channels with `grpc.health.v1.Health/Check` for
    /// `service` ("" for the whole server) at every maintenance round.
    pub fn health_check(mut self, service: impl Into<String>) -> Self {
        self.settings.health_check = Some(service.into());
        self
    }

    /// All settings at once.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Opens the pool and its `min_channels` channels. A server that is
    /// down does not fail the build: the channels are opened when it
    /// answers (at the next call or maintenance round).
    ///
    /// # Errors
    ///
    /// An endpoint tonic cannot parse, no endpoint, or a setting out of
    /// range.
    pub async fn build(self) -> Result<GrpcPool, Error> {
        self.settings.validate()?;
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoint);
        }
        let endpoints = self
            .endpoints
            .into_iter()
            .map(|address| match Endpoint::from_shared(address.clone()) {
                Ok(endpoint) => Ok((address, self.settings.tune(endpoint))),
                Err(source) => Err(Error::InvalidEndpoint {
                    endpoint: address,
                    source,
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        GrpcPool::start(endpoints, self.settings).await
    }
}
