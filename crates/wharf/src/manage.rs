//! Managing a pool's connections by hand: [`Pool::retain`] and
//! [`Pool::add`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use crate::metrics::Recorder;
use crate::pool::Shared;
use crate::queue::{Live, Record};
use crate::{CloseReason, ConnInfo, Manager, Pool};

/// Why [`Pool::add`] did not take a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddRefusal {
    /// The pool already has `max_size` connections (counting those in use
    /// and being opened).
    #[error("the pool already has max_size ({max_size}) connections")]
    Full {
        /// The pool's current `max_size`.
        max_size: usize,
    },
    /// The pool has been closed.
    #[error("the pool is closed")]
    Closed,
    /// The pool's shared [`Budget`](crate::Budget) has no unit free.
    #[error("the pool's shared budget is spent")]
    BudgetSpent,
}

/// A connection [`Pool::add`] gave back, and why.
#[derive(thiserror::Error)]
#[error("the pool did not take the connection: {reason}")]
pub struct AddError<C> {
    /// The connection, still the caller's.
    pub conn: C,
    /// Why the pool did not take it.
    pub reason: AddRefusal,
}

impl<C> AddError<C> {
    /// The connection that was not added.
    pub fn into_inner(self) -> C {
        self.conn
    }
}

// By hand: deriving would require the connection to be `Debug`.
impl<C> fmt::Debug for AddError<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<M: Manager> Pool<M> {
    /// Closes every idle connection for which `keep` returns `false`
    /// (reason [`CloseReason::Removed`]) and returns how many it closed.
    ///
    /// Only idle connections are offered; those in use are not touched (a
    /// connection is never closed under its user). `keep` runs without the
    /// pool's lock: meanwhile the connections it looks at are out of the
    /// idle set, and callers arriving then wait for them like for any other
    /// connection. Freed slots are refilled as usual (`min_idle`, waiters).
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use std::time::Duration;
    /// # struct Numbers;
    /// # impl wharf::Manager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<u32, Infallible> { Ok(0) }
    /// #     async fn check(&self, _: &mut u32) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = wharf::Pool::builder(Numbers).max_size(4).build()?;
    /// let (a, b) = (pool.get().await?, pool.get().await?);
    /// let b_id = b.info().id;
    /// drop((a, b));
    ///
    /// // Say the database was failed over: close everything older than
    /// // the switch, or here, one connection by id.
    /// let closed = pool.retain(|_conn, info| info.id != b_id);
    /// assert_eq!(closed, 1);
    /// assert_eq!(pool.status().idle, 1);
    /// # Ok(()) }
    /// ```
    pub fn retain<F>(&self, mut keep: F) -> usize
    where
        F: FnMut(&mut M::Connection, ConnInfo) -> bool,
    {
        let shared = self.shared();
        let idle = {
            let mut st = shared.state.lock();
            let idle = std::mem::take(&mut st.idle);
            // Out of the idle set but still counted, like a connection out
            // for its keepalive check.
            st.testing += idle.len();
            idle
        };
        let now = Instant::now();
        let mut sorting = Sorting {
            shared,
            pending: idle,
            kept: Vec::new(),
            removed: Vec::new(),
        };
        // Looked at in place, so that if `keep` panics the connection it was
        // shown is still among those the guard puts back.
        while let Some(live) = sorting.pending.front_mut() {
            let keep_it = keep(&mut live.conn, live.meta.info(now));
            let live = sorting.pending.pop_front().expect("just looked at");
            if keep_it {
                sorting.kept.push(live);
            } else {
                sorting.removed.push(live);
            }
        }
        let removed = sorting.removed.len();
        drop(sorting);
        removed
    }

    /// Hands the pool a connection made elsewhere, as if the pool had
    /// opened it: it serves the oldest waiter or joins the idle set, and
    /// from then on the pool checks, ages and closes it like its own
    /// (`on_connect` does not run on it). Counted in
    /// [`Metrics::created`](crate::Metrics::created).
    ///
    /// The pool takes it only while below `max_size`; otherwise, or once
    /// closed, the connection comes back inside the error.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Numbers;
    /// # impl wharf::Manager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<u32, Infallible> { Ok(0) }
    /// #     async fn check(&self, _: &mut u32) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = wharf::Pool::builder(Numbers).max_size(1).build()?;
    /// pool.add(7)?;
    /// assert_eq!(*pool.get().await?, 7);
    ///
    /// // Full: the connection comes back.
    /// let refused = pool.add(8).unwrap_err();
    /// assert!(matches!(refused.reason, wharf::AddRefusal::Full { max_size: 1 }));
    /// assert_eq!(refused.into_inner(), 8);
    /// # Ok(()) }
    /// ```
    pub fn add(&self, conn: M::Connection) -> Result<(), AddError<M::Connection>> {
        let shared = self.shared();
        let now = Instant::now();
        let meta = shared.new_meta(now);
        let mut st = shared.state.lock();
        let refusal = if st.closed {
            Some(AddRefusal::Closed)
        } else if st.size >= st.max_size {
            Some(AddRefusal::Full {
                max_size: st.max_size,
            })
        } else if !shared.take_budget_unit() {
            Some(AddRefusal::BudgetSpent)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return Err(AddError { conn, reason });
        }
        st.size += 1;
        let waiter = st.hand_off(Record::new(conn, meta), now);
        drop(st);
        Recorder::count(&shared.recorder.counters.created);
        tracing::debug!(pool = %shared.config.name, conn = meta.id, "connection added");
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        shared.connection_opened();
        Ok(())
    }
}

/// Idle connections out for [`Pool::retain`]'s predicate. Dropping it
/// settles them: the kept ones, and any not looked at yet (the predicate
/// panicked), go back; the removed ones are closed.
struct Sorting<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    pending: VecDeque<Live<M::Connection>>,
    kept: Vec<Live<M::Connection>>,
    removed: Vec<Live<M::Connection>>,
}

impl<M: Manager> Drop for Sorting<'_, M> {
    fn drop(&mut self) {
        let removed = std::mem::take(&mut self.removed);
        let back: Vec<_> = self.kept.drain(..).chain(self.pending.drain(..)).collect();
        let mut wake = Vec::new();
        let now = Instant::now();
        let mut close: Vec<_> = removed
            .into_iter()
            .map(|live| (live, CloseReason::Removed))
            .collect();
        {
            let mut st = self.shared.state.lock();
            st.testing -= back.len() + close.len();
            st.size -= close.len();
            for live in back {
                // Closed or shrunk while they were out.
                if st.closed {
                    close.push((live, CloseReason::Closed));
                    st.size -= 1;
                } else if st.over_size() {
                    close.push((live, CloseReason::Resized));
                    st.size -= 1;
                } else {
                    wake.extend(st.hand_off(live, now));
                }
            }
            self.shared.spawn_connectors(&mut st);
        }
        for waiter in wake {
            waiter.wake();
        }
        for (live, reason) in close {
            self.shared.close_conn(live, reason);
        }
    }
}
