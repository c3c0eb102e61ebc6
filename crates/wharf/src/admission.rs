//! The checkout path of a pool with a circuit breaker or lanes: admission
//! by the breaker, then a place in the lane, then the plain acquire
//! (`acquire.rs`), with the outcome reported back to both.
//!
//! A pool with neither pays a branch for the breaker in `get()`, and
//! never looks at lanes.
//! Here too the common case stays cheap: a closed circuit and a lane with
//! a free place read no clock and take no lock.

use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::{Call, Failure};
use crate::pool::Shared;
use crate::{Error, Manager, Pooled};

impl<M: Manager> Shared<M> {
    /// `get`, `get_timeout` and each attempt of `retry`: through the
    /// circuit breaker when there is one, then a checkout within `wait`.
    ///
    /// One path, and one future, with or without a breaker: a layer of
    /// future per feature costs a copy of the whole checkout state (about
    /// 1 KiB) each time it is built, which was most of what a breaker cost.
    ///
    /// A function returning an `async` block, as `acquire_keeping_pool`.
    #[allow(clippy::manual_async_fn)] // an `async fn` copies its arguments
    pub(crate) fn admit_and_acquire(
        self: Arc<Self>,
        wait: Duration,
        caller: &'static Location<'static>,
    ) -> impl Future<Output = Result<Pooled<M>, Error>> + Send {
        async move {
            let call = match &self.breaker {
                Some(breaker) => Some(breaker.admit()?),
                None => None,
            };
            match Shared::acquire_keeping_pool(self, wait, caller, None).await {
                Ok(mut pooled) => {
                    pooled.set_call(call);
                    Ok(pooled)
                }
                Err((shared, err)) => {
                    shared.checkout_failed(call, None, &err);
                    Err(err)
                }
            }
        }
    }

    /// `get_in`: checks a connection out through the breaker (when there
    /// is one) and the lane at `lane` (the name, when the pool has no such
    /// lane), waiting the lane's `acquire_timeout` in all.
    pub(crate) async fn admitted_acquire(
        self: Arc<Self>,
        lane: Result<usize, String>,
        caller: &'static Location<'static>,
    ) -> Result<Pooled<M>, Error> {
        let lane = lane.map_err(Error::UnknownLane)?;
        let mut wait = self.lanes[lane]
            .acquire_timeout
            .unwrap_or(self.config.acquire_timeout);
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
                pooled.set_call(call);
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
