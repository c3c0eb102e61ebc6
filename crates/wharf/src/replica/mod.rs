//! Replica sets: a primary pool and replica pools, with reads sent to the
//! least busy replica that qualifies and writes to the primary.
//!
//! The design is in [`ReplicaSet`]'s documentation.

mod builder;
mod member;

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::pool::Shared;
use crate::{CircuitState, Error, Manager, Pool, Pooled};

pub use builder::ReplicaSetBuilder;
pub use member::{MemberState, MemberStatus, ReplicaSetStatus};

use member::{Member, Which};

/// A primary [`Pool`] and replica pools of the same [`Manager`]: writes
/// (and reads that must see them) on the primary, other reads spread over
/// the replicas that are reachable, not too far behind, and not refused by
/// their circuit breaker.
///
/// Cheap to clone: clones share one set. When the last clone is dropped
/// the probe tasks stop; the pools close when their last handle goes, as
/// any pool does.
///
/// # How reads are routed
///
/// The set is a layer over ordinary [`Pool`]s, not a mode of the pool: a
/// pool that is in no set pays nothing for it, and a pool in a set keeps
/// its own sizing, timeouts, circuit breaker and lanes. What the set adds
/// is the choice of pool for each read, made from three things:
///
/// - **Load**: the pool's own [`Status`](crate::Status) (connections in use
///   plus callers waiting), read when the read is made. Ties go round the
///   replicas in turn, so an idle set still spreads its reads.
/// - **Circuit**: a replica whose [circuit breaker](crate::Builder::circuit_breaker)
///   is open is skipped without being asked.
/// - **Probes**: a background task per member asks the server, every
///   `probe_interval` on one of the member's pooled connections, what it
///   is ([`Manager::probe_role`]). A replica that is further behind than
///   `max_lag`, that says it is a primary (promoted, or misconfigured), or
///   whose probe failed, takes no reads until a later probe says otherwise.
///   (A probe that finds every connection of the member in use for the
///   whole interval changes nothing: busy is not down.)
///   A replica also takes no reads before its first probe, so that a set
///   never serves reads from a server it knows nothing about; call
///   [`probe`](Self::probe) at startup to not wait for the task.
///
/// When no replica qualifies, reads go to the primary: a read is never
/// failed for want of a replica. Each such read counts in
/// [`ReplicaSetStatus::primary_fallbacks`] and is logged at `debug`; a
/// replica leaving the reads is logged at `warn` with the reason, and its
/// return at `info`.
///
/// A read whose replica checkout fails (the replica went down between two
/// probes, or is saturated) tries the next replica and then the primary,
/// within one `acquire_timeout`: each replica gets at most `replica_wait`
/// of it, and replicas are only tried while more than that is left, so the
/// primary always keeps at least `replica_wait`. A replica whose checkout
/// failed because connecting to it fails is taken out of the reads at once
/// (until its next good probe), so later reads do not wait on it again.
/// Give replica pools [`fail_fast`](crate::Builder::fail_fast) so a replica
/// that is down answers at once instead of after `replica_wait`.
///
/// **Read-your-writes** is a window in time: after a write, the caller
/// takes a [`WriteToken`] ([`wrote`](Self::wrote)) and reads with
/// [`replica_after`](Self::replica_after), which sends them to the primary until the
/// token is `read_your_writes` old. The default window is `max_lag` plus
/// two probe intervals: a replica that takes reads was at most `max_lag`
/// behind at its last probe, that probe is at most one interval old and
/// may itself have taken one, and lag grows no faster than the clock, so
/// after that long every replica that takes reads has the write. (Comparing
/// log positions, such as PostgreSQL's LSNs, would be exact but needs a
/// round trip on the primary after each write and one on the replica
/// before each read; the window needs none.)
///
/// ```
/// # use std::convert::Infallible;
/// # use std::time::Duration;
/// # use wharf::{Pool, Role};
/// # struct Db { replica: bool }
/// # impl wharf::Manager for Db {
/// #     type Connection = bool;
/// #     type Error = Infallible;
/// #     async fn connect(&self) -> Result<bool, Infallible> { Ok(self.replica) }
/// #     async fn check(&self, _: &mut bool) -> Result<(), Infallible> { Ok(()) }
/// #     async fn probe_role(&self, replica: &mut bool) -> Result<Option<Role>, Infallible> {
/// #         Ok(Some(if *replica { Role::Replica { lag: Duration::ZERO } } else { Role::Primary }))
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let primary = Pool::builder(Db { replica: false }).max_size(8).build()?;
/// let replica = Pool::builder(Db { replica: true }).max_size(8).fail_fast(true).build()?;
/// let set = wharf::ReplicaSet::builder(primary)
///     .replica(replica)
///     .max_lag(Duration::from_secs(2))
///     .probe_interval(Duration::from_millis(500))
///     .build()?;
/// set.probe().await; // or let the background task do it
///
/// let on_replica = set.replica().await?;
/// assert!(*on_replica);
///
/// let on_primary = set.primary().await?; // a write here, then:
/// let token = set.wrote();
/// assert!(!*set.replica_after(&token).await?); // sees the write
/// # drop((on_replica, on_primary));
/// # Ok(()) }
/// ```
pub struct ReplicaSet<M: Manager> {
    inner: Arc<Inner<M>>,
}

/// What the probe tasks share with the handles: they hold it weakly, so the
/// last handle's drop ends them.
pub(crate) struct Inner<M: Manager> {
    name: String,
    primary: Member<M>,
    replicas: Box<[Member<M>]>,
    settings: Settings,
    /// Where the next read starts looking, so ties rotate.
    cursor: AtomicUsize,
    replica_reads: AtomicU64,
    primary_fallbacks: AtomicU64,
    fresh_reads: AtomicU64,
}

/// The builder's settings, with the defaults worked out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) max_lag: Option<Duration>,
    pub(crate) read_your_writes: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) acquire_timeout: Duration,
    pub(crate) replica_wait: Duration,
}

/// Proof of a write, for [`ReplicaSet::replica_after`]: reads made with it
/// go to the primary until it is older than the set's `read_your_writes`
/// window.
///
/// Take it when the write is committed (a write in a transaction is only
/// visible after its commit, so a token taken at checkout would start the
/// window too early). The later of two tokens is their [`max`](Ord::max).
/// It holds a monotonic instant, so it is meaningful within this process
/// only: keep it with the user's session, not in a cookie.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let first = wharf::WriteToken::now();
/// let second = wharf::WriteToken::now();
/// assert_eq!(first.max(second), second);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteToken {
    written_at: Instant,
}

impl WriteToken {
    /// A token for a write committed just now; the same as
    /// [`ReplicaSet::wrote`].
    pub fn now() -> Self {
        Self {
            written_at: Instant::now(),
        }
    }

    /// When the write was committed.
    pub fn written_at(&self) -> Instant {
        self.written_at
    }
}

impl<M: Manager> ReplicaSet<M> {
    /// Starts building a set around its `primary` pool; add replicas with
    /// [`ReplicaSetBuilder::replica`].
    pub fn builder(primary: Pool<M>) -> ReplicaSetBuilder<M> {
        ReplicaSetBuilder::new(primary)
    }

    fn start(name: String, primary: Pool<M>, replicas: Vec<Pool<M>>, settings: Settings) -> Self {
        let runtime = primary.shared().runtime.clone();
        let inner = Arc::new(Inner {
            name,
            primary: Member::new(primary),
            replicas: replicas.into_iter().map(Member::new).collect(),
            settings,
            cursor: AtomicUsize::new(0),
            replica_reads: AtomicU64::new(0),
            primary_fallbacks: AtomicU64::new(0),
            fresh_reads: AtomicU64::new(0),
        });
        for which in inner.members() {
            runtime.spawn(member::probe_every_interval(Arc::downgrade(&inner), which));
        }
        Self { inner }
    }

    /// A connection to the primary, for writes (and reads that must see
    /// every write), waiting up to the primary pool's `acquire_timeout`:
    /// the same as `get()` on the primary pool.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Db;
    /// # impl wharf::Manager for Db {
    /// #     type Connection = ();
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<(), Infallible> { Ok(()) }
    /// #     async fn check(&self, _: &mut ()) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let set = wharf::ReplicaSet::builder(wharf::Pool::builder(Db).build()?).build()?;
    /// let conn = set.primary().await?;
    /// // ... write, commit, then:
    /// let token = set.wrote();
    /// # drop((conn, token));
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn primary(&self) -> impl Future<Output = Result<Pooled<M>, Error>> + Send + 'static {
        self.inner.primary.pool.get()
    }

    /// A connection to the least busy replica that qualifies, or to the
    /// primary when none does, within the set's `acquire_timeout`. See the
    /// [type documentation](ReplicaSet) for the choice.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Db;
    /// # impl wharf::Manager for Db {
    /// #     type Connection = ();
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<(), Infallible> { Ok(()) }
    /// #     async fn check(&self, _: &mut ()) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let set = wharf::ReplicaSet::builder(wharf::Pool::builder(Db).build()?)
    ///     .replica(wharf::Pool::builder(Db).build()?)
    ///     .build()?;
    /// set.probe().await;
    /// let conn = set.replica().await?;
    /// assert_eq!(set.status().replica_reads, 1);
    /// # drop(conn);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn replica(&self) -> impl Future<Output = Result<Pooled<M>, Error>> + Send + 'static {
        let caller = Location::caller();
        let inner = self.inner.clone();
        async move { inner.read(caller).await }
    }

    /// Like [`replica`](Self::replica), but on the primary while `token`
    /// is younger than the set's `read_your_writes` window, so the caller
    /// sees its own write (see [`WriteToken`]).
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use std::time::Duration;
    /// # struct Db;
    /// # impl wharf::Manager for Db {
    /// #     type Connection = ();
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<(), Infallible> { Ok(()) }
    /// #     async fn check(&self, _: &mut ()) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let set = wharf::ReplicaSet::builder(wharf::Pool::builder(Db).build()?)
    ///     .replica(wharf::Pool::builder(Db).build()?)
    ///     .read_your_writes(Duration::from_secs(3))
    ///     .build()?;
    /// set.probe().await;
    /// let token = set.wrote();
    /// drop(set.replica_after(&token).await?); // the primary
    /// tokio::time::sleep(Duration::from_secs(3)).await;
    /// drop(set.replica_after(&token).await?); // a replica again
    /// let status = set.status();
    /// assert_eq!((status.fresh_reads, status.replica_reads), (1, 1));
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn replica_after(
        &self,
        token: &WriteToken,
    ) -> impl Future<Output = Result<Pooled<M>, Error>> + Send + 'static {
        let caller = Location::caller();
        let inner = self.inner.clone();
        let fresh = token.written_at.elapsed() < inner.settings.read_your_writes;
        async move {
            if fresh {
                inner.fresh_reads.fetch_add(1, Ordering::Relaxed);
                let wait = inner.primary.pool.config().acquire_timeout;
                return Shared::admit_and_acquire(
                    inner.primary.pool.shared().clone(),
                    wait,
                    caller,
                )
                .await;
            }
            inner.read(caller).await
        }
    }

    /// A [`WriteToken`] for a write committed just now.
    pub fn wrote(&self) -> WriteToken {
        WriteToken::now()
    }

    /// Probes every member now (as the background task does every
    /// `probe_interval`) and returns when all have answered or timed out.
    /// Replicas take no reads before their first probe, so call it at
    /// startup to have them take reads at once.
    ///
    /// See [`replica`](Self::replica) for an example.
    pub async fn probe(&self) {
        let mut probes = tokio::task::JoinSet::new();
        for which in self.inner.members() {
            let inner = self.inner.clone();
            probes.spawn_on(
                async move { inner.probe(which).await },
                &self.inner.primary.pool.shared().runtime,
            );
        }
        while probes.join_next().await.is_some() {}
    }

    /// Each member's state as the last probe or read left it, its pool's
    /// status, and how reads were served so far.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Db;
    /// # impl wharf::Manager for Db {
    /// #     type Connection = ();
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<(), Infallible> { Ok(()) }
    /// #     async fn check(&self, _: &mut ()) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let set = wharf::ReplicaSet::builder(wharf::Pool::builder(Db).build()?)
    ///     .replica(wharf::Pool::builder(Db).name("replica-a").build()?)
    ///     .build()?;
    /// set.probe().await;
    /// let status = set.status();
    /// assert_eq!(status.replicas[0].name, "replica-a");
    /// // Db cannot tell its role (no probe_role): it takes reads on load alone.
    /// assert_eq!(status.replicas[0].state, wharf::MemberState::Ready);
    /// assert_eq!(status.replicas[0].role, None);
    /// # Ok(()) }
    /// ```
    pub fn status(&self) -> ReplicaSetStatus {
        let inner = &self.inner;
        ReplicaSetStatus {
            primary: inner.primary.status(),
            replicas: inner.replicas.iter().map(Member::status).collect(),
            replica_reads: inner.replica_reads.load(Ordering::Relaxed),
            primary_fallbacks: inner.primary_fallbacks.load(Ordering::Relaxed),
            fresh_reads: inner.fresh_reads.load(Ordering::Relaxed),
        }
    }

    /// The set's name, for logs (default `"default"`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The primary's pool.
    pub fn primary_pool(&self) -> &Pool<M> {
        &self.inner.primary.pool
    }

    /// The replicas' pools, in the order they were added.
    pub fn replica_pools(&self) -> impl Iterator<Item = &Pool<M>> {
        self.inner.replicas.iter().map(|member| &member.pool)
    }

    /// Closes every member's pool (see [`Pool::close`]), replicas first.
    pub async fn close(&self) {
        for member in self.inner.replicas.iter() {
            member.pool.close().await;
        }
        self.inner.primary.pool.close().await;
    }
}

impl<M: Manager> Inner<M> {
    fn members(&self) -> impl Iterator<Item = Which> {
        std::iter::once(Which::Primary).chain((0..self.replicas.len()).map(Which::Replica))
    }

    fn member(&self, which: Which) -> &Member<M> {
        match which {
            Which::Primary => &self.primary,
            Which::Replica(index) => &self.replicas[index],
        }
    }

    async fn probe(&self, which: Which) {
        let outcome =
            member::probe_role(&self.member(which).pool, self.settings.probe_interval).await;
        self.member(which)
            .record_probe(outcome, which, &self.name, self.settings.max_lag);
    }

    /// A read: replicas best first, then the primary, within one
    /// `acquire_timeout`.
    async fn read(self: Arc<Self>, caller: &'static Location<'static>) -> Result<Pooled<M>, Error> {
        let deadline = Instant::now() + self.settings.acquire_timeout;
        // Time left, read from the clock again only after a failed attempt.
        let mut left = self.settings.acquire_timeout;
        // Allocated only once a replica has failed this read.
        let mut tried: Vec<bool> = Vec::new();
        while let Some(index) = self.least_busy_replica(&tried) {
            // Leave the primary at least `replica_wait`.
            let wait = self
                .settings
                .replica_wait
                .min(left.saturating_sub(self.settings.replica_wait));
            if wait.is_zero() {
                break;
            }
            let member = &self.replicas[index];
            match Shared::admit_and_acquire(member.pool.shared().clone(), wait, caller).await {
                Ok(conn) => {
                    self.replica_reads.fetch_add(1, Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(err) => {
                    member.checkout_failed(&err, index, &self.name);
                    if tried.is_empty() {
                        tried = vec![false; self.replicas.len()];
                    }
                    tried[index] = true;
                    left = deadline.saturating_duration_since(Instant::now());
                }
            }
        }
        self.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            replica_set = %self.name,
            replicas = self.replicas.len(),
            "no replica takes reads; reading from the primary"
        );
        Shared::admit_and_acquire(self.primary.pool.shared().clone(), left, caller).await
    }

    /// The replica with the fewest connections in use plus callers waiting
    /// among those that take reads, are not in `tried`, and whose circuit
    /// is not open; ties go to the first after a rotating start.
    fn least_busy_replica(&self, tried: &[bool]) -> Option<usize> {
        let count = self.replicas.len();
        if count == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            let member = &self.replicas[index];
            if tried.get(index).copied().unwrap_or(false) || !member.takes_reads() {
                continue;
            }
            let status = member.pool.status();
            if status.circuit == CircuitState::Open {
                continue;
            }
            let busy = status.in_use + status.waiting;
            if best.is_none_or(|(_, least)| busy < least) {
                best = Some((index, busy));
            }
        }
        best.map(|(index, _)| index)
    }
}

impl<M: Manager> Clone for ReplicaSet<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Manager> fmt::Debug for ReplicaSet<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("name", &self.inner.name)
            .field("settings", &self.inner.settings)
            .field("status", &self.status())
            .finish()
    }
}
