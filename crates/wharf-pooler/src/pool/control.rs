//! PAUSE, SUSPEND and DISABLE as the pools see them: one atomic load tells
//! a transaction whether it may take a server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// PAUSE and SUSPEND of the whole pooler, shared by every database's
/// [`DbControl`].
#[derive(Debug, Default)]
pub struct GlobalControl {
    paused: AtomicBool,
    suspended: AtomicBool,
    /// Woken on every RESUME (rare: waking every waiter is fine).
    resumed: Notify,
}

impl GlobalControl {
    /// Whether the whole pooler is paused, and whether it is suspended.
    pub fn state(&self) -> (bool, bool) {
        (
            self.paused.load(Ordering::SeqCst),
            self.suspended.load(Ordering::SeqCst),
        )
    }

    /// PAUSE (`true`) of the whole pooler, or its end.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// SUSPEND (`true`) of the whole pooler, or its end.
    pub fn set_suspended(&self, suspended: bool) {
        self.suspended.store(suspended, Ordering::SeqCst);
    }

    /// Wakes every transaction waiting for a RESUME to look again.
    pub fn wake_waiters(&self) {
        self.resumed.notify_waiters();
    }
}

/// A database's PAUSE/KILL and DISABLE state, checked by the relay with
/// one atomic load before it takes a server.
#[derive(Debug)]
pub struct DbControl {
    /// The database name clients use.
    name: String,
    paused: AtomicBool,
    disabled: AtomicBool,
    global: Arc<GlobalControl>,
}

impl DbControl {
    /// Neither paused nor disabled, under the pooler-wide `global`.
    pub fn new(name: &str, global: Arc<GlobalControl>) -> Self {
        Self {
            name: name.to_owned(),
            paused: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            global,
        }
    }

    /// The database name clients use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PAUSE or KILL (`true`) of this database, or RESUME.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// DISABLE (`true`) or ENABLE of new client logins.
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::SeqCst);
    }

    /// Whether new transactions of this database must wait (PAUSE, KILL,
    /// SUSPEND).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
            || self.global.paused.load(Ordering::SeqCst)
            || self.global.suspended.load(Ordering::SeqCst)
    }

    /// Whether this database itself was paused (not the whole pooler).
    pub fn paused_itself(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Whether new clients are refused (DISABLE).
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::SeqCst)
    }

    /// Returns once the database is not paused.
    pub async fn wait_resumed(&self) {
        // Every transaction passes here: registering with the shared
        // `Notify` takes its lock, so only a paused database does.
        if !self.is_paused() {
            return;
        }
        loop {
            let resumed = self.global.resumed.notified();
            tokio::pin!(resumed);
            // Registered before the check, so a RESUME in between is seen.
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            resumed.await;
        }
    }
}
