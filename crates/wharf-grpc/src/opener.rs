//! How the pool opens and checks channels: tonic's connect to each
//! endpoint in turn, and the `grpc.health.v1` check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use wharf::shared::Open;

/// Opens channels to a list of endpoints, in turn.
#[derive(Debug)]
pub(crate) struct GrpcOpener {
    pub(crate) endpoints: Vec<(String, Endpoint)>,
    next: AtomicUsize,
    /// The service to ask `grpc.health.v1.Health/Check` about.
    health_check: Option<String>,
    check_timeout: Duration,
}

/// A channel that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to gRPC endpoint {endpoint}: {source}")]
pub(crate) struct ConnectFailure {
    pub(crate) endpoint: String,
    #[source]
    pub(crate) source: tonic::transport::Error,
}

impl GrpcOpener {
    pub(crate) fn new(
        endpoints: Vec<(String, Endpoint)>,
        health_check: Option<String>,
        check_timeout: Duration,
    ) -> Self {
        Self {
            endpoints,
            next: AtomicUsize::new(0),
            health_check,
            check_timeout,
        }
    }
}

impl Open for GrpcOpener {
    type Conn = Channel;
    type Error = ConnectFailure;

    async fn open(&self) -> Result<(Channel, String), ConnectFailure> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let (address, endpoint) = &self.endpoints[turn % self.endpoints.len()];
        match endpoint.connect().await {
            Ok(channel) => Ok((channel, address.clone())),
            Err(source) => Err(ConnectFailure {
                endpoint: address.clone(),
                source,
            }),
        }
    }

    async fn check(&self, channel: &Channel) -> bool {
        let Some(service) = &self.health_check else {
            return true;
        };
        let mut client = HealthClient::new(channel.clone());
        let request = HealthCheckRequest {
            service: service.clone(),
        };
        match tokio::time::timeout(self.check_timeout, client.check(request)).await {
            Ok(Ok(response)) => response.into_inner().status() == ServingStatus::Serving,
            Ok(Err(status)) => {
                tracing::warn!(%status, "gRPC health check failed");
                false
            }
            Err(_) => {
                tracing::warn!("gRPC health check timed out");
                false
            }
        }
    }
}
