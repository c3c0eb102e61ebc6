//! Hooks: user code the pool runs at points in a connection's life.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::BoxError;

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
}

impl CloseReason {
    /// Every reason, in the order used for metrics.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Idle,
        CloseReason::Lifetime,
        CloseReason::MaxUses,
        CloseReason::Broken,
        CloseReason::FailedCheck,
        CloseReason::Rejected,
        CloseReason::Discarded,
        CloseReason::Closed,
        CloseReason::Resized,
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
