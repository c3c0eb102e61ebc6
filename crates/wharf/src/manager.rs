//! The [`Manager`] trait: how the pool opens and checks one kind of resource.

use std::future::Future;
use std::time::Duration;

/// Opens and checks the resources a [`Pool`](crate::Pool) holds.
///
/// An adapter for a database or protocol implements this once; the pool does
/// everything else (sizing, waiting, lifetimes, validation scheduling,
/// backoff). Methods may be written as `async fn`.
///
/// ```
/// use std::convert::Infallible;
///
/// struct Counter;
///
/// impl wharf::Manager for Counter {
///     type Connection = u64;
///     type Error = Infallible;
///
///     async fn connect(&self) -> Result<u64, Infallible> {
///         Ok(0)
///     }
///
///     async fn check(&self, _conn: &mut u64) -> Result<(), Infallible> {
///         Ok(())
///     }
/// }
/// ```
pub trait Manager: Send + Sync + 'static {
    /// The pooled resource.
    type Connection: Send + 'static;
    /// What `connect` and `check` fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection.
    ///
    /// The pool bounds how many of these run at once, applies
    /// `connect_timeout`, and retries failures with backoff.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Checks that a connection still works, with a round trip such as
    /// `SELECT 1` or `PING`.
    ///
    /// The pool calls it before handing out a connection that has been idle
    /// longer than `validate_after`, and on idle connections every
    /// `keepalive_interval`. A failure (or exceeding `validation_timeout`)
    /// closes the connection; the caller never sees it.
    fn check(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Cheaply tells, without I/O, whether a connection is known to be
    /// unusable (its socket closed, a protocol error seen).
    ///
    /// Runs on every return to the pool, so it must be fast. A `true` closes
    /// the connection instead of keeping it.
    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Whether connections coming back from a caller go through
    /// [`recycle`](Self::recycle) before anyone else gets them. `false` by
    /// default, and then returns cost nothing extra.
    fn recycles(&self) -> bool {
        false
    }

    /// Resets a connection a caller has returned, so the next one finds it
    /// as new: PostgreSQL's `DISCARD ALL`, PgBouncer's `server_reset_query`.
    /// Runs only when [`recycles`](Self::recycles) says so.
    ///
    /// It runs in the background after the return, bounded by
    /// `validation_timeout`, while the connection is out of the idle set
    /// (a waiter is served only once it is done); a failure closes the
    /// connection (reason [`CloseReason::FailedCheck`](crate::CloseReason::FailedCheck)).
    fn recycle(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// What the server behind `conn` is: a primary, or a replica and how
    /// far behind its primary it is. A [`ReplicaSet`](crate::ReplicaSet)
    /// asks it of each member every probe interval, on a pooled
    /// connection, to keep lagging replicas (and a replica promoted to
    /// primary) out of its reads; nothing else calls it.
    ///
    /// `Ok(None)`, the default, says the manager cannot tell: a replica set
    /// then balances its reads by load and circuit state only, and cannot
    /// enforce a `max_lag`. An error (or exceeding the probe interval)
    /// takes the member out of the reads until a probe succeeds again.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use wharf::Role;
    ///
    /// /// A fake server whose connections carry its replication lag.
    /// struct Standby;
    ///
    /// impl wharf::Manager for Standby {
    ///     type Connection = Duration;
    ///     type Error = Infallible;
    ///
    ///     async fn connect(&self) -> Result<Duration, Infallible> {
    ///         Ok(Duration::from_millis(40))
    ///     }
    ///
    ///     async fn check(&self, _conn: &mut Duration) -> Result<(), Infallible> {
    ///         Ok(())
    ///     }
    ///
    ///     async fn probe_role(&self, conn: &mut Duration) -> Result<Option<Role>, Infallible> {
    ///         Ok(Some(Role::Replica { lag: *conn }))
    ///     }
    /// }
    /// ```
    fn probe_role(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<Option<Role>, Self::Error>> + Send {
        let _ = conn;
        async { Ok(None) }
    }
}

/// What a server is, as [`Manager::probe_role`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It takes writes.
    Primary,
    /// A read-only copy of a primary, replaying its changes.
    Replica {
        /// How far behind the primary its data is: zero when it has
        /// applied everything the primary sent, [`Duration::MAX`] when
        /// that cannot be known (it never applied a change, or lost its
        /// primary).
        lag: Duration,
    },
}
