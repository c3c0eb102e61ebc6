//! [`Pool::interact`]: running blocking code on a pooled connection, for
//! synchronous clients (rusqlite, diesel, `postgres`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{Error, Manager, Pool};

/// Why [`Pool::interact`] did not return the closure's result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InteractError {
    /// No connection could be had.
    #[error(transparent)]
    Pool(#[from] Error),
    /// The closure panicked; its connection was closed (reason
    /// [`CloseReason::Discarded`](crate::CloseReason::Discarded)), since
    /// it may have been left mid-operation.
    #[error("the closure given to interact panicked: {0}")]
    Panicked(String),
    /// The blocking task did not run to completion: the runtime is shutting
    /// down.
    #[error("the blocking task was cancelled: the runtime is shutting down")]
    Cancelled,
}

impl<M: Manager> Pool<M> {
    /// Checks a connection out and runs `f` on it on Tokio's blocking thread
    /// pool ([`tokio::task::spawn_blocking`]), so that a synchronous client
    /// does not stall the runtime's workers; deadpool-sync's `interact`.
    ///
    /// The connection is returned when `f` is done, also if this future is
    /// dropped first (the blocking code cannot be stopped; its connection
    /// stays out of the pool until it ends). Waiting for the connection is
    /// bounded by `acquire_timeout`, running `f` is not.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Numbers;
    /// # impl wharf::Manager for Numbers {
    /// #     type Connection = Vec<u32>;
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<Vec<u32>, Infallible> { Ok(Vec::new()) }
    /// #     async fn check(&self, _: &mut Vec<u32>) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = wharf::Pool::builder(Numbers).build()?;
    /// // Say `conn` were a rusqlite::Connection: this is where its blocking
    /// // calls go.
    /// let len = pool.interact(|conn| {
    ///     conn.push(7);
    ///     conn.len()
    /// }).await?;
    /// assert_eq!(len, 1);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn interact<F, R>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<R, InteractError>> + Send + 'static
    where
        F: FnOnce(&mut M::Connection) -> R + Send + 'static,
        R: Send + 'static,
    {
        let get = self.get();
        async move {
            let mut conn = get.await?;
            // The handle moves to the blocking thread: whatever becomes of
            // this future, it goes back to the pool when `f` is done.
            let outcome = tokio::task::spawn_blocking(move || {
                match catch_unwind(AssertUnwindSafe(|| f(&mut conn))) {
                    Ok(value) => Ok(value),
                    Err(panic) => {
                        conn.discard();
                        Err(InteractError::Panicked(panic_message(&*panic)))
                    }
                }
            })
            .await;
            match outcome {
                Ok(result) => result,
                Err(join) if join.is_panic() => {
                    Err(InteractError::Panicked(panic_message(&*join.into_panic())))
                }
                Err(_) => Err(InteractError::Cancelled),
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}
