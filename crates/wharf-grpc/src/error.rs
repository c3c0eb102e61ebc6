//! What can go wrong getting a channel.

/// Why [`GrpcPool`](crate::GrpcPool) could not hand out a channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An endpoint address tonic cannot parse.
    #[error("invalid gRPC endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The address as given.
        endpoint: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
    /// The builder was given no endpoint.
    #[error("a gRPC pool needs at least one endpoint")]
    NoEndpoint,
    /// A setting out of range (`max_channels` of 0, `min_channels` above
    /// `max_channels`, a watermark of 0).
    #[error("invalid gRPC pool setting: {0}")]
    InvalidSetting(&'static str),
    /// No channel was open and a new one could not connect (the server is
    /// down or unreachable: gRPC's UNAVAILABLE).
    #[error("cannot connect to gRPC endpoint {endpoint}: {source}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
    /// No channel was open and a new one did not connect within
    /// `connect_timeout`.
    #[error("no gRPC channel connected within {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// The pool was closed.
    #[error("the gRPC pool is closed")]
    Closed,
}

impl Error {
    /// The gRPC status a caller would pass on: UNAVAILABLE for a server
    /// that cannot be reached or a closed pool, INVALID_ARGUMENT for a bad
    /// configuration.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            Error::Connect { .. } | Error::ConnectTimeout(_) | Error::Closed => {
                tonic::Status::unavailable(self.to_string())
            }
            _ => tonic::Status::invalid_argument(self.to_string()),
        }
    }
}
