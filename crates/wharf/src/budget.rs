//! A connection budget shared by several pools: per-tenant pools under one
//! total, each with a guaranteed minimum.
//!
//! Every connection a member pool opens (or takes in with `Pool::add`)
//! needs one of the budget's units, on top of the pool's own `max_size`;
//! the unit comes back when the connection is closed (any reason) or
//! detached. When the budget is spent:
//!
//! - a pool below its guarantee is owed a unit: an idle connection of a
//!   pool above its own guarantee is closed for it at once
//!   ([`CloseReason::Reclaimed`](crate::CloseReason::Reclaimed)); with none
//!   idle it queues ahead of every other request, and the next connection
//!   of a pool above its guarantee to come back is closed for it, as is
//!   the next one closed anywhere. Connections in use are never taken.
//! - a pool at or above its guarantee whose callers are waiting takes an
//!   idle connection of another pool above its guarantee the same way, or
//!   else queues first come, first served for the next unit freed; its
//!   callers wait for that within their own `acquire_timeout`.
//!
//! Lock order: a pool's lock may be held while the budget's is taken, never
//! the other way round. A pool told of a unit granted to it hears of it in
//! a task of its own, so a unit freed under any pool's lock (even the
//! receiver's) can be granted on the spot.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde::Serialize;

use crate::ConfigError;

/// A number of connections several pools draw from together, e.g. one
/// pool per tenant under the database's connection limit.
///
/// Each pool joins with [`Builder::budget`](crate::Builder::budget) and a
/// guaranteed minimum; the guarantees may add up to at most the total, and
/// what is left over goes to whichever pool needs it. Idle connections of
/// pools above their guarantee are closed to make room for a pool that
/// needs one; connections in use never are. Cheap to clone: clones are the
/// same budget. Pools hold it; it holds them weakly, and a dropped pool's
/// units come back.
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
/// // Two tenants under a server limit of 10, each sure of 3.
/// let budget = wharf::Budget::new(10);
/// let acme = wharf::Pool::builder(Numbers)
///     .name("acme")
///     .max_size(10)
///     .budget(&budget, 3)
///     .build()?;
/// let globex = wharf::Pool::builder(Numbers)
///     .name("globex")
///     .max_size(10)
///     .budget(&budget, 3)
///     .build()?;
///
/// let conn = acme.get().await?;
/// assert_eq!(budget.status().in_use, 1);
/// # drop((conn, globex));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

/// A budget's figures, from [`Budget::status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetStatus {
    /// Units in all.
    pub total: usize,
    /// Units held: connections open or opening in the member pools, and
    /// units granted to a pool and about to be used.
    pub in_use: usize,
    /// Requests for a unit queued while the budget is spent.
    pub waiting: usize,
    /// Connections closed to give their unit to another pool.
    pub reclaimed: u64,
    /// Each member pool's share, in the order they joined.
    pub pools: Vec<BudgetShare>,
}

/// One pool's share of a [`Budget`], in [`BudgetStatus::pools`] and
/// [`Metrics::budget`](crate::Metrics::budget).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetShare {
    /// The pool's name.
    pub pool: String,
    /// Its guaranteed minimum.
    pub guaranteed: usize,
    /// Units it holds.
    pub held: usize,
}

/// What the budget needs of a member pool. Implemented by the pool's
/// shared state, held weakly.
pub(crate) trait Holder: Send + Sync {
    /// Closes one of the pool's idle connections and hands its unit to
    /// member `to`, if the pool is above its guarantee and has one idle.
    fn give_up_idle(&self, to: usize) -> bool;
    /// A unit was granted to the pool for a queued request: tells it, in a
    /// task of its own (the caller may hold any pool's lock).
    fn granted(self: Arc<Self>);
}

struct Inner {
    total: usize,
    ledger: Mutex<Ledger>,
    /// Whether a request that a connection coming back to another member
    /// may yield its unit to is queued (one of a pool below its guarantee,
    /// or of a pool with callers waiting): checked by every connection
    /// coming back to a member, without the lock.
    wanted: AtomicBool,
}

#[derive(Default)]
struct Ledger {
    used: usize,
    guaranteed: usize,
    members: Vec<Option<Member>>,
    /// Requests for a unit, oldest first.
    queue: VecDeque<Request>,
    reclaimed: u64,
}

/// A member's queued request for a unit.
#[derive(Clone, Copy)]
struct Request {
    member: usize,
    /// Made for callers waiting (or below the guarantee): a connection
    /// about to go idle in a pool above its own guarantee is closed for
    /// it, so the unit does not sit idle while they wait.
    urgent: bool,
}

struct Member {
    name: String,
    guaranteed: usize,
    /// The pool's `max_size`: a guarantee above it cannot be reached, and
    /// counts only up to it (a pool resized below its guarantee must not
    /// be owed units for ever).
    max_size: usize,
    /// Units held: connections open or opening, plus `spare`.
    held: usize,
    /// Units granted or handed over and not yet turned into a connection.
    spare: usize,
    pool: Option<Weak<dyn Holder>>,
}

/// Pools to tell of units granted to them, once the budget is unlocked.
type Grants = Vec<Weak<dyn Holder>>;

impl Budget {
    /// A budget of `total` connections. A budget of 0 lets no member open
    /// anything.
    pub fn new(total: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                total,
                ledger: Mutex::new(Ledger::default()),
                wanted: AtomicBool::new(false),
            }),
        }
    }

    /// Units in all.
    pub fn total(&self) -> usize {
        self.inner.total
    }

    /// Units held, queued requests and each pool's share, right now.
    pub fn status(&self) -> BudgetStatus {
        let ledger = self.inner.ledger.lock();
        BudgetStatus {
            total: self.inner.total,
            in_use: ledger.used,
            waiting: ledger.queue.len(),
            reclaimed: ledger.reclaimed,
            pools: ledger
                .members
                .iter()
                .flatten()
                .map(|m| BudgetShare {
                    pool: m.name.clone(),
                    guaranteed: m.guaranteed,
                    held: m.held,
                })
                .collect(),
        }
    }

    /// Reserves `guaranteed` units for a new member called `name`, of
    /// `max_size` connections.
    pub(crate) fn join(
        &self,
        name: &str,
        guaranteed: usize,
        max_size: usize,
    ) -> Result<Membership, ConfigError> {
        let mut ledger = self.inner.ledger.lock();
        let promised = ledger.guaranteed + guaranteed;
        if promised > self.inner.total {
            return Err(ConfigError::GuaranteesExceedBudget {
                guaranteed: promised,
                total: self.inner.total,
            });
        }
        ledger.guaranteed = promised;
        let member = Member {
            name: name.to_owned(),
            guaranteed,
            max_size,
            held: 0,
            spare: 0,
            pool: None,
        };
        let id = match ledger.members.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                ledger.members.push(None);
                ledger.members.len() - 1
            }
        };
        ledger.members[id] = Some(member);
        Ok(Membership {
            budget: self.clone(),
            id,
        })
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("status", &self.status())
            .finish()
    }
}

/// A pool's seat in a budget; leaving (when the pool's state is dropped)
/// gives back whatever it still holds.
pub(crate) struct Membership {
    budget: Budget,
    id: usize,
}

impl Membership {
    /// Lets the budget reach the pool (weakly).
    pub(crate) fn attach(&self, pool: Weak<dyn Holder>) {
        self.with(|ledger| ledger.member(self.id).pool = Some(pool));
    }

    /// Takes a unit for a connection about to be opened: a spare one in
    /// hand, or a free one. Called under the pool's lock.
    pub(crate) fn try_take(&self) -> bool {
        let total = self.budget.inner.total;
        self.with(|ledger| {
            let used = ledger.used;
            let member = ledger.member(self.id);
            if member.spare > 0 {
                member.spare -= 1;
                return true;
            }
            if used >= total {
                return false;
            }
            member.held += 1;
            ledger.used += 1;
            true
        })
    }

    /// Takes a free unit as a spare, or else queues a request for the next
    /// one freed (`urgent` when callers wait for it). Returns whether it
    /// took one.
    pub(crate) fn reserve_or_queue(&self, urgent: bool) -> bool {
        let total = self.budget.inner.total;
        self.with(|ledger| {
            if ledger.used < total {
                ledger.used += 1;
                let member = ledger.member(self.id);
                member.held += 1;
                member.spare += 1;
                return true;
            }
            ledger.queue.push_back(Request {
                member: self.id,
                urgent,
            });
            false
        })
    }

    /// The pool was resized to `max_size`.
    pub(crate) fn resized(&self, max_size: usize) {
        self.with(|ledger| ledger.member(self.id).max_size = max_size);
    }

    /// Whether the pool holds fewer units than it is guaranteed.
    pub(crate) fn below_guarantee(&self) -> bool {
        self.with(|ledger| {
            let member = ledger.member(self.id);
            member.held < member.floor()
        })
    }

    /// Closes an idle connection of another member above its guarantee,
    /// the one furthest above first, and takes its unit as a spare.
    pub(crate) fn reclaim(&self) -> bool {
        let mut candidates: Vec<(usize, Weak<dyn Holder>)> = self.with(|ledger| {
            ledger
                .members
                .iter()
                .enumerate()
                .filter(|&(id, _)| id != self.id)
                .filter_map(|(_, m)| m.as_ref())
                .filter(|m| m.held > m.floor())
                .filter_map(|m| Some((m.held - m.floor(), m.pool.clone()?)))
                .collect()
        });
        candidates.sort_by_key(|&(excess, _)| std::cmp::Reverse(excess));
        // Outside the budget's lock: each victim takes its own pool's lock.
        candidates
            .into_iter()
            .filter_map(|(_, pool)| pool.upgrade())
            .any(|pool| pool.give_up_idle(self.id))
    }

    /// Moves one of this member's units to member `to` as a spare, if this
    /// one is above its guarantee. Called under this pool's lock, with the
    /// connection that held the unit about to be closed.
    pub(crate) fn hand_over(&self, to: usize) -> Option<String> {
        self.with(|ledger| {
            let member = ledger.member(self.id);
            if member.held <= member.floor() {
                return None;
            }
            member.held -= 1;
            let to = ledger.member(to);
            to.held += 1;
            to.spare += 1;
            let name = to.name.clone();
            ledger.reclaimed += 1;
            Some(name)
        })
    }

    /// When this pool is above its guarantee and another waits for a unit:
    /// moves the unit of a connection coming back to the oldest request of
    /// a pool below its guarantee, or, if the connection would only go
    /// idle here (no `own_waiters`), to the oldest urgent request of
    /// another pool. Returns the pool to tell and its name; the connection
    /// must then close. Called under this pool's lock.
    pub(crate) fn yield_unit(&self, own_waiters: bool) -> Option<(Weak<dyn Holder>, String)> {
        if !self.budget.inner.wanted.load(Ordering::Relaxed) {
            return None;
        }
        self.with(|ledger| {
            let member = ledger.member(self.id);
            if member.held <= member.floor() {
                return None;
            }
            let pos = ledger.neediest().or_else(|| {
                if own_waiters {
                    return None;
                }
                ledger
                    .queue
                    .iter()
                    .position(|r| r.urgent && r.member != self.id)
            })?;
            let to = ledger.queue[pos].member;
            let pool = ledger.member(to).pool.clone()?;
            ledger.queue.remove(pos);
            ledger.member(self.id).held -= 1;
            ledger.reclaimed += 1;
            let to = ledger.member(to);
            to.held += 1;
            to.spare += 1;
            Some((pool, to.name.clone()))
        })
    }

    /// A connection's unit comes back (closed or detached, or a connect
    /// that failed): to the next request, or free.
    pub(crate) fn release(&self) {
        let grants = self.with_collecting(|ledger, grants| {
            ledger.member(self.id).held -= 1;
            ledger.serve(1, grants);
        });
        notify(grants);
    }

    /// Gives back the units granted to the pool that it no longer needs.
    pub(crate) fn return_spares(&self) {
        let grants = self.with_collecting(|ledger, grants| {
            let member = ledger.member(self.id);
            let spare = std::mem::take(&mut member.spare);
            member.held -= spare;
            ledger.serve(spare, grants);
        });
        notify(grants);
    }

    /// Drops the pool's queued requests (it is closing).
    pub(crate) fn forget_requests(&self) {
        self.with(|ledger| ledger.queue.retain(|r| r.member != self.id));
    }

    /// The pool's share, for its metrics.
    pub(crate) fn share(&self) -> BudgetShare {
        self.with(|ledger| {
            let member = ledger.member(self.id);
            BudgetShare {
                pool: member.name.clone(),
                guaranteed: member.guaranteed,
                held: member.held,
            }
        })
    }

    /// Runs `f` on the ledger, then refreshes the `wanted` flag.
    fn with<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut ledger = self.budget.inner.ledger.lock();
        let out = f(&mut ledger);
        let wanted = ledger.neediest().is_some() || ledger.queue.iter().any(|r| r.urgent);
        self.budget.inner.wanted.store(wanted, Ordering::Relaxed);
        out
    }

    /// Like [`with`](Self::with), for changes that may grant units: returns
    /// the pools to tell, for [`notify`] once the lock is gone.
    fn with_collecting(&self, f: impl FnOnce(&mut Ledger, &mut Grants)) -> Grants {
        let mut grants = Vec::new();
        self.with(|ledger| f(ledger, &mut grants));
        grants
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let grants = self.with_collecting(|ledger, grants| {
            ledger.queue.retain(|r| r.member != self.id);
            let Some(member) = ledger.members[self.id].take() else {
                return;
            };
            ledger.guaranteed -= member.guaranteed;
            ledger.serve(member.held, grants);
        });
        notify(grants);
    }
}

impl Member {
    /// The guarantee as far as the pool can use it.
    fn floor(&self) -> usize {
        self.guaranteed.min(self.max_size)
    }
}

impl Ledger {
    fn member(&mut self, id: usize) -> &mut Member {
        self.members[id]
            .as_mut()
            .expect("a member stays in the ledger until its membership is dropped")
    }

    /// The queue position of the oldest request from a member below its
    /// guarantee.
    fn neediest(&self) -> Option<usize> {
        self.queue.iter().position(|r| {
            self.members[r.member]
                .as_ref()
                .is_some_and(|m| m.held < m.floor())
        })
    }

    /// Passes `units` just given back (and already taken off their
    /// holder) to queued requests, the needy ones first, or frees them.
    fn serve(&mut self, units: usize, grants: &mut Grants) {
        for _ in 0..units {
            let next = self
                .neediest()
                .or(if self.queue.is_empty() { None } else { Some(0) });
            let Some(to) = next
                .and_then(|pos| self.queue.remove(pos))
                .map(|r| r.member)
            else {
                self.used -= 1;
                continue;
            };
            let member = self.member(to);
            member.held += 1;
            member.spare += 1;
            if let Some(pool) = &member.pool {
                grants.push(pool.clone());
            }
        }
    }
}

/// Tells each pool of its grant, with no budget lock held.
pub(crate) fn notify(grants: Grants) {
    for pool in grants.into_iter().filter_map(|weak| weak.upgrade()) {
        pool.granted();
    }
}

mod member;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_resized_below_its_guarantee_is_owed_only_up_to_its_size() {
        let budget = Budget::new(4);
        let member = budget.join("a", 3, 4).unwrap();
        assert!(member.try_take());
        assert!(member.below_guarantee());
        member.resized(1);
        assert!(!member.below_guarantee(), "owed units it can never hold");
        member.resized(4);
        assert!(member.below_guarantee());
    }
}
