//! The checkout path of a pool with a circuit breaker or lanes: admission
//! by the breaker, then a place in the lane, then the plain acquire
//! (`acquire.rs`), with the outcome reported back to both.
//!
//! A pool with neither never comes here: `get()` pays one branch for them.
//! Here too the common case stays cheap: a closed circuit and a lane with
//! a free place read no clock and take no lock.

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
        mut wait: Duration,
        lane: Option<usize>,
        caller: &'static Location<'static>,
    ) -> Result<Pooled<M>, Error> {
        let call = match &self.breaker {
            Some(breaker) => Some(breaker.admit()?),
            None => None,
        };
        let place = match lane.map(|index| &self.lanes[index]) {
            None => None,
            Some(lane) => match lane.try_enter() {
                Some(place) => Some(place),
                None => {
                    let start = Instant::now();
                    let place = lane.enter(start, start + wait).await?;
                    wait = wait.saturating_sub(start.elapsed());
                    Some(place)
                }
            },
        };
        match Shared::acquire_keeping_pool(self, wait, caller).await {
            Ok(mut pooled) => {
                if let Some(index) = lane {
                    pooled.shared.lanes[index].acquired();
                }
                pooled.call = call;
                pooled.lane_place = place;
                Ok(pooled)
            }
            Err((shared, err)) => {
                if let (Some(index), Error::Timeout { .. }) = (lane, &err) {
                    shared.lanes[index].count_timeout();
                }
                let failure = match &err {
                    Error::Timeout { waited, .. } => Some(Failure::AcquireTimeout(*waited)),
                    Error::Unavailable {
                        last_error: Some(cause),
                    } => Some(Failure::Connect(cause.clone())),
                    // Refusals that say nothing about the backend count for
                    // nothing (dropping the call frees a probe's place).
                    _ => None,
                };
                if let (Some(mut call), Some(failure), Some(breaker)) =
                    (call, failure, &shared.breaker)
                {
                    call.report(failure);
                    call.finish(breaker, Instant::now());
                }
                Err(err)
            }
        }
    }
}
