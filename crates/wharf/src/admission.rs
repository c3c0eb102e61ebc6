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

use crate::breaker::{Call, Failure};
use crate::pool::Shared;
use crate::{Error, Manager, Pooled};

impl<M: Manager> Shared<M> {
    /// The checkout of a pool with a breaker, outside any lane: `call` is
    /// the breaker's admission, finished with the connection.
    pub(crate) async fn acquire_with_call(
        self: Arc<Self>,
        wait: Duration,
        caller: &'static Location<'static>,
        call: Call,
    ) -> Result<Pooled<M>, Error> {
        match Shared::acquire_keeping_pool(self, wait, caller, None).await {
            Ok(mut pooled) => {
                pooled.call = Some(call);
                Ok(pooled)
            }
            Err((shared, err)) => {
                shared.checkout_failed(Some(call), None, &err);
                Err(err)
            }
        }
    }

    /// Checks a connection out through the breaker (when there is one) and
    /// the lane at `lane`, waiting `wait` in all.
    pub(crate) async fn admitted_acquire(
        self: Arc<Self>,
        mut wait: Duration,
        lane: usize,
        caller: &'static Location<'static>,
    ) -> Result<Pooled<M>, Error> {
        let call = match &self.breaker {
            Some(breaker) => Some(breaker.admit()?),
            None => None,
        };
        if !self.lanes[lane].try_enter() {
            let start = Instant::now();
            self.lanes[lane].enter(start, start + wait).await?;
            wait = wait.saturating_sub(start.elapsed());
        }
        match Shared::acquire_keeping_pool(self, wait, caller, Some(lane)).await {
            Ok(mut pooled) => {
                pooled.shared.lanes[lane].acquired();
                pooled.call = call;
                Ok(pooled)
            }
            Err((shared, err)) => {
                shared.lanes[lane].leave();
                shared.checkout_failed(call, Some(lane), &err);
                Err(err)
            }
        }
    }

    /// Tells the breaker and the lane about a checkout that failed.
    fn checkout_failed(&self, call: Option<Call>, lane: Option<usize>, err: &Error) {
        if let (Some(index), Error::Timeout { .. }) = (lane, err) {
            self.lanes[index].count_timeout();
        }
        let failure = match err {
            Error::Timeout { waited, .. } => Some(Failure::AcquireTimeout(*waited)),
            Error::Unavailable {
                last_error: Some(cause),
            } => Some(Failure::Connect(cause.clone())),
            // Refusals that say nothing about the backend count for
            // nothing (dropping the call frees a probe's place).
            _ => None,
        };
        if let (Some(call), Some(failure), Some(breaker)) = (call, failure, &self.breaker) {
            let acquired = self.recorder.acquire_wait.count();
            call.fail_checkout(breaker, failure, acquired);
        }
    }
}
