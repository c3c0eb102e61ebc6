//! The checkout path of a pool with a circuit breaker or lanes: admission
//! by the breaker, then a place in the lane, then the plain acquire
//! (`acquire.rs`), with the outcome reported back to both.
//!
//! A pool with neither never comes here: `get()` pays one branch for them.

use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::Failure;
use crate::pool::Shared;
use crate::{Error, Manager, Pooled};

impl<M: Manager> Shared<M> {
    /// Checks a connection out through the breaker (when there is one) and
    /// the lane at `lane` (when given), waiting `wait` in all.
    pub(crate) async fn admitted_acquire(
        self: Arc<Self>,
        wait: Duration,
        lane: Option<usize>,
        caller: &'static Location<'static>,
    ) -> Result<Pooled<M>, Error> {
        let call = match &self.breaker {
            Some(breaker) => Some(breaker.admit()?),
            None => None,
        };
        let start = Instant::now();
        let deadline = start + wait;
        let place = match lane {
            Some(index) => Some(self.lanes[index].enter(start, deadline).await?),
            None => None,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let lanes_shared = lane.map(|_| self.clone());
        let outcome = Shared::acquire(self, remaining, caller).await;
        if let (Some(index), Some(shared)) = (lane, &lanes_shared) {
            let lane = &shared.lanes[index];
            match &outcome {
                Ok(_) => lane.acquired(),
                Err(Error::Timeout { .. }) => lane.count_timeout(),
                Err(_) => {}
            }
        }
        match outcome {
            Ok(mut pooled) => {
                pooled.call = call;
                pooled.lane_place = place;
                Ok(pooled)
            }
            Err(err) => {
                let failure = match &err {
                    Error::Timeout { waited, .. } => Some(Failure::AcquireTimeout(*waited)),
                    Error::Unavailable {
                        last_error: Some(cause),
                    } => Some(Failure::Connect(cause.clone())),
                    // Refusals that say nothing about the backend count for
                    // nothing (dropping the call frees a probe's place).
                    _ => None,
                };
                if let (Some(mut call), Some(failure)) = (call, failure) {
                    call.report(failure);
                    call.finish();
                }
                Err(err)
            }
        }
    }
}
