//! Hooks: user code the pool runs at points in a connection's life.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{BoxError, Builder, Manager};

/// The future an async hook returns.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

pub(crate) type AsyncHook<C> = Box<dyn for<'a> Fn(&'a mut C) -> HookFuture<'a> + Send + Sync>;
pub(crate) type CheckinHook<C> = Box<dyn Fn(&mut C) -> bool + Send + Sync>;
pub(crate) type CloseHook<C> = Box<dyn Fn(&mut C, CloseReason) + Send + Sync>;

/// Why the pool closed a connection, as passed to the `on_close` hook and
/// counted in [`Metrics::closed`](crate::Metrics::closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CloseReason {
    /// Idle longer than `idle_timeout` while the pool had more than
    /// `min_idle` idle connections, or closed by
    /// [`Pool::close_idle`](crate::Pool::close_idle).
    Idle,
    /// Older than `max_lifetime` (less its jitter).
    Lifetime,
    /// Used `max_uses` times.
    MaxUses,
    /// [`Manager::has_broken`](crate::Manager::has_broken) said so on return.
    Broken,
    /// A [`Manager::check`](crate::Manager::check) before checkout or during
    /// keepalive failed or timed out, or the `on_checkout` hook failed.
    FailedCheck,
    /// The `on_checkin` hook refused it.
    Rejected,
    /// The user called [`Pooled::discard`](crate::Pooled::discard).
    Discarded,
    /// The pool was closed.
    Closed,
    /// The pool was above its size: resized below it, or a reserve
    /// connection came back with nobody waiting.
    Resized,
    /// Turned down by the predicate of [`Pool::retain`](crate::Pool::retain).
    Removed,
    /// Idle (or just returned) in a pool above its guarantee, and closed so
    /// that its [`Budget`](crate::Budget) unit goes to another pool.
    Reclaimed,
}

impl CloseReason {
    /// Every reason, in the order used for metrics.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Idle,
        CloseReason::Lifetime,
        CloseReason::MaxUses,
        CloseReason::Broken,
        CloseReason::FailedCheck,
        CloseReason::Rejected,
        CloseReason::Discarded,
        CloseReason::Closed,
        CloseReason::Resized,
        CloseReason::Removed,
        CloseReason::Reclaimed,
    ];

    /// A short snake_case name, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::Lifetime => "lifetime",
            CloseReason::MaxUses => "max_uses",
            CloseReason::Broken => "broken",
            CloseReason::FailedCheck => "failed_check",
            CloseReason::Rejected => "rejected",
            CloseReason::Discarded => "discarded",
            CloseReason::Closed => "closed",
            CloseReason::Resized => "resized",
            CloseReason::Removed => "removed",
            CloseReason::Reclaimed => "reclaimed",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) struct Hooks<C> {
    pub(crate) on_connect: Option<AsyncHook<C>>,
    pub(crate) on_checkout: Option<AsyncHook<C>>,
    pub(crate) on_checkin: Option<CheckinHook<C>>,
    pub(crate) on_close: Option<CloseHook<C>>,
}

impl<C> Default for Hooks<C> {
    fn default() -> Self {
        Self {
            on_connect: None,
            on_checkout: None,
            on_checkin: None,
            on_close: None,
        }
    }
}

/// An async hook given as an `async fn(&mut C) -> Result<(), BoxError>` or
/// an async closure that captures nothing, for
/// [`Builder::on_connect_fn`] and [`Builder::on_checkout_fn`].
///
/// Implemented for every such function; it only exists to say, on stable
/// Rust, that the future the hook returns for a connection is `Send` and
/// lives as long as its borrow of the connection.
pub trait ConnHook<'a, C: 'a>: Fn(&'a mut C) -> <Self as ConnHook<'a, C>>::Future {
    /// The future the hook returns.
    type Future: Future<Output = Result<(), BoxError>> + Send + 'a;
}

impl<'a, C: 'a, F, Fut> ConnHook<'a, C> for F
where
    F: Fn(&'a mut C) -> Fut,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'a,
{
    type Future = Fut;
}

/// An async hook that is handed a shared state besides the connection, for
/// [`Builder::on_connect_with`] and [`Builder::on_checkout_with`]: what a
/// hook would otherwise capture (async closures that capture cannot lend
/// their captures to the future they return on stable Rust).
pub trait StateHook<'a, S: 'a, C: 'a>:
    Fn(&'a S, &'a mut C) -> <Self as StateHook<'a, S, C>>::Future
{
    /// The future the hook returns.
    type Future: Future<Output = Result<(), BoxError>> + Send + 'a;
}

impl<'a, S: 'a, C: 'a, F, Fut> StateHook<'a, S, C> for F
where
    F: Fn(&'a S, &'a mut C) -> Fut,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'a,
{
    type Future = Fut;
}

fn boxed<C, F>(hook: F) -> AsyncHook<C>
where
    C: 'static,
    F: for<'a> ConnHook<'a, C> + Send + Sync + 'static,
{
    Box::new(move |conn| Box::pin(hook(conn)))
}

fn boxed_with<C, S, F>(state: S, hook: F) -> AsyncHook<C>
where
    C: Send + 'static,
    S: Send + Sync + 'static,
    F: for<'a> StateHook<'a, S, C> + Send + Sync + 'static,
{
    let both = Arc::new((state, hook));
    Box::new(move |conn| {
        let both = both.clone();
        Box::pin(async move { (both.1)(&both.0, conn).await })
    })
}

/// Async hooks without `Box::pin` at the call site. The `AsyncFn` bounds are
/// what lets the compiler infer an async closure's argument types.
impl<M: Manager> Builder<M> {
    /// Like [`on_connect`](Self::on_connect), taking an `async fn` or an
    /// async closure that captures nothing; to share state with the hook,
    /// use [`on_connect_with`](Self::on_connect_with).
    ///
    /// ```no_run
    /// # fn demo<M: wharf::Manager<Connection = Vec<String>>>(m: M) {
    /// let builder = wharf::Pool::builder(m).on_connect_fn(async |conn| {
    ///     conn.push("SET application_name = 'api'".into());
    ///     Ok(())
    /// });
    /// # }
    /// ```
    pub fn on_connect_fn<F>(mut self, hook: F) -> Self
    where
        F: AsyncFn(&mut M::Connection) -> Result<(), BoxError>
            + for<'a> ConnHook<'a, M::Connection>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.on_connect = Some(boxed(hook));
        self
    }

    /// Like [`on_connect_fn`](Self::on_connect_fn), with `state` lent to
    /// every call.
    ///
    /// ```no_run
    /// # fn demo<M: wharf::Manager<Connection = Vec<String>>>(m: M) {
    /// let app = String::from("api");
    /// let builder = wharf::Pool::builder(m).on_connect_with(app, async |app, conn| {
    ///     conn.push(format!("SET application_name = '{app}'"));
    ///     Ok(())
    /// });
    /// # }
    /// ```
    pub fn on_connect_with<S, F>(mut self, state: S, hook: F) -> Self
    where
        S: Send + Sync + 'static,
        F: AsyncFn(&S, &mut M::Connection) -> Result<(), BoxError>
            + for<'a> StateHook<'a, S, M::Connection>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.on_connect = Some(boxed_with(state, hook));
        self
    }

    /// Like [`on_checkout`](Self::on_checkout), taking an `async fn` or an
    /// async closure that captures nothing.
    ///
    /// ```no_run
    /// # fn demo<M: wharf::Manager<Connection = Vec<String>>>(m: M) {
    /// async fn reset(conn: &mut Vec<String>) -> Result<(), wharf::BoxError> {
    ///     conn.clear();
    ///     Ok(())
    /// }
    /// let builder = wharf::Pool::builder(m).on_checkout_fn(reset);
    /// # }
    /// ```
    pub fn on_checkout_fn<F>(mut self, hook: F) -> Self
    where
        F: AsyncFn(&mut M::Connection) -> Result<(), BoxError>
            + for<'a> ConnHook<'a, M::Connection>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.on_checkout = Some(boxed(hook));
        self
    }

    /// Like [`on_checkout_fn`](Self::on_checkout_fn), with `state` lent to
    /// every call.
    pub fn on_checkout_with<S, F>(mut self, state: S, hook: F) -> Self
    where
        S: Send + Sync + 'static,
        F: AsyncFn(&S, &mut M::Connection) -> Result<(), BoxError>
            + for<'a> StateHook<'a, S, M::Connection>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.on_checkout = Some(boxed_with(state, hook));
        self
    }
}
