//! The pool's side of a shared budget: a unit taken before each connect,
//! another pool's idle connection reclaimed or a request queued when the
//! budget is spent, and units given back.

use std::sync::{Arc, Weak};

use crate::budget::{Holder, Membership};
use crate::hooks::CloseReason;
use crate::pool::Shared;
use crate::queue::{Live, State};
use crate::Manager;

impl<M: Manager> Holder for Shared<M> {
    fn give_up_idle(&self, to: usize) -> bool {
        let Some(member) = &self.budget else {
            return false;
        };
        let (live, to_name) = {
            let mut st = self.state.lock();
            if st.closed || st.idle.is_empty() {
                return false;
            }
            let Some(to_name) = member.hand_over(to) else {
                return false;
            };
            // The connection idle the longest.
            let Some(live) = st.idle.pop_front() else {
                return false;
            };
            st.size -= 1;
            (live, to_name)
        };
        self.reclaimed(live, &to_name);
        true
    }

    fn granted(self: Arc<Self>) {
        let runtime = self.runtime.clone();
        runtime.spawn(async move { self.take_grant() });
    }
}

impl<M: Manager> Shared<M> {
    /// Takes a budget unit for a connection about to be opened, under the
    /// pool's lock. Always succeeds for a pool without a budget.
    pub(crate) fn take_budget_unit(&self) -> bool {
        self.budget.as_ref().is_none_or(Membership::try_take)
    }

    /// Whether a connector that found the budget spent may have another
    /// pool's idle connection closed for it: when callers are waiting, or
    /// the pool is below its guarantee (`min_idle` alone above it must not
    /// take from others, or two pools would take turns closing each
    /// other's connections).
    pub(crate) fn may_reclaim(&self, st: &State<M::Connection>) -> bool {
        !st.waiters.is_empty()
            || self
                .budget
                .as_ref()
                .is_some_and(Membership::below_guarantee)
    }

    /// The budget is spent: closes another pool's idle connection for its
    /// unit (when `urgent`), or else takes a unit freed meanwhile, or
    /// queues for the next one. Returns whether the connector has a unit in
    /// hand and goes on; otherwise it has left the pool's connectors, and a
    /// new one starts when the unit is granted.
    pub(crate) fn budget_spent(self: &Arc<Self>, urgent: bool) -> bool {
        let Some(member) = &self.budget else {
            return true;
        };
        if urgent && member.reclaim() {
            return true;
        }
        let mut st = self.state.lock();
        if member.reserve_or_queue(urgent) {
            return true;
        }
        st.budget_queued += 1;
        st.connectors -= 1;
        tracing::debug!(pool = %self.config.name, "connection budget spent; waiting for a unit");
        false
    }

    /// A connector leaves (no more demand); the last one gives back the
    /// units granted to the pool that nothing will use.
    pub(crate) fn connector_leaves(&self, st: &mut State<M::Connection>) {
        st.connectors -= 1;
        if st.connectors == 0 {
            if let Some(member) = &self.budget {
                member.return_spares();
            }
        }
    }

    /// A unit granted for one of the pool's queued requests: a connector
    /// uses it, or it goes back if the pool no longer wants a connection.
    fn take_grant(self: &Arc<Self>) {
        let mut st = self.state.lock();
        st.budget_queued = st.budget_queued.saturating_sub(1);
        self.spawn_connectors(&mut st);
        if st.connectors == 0 {
            if let Some(member) = &self.budget {
                member.return_spares();
            }
        }
    }

    /// Gives a closed connection's unit back to the budget.
    pub(crate) fn release_budget_unit(&self) {
        if let Some(member) = &self.budget {
            member.release();
        }
    }

    /// For a connection coming back to a pool above its guarantee while
    /// another pool waits for a unit (see [`Membership::yield_unit`]): its
    /// unit, moved to that pool, which is returned (to tell) with its
    /// name. The connection must then close.
    pub(crate) fn yield_for_budget(
        &self,
        st: &State<M::Connection>,
    ) -> Option<(Weak<dyn Holder>, String)> {
        self.budget.as_ref()?.yield_unit(!st.waiters.is_empty())
    }

    /// Closes a connection whose unit went to pool `to`.
    pub(crate) fn reclaimed(&self, live: Live<M::Connection>, to: &str) {
        tracing::info!(
            pool = %self.config.name,
            conn = live.meta.id,
            to,
            "closing a connection to give its budget unit to another pool"
        );
        self.drop_conn(live, CloseReason::Reclaimed);
    }
}
