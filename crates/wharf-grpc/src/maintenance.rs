//! The pool's maintenance task: idle channels closed, the pool topped up
//! to `min_channels`, idle channels health-checked.

use std::sync::Weak;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::pool::Inner;

/// Runs until the pool is dropped or closed.
pub(crate) async fn run(pool: Weak<Inner>) {
    let Some(interval) = pool.upgrade().map(|p| p.settings.maintenance_interval) else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        inner.close_idle();
        if let Some(service) = inner.settings.health_check.clone() {
            check_health(&inner, &service).await;
        }
        inner.sweep_broken();
        inner.top_up().await;
    }
}

/// Asks each idle channel `grpc.health.v1.Health/Check` for `service`;
/// one that does not answer SERVING within the connect timeout is taken
/// out.
async fn check_health(inner: &Inner, service: &str) {
    for slot in inner.idle_slots() {
        let mut client = HealthClient::new(slot.raw());
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let answer =
            tokio::time::timeout(inner.settings.connect_timeout, client.check(request)).await;
        let serving = match answer {
            Ok(Ok(response)) => response.into_inner().status() == ServingStatus::Serving,
            Ok(Err(status)) => {
                tracing::warn!(channel = slot.id, %status, "gRPC health check failed");
                false
            }
            Err(_) => {
                tracing::warn!(channel = slot.id, "gRPC health check timed out");
                false
            }
        };
        if !serving {
            slot.mark_broken();
        }
    }
}
