//! A budget shared by several pools: no more connections open across them
//! than its total, each pool's guarantee honoured by closing idle (never
//! busy) connections of pools above theirs, other requests served first
//! come, first served, and units back whenever a connection closes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_balanced, poll_once, scripted, settle, Script, ScriptedManager};
use tokio::time::sleep;
use wharf::{Budget, CloseReason, ConfigError, Error, Pool};

/// Two pools of `max_size` 4 on one scripted backend (so `script.alive()`
/// counts the connections of both), guaranteed `a` and `b` of `budget`.
fn tenants(
    budget: &Budget,
    a: usize,
    b: usize,
) -> (Pool<ScriptedManager>, Pool<ScriptedManager>, Arc<Script>) {
    let (manager, script) = ScriptedManager::new();
    let pool = |name: &str, guaranteed| {
        Pool::builder(manager.clone())
            .name(name)
            .max_size(4)
            .acquire_timeout(Duration::from_secs(30))
            .budget(budget, guaranteed)
            .build()
            .unwrap()
    };
    (pool("a", a), pool("b", b), script)
}

fn held(budget: &Budget) -> Vec<usize> {
    budget
        .status()
        .pools
        .iter()
        .map(|share| share.held)
        .collect()
}

async fn take(pool: &Pool<ScriptedManager>, n: usize) -> Vec<wharf::Pooled<ScriptedManager>> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(pool.get().await.unwrap());
    }
    conns
}

#[tokio::test(start_paused = true)]
async fn a_pool_below_its_guarantee_gets_an_idle_connection_of_a_pool_above_its_own() {
    let budget = Budget::new(4);
    let (a, b, script) = tenants(&budget, 2, 2);
    drop(take(&b, 4).await);
    assert_eq!((b.status().idle, held(&budget)), (4, vec![0, 4]));

    let conn = a.get().await.expect("its guarantee");
    assert_eq!(held(&budget), [1, 3]);
    assert_eq!(b.metrics().closed_for(CloseReason::Reclaimed), 1);
    assert_eq!(budget.status().reclaimed, 1);
    assert_eq!(script.alive(), 4, "never more open than the budget");
    drop(conn);
    settle().await;
    assert_eq!(budget.status().in_use, 4);
}

#[tokio::test(start_paused = true)]
async fn a_pool_above_its_guarantee_takes_an_idle_connection_of_another_above_its_own() {
    let budget = Budget::new(4);
    let (a, b, script) = tenants(&budget, 1, 1);
    drop(take(&b, 4).await);
    let first = a.get().await.unwrap();
    // At its guarantee now, with a caller waiting: b (3 > 1) gives up more.
    let second = a.get().await.expect("an idle connection of b");
    assert_eq!(held(&budget), [2, 2]);
    assert_eq!(b.metrics().closed_for(CloseReason::Reclaimed), 2);
    assert_eq!(script.alive(), 4);
    drop((first, second));
}

#[tokio::test(start_paused = true)]
async fn busy_connections_are_never_taken_and_the_guaranteed_pool_gets_the_next_one_back() {
    let budget = Budget::new(4);
    let (a, b, script) = tenants(&budget, 2, 2);
    let mut busy = take(&b, 4).await;
    let mut waiting = Box::pin(a.get());
    assert!(poll_once(&mut waiting).await.is_pending());
    settle().await;
    assert!(poll_once(&mut waiting).await.is_pending());
    assert_eq!(b.status().in_use, 4, "nothing taken from b's callers");
    assert_eq!(budget.status().waiting, 1);

    // b has a caller of its own waiting, yet the returned connection goes
    // to a: a is below its guarantee, b above its own.
    let mut b_waiter = Box::pin(b.get());
    assert!(poll_once(&mut b_waiter).await.is_pending());
    drop(busy.pop());
    let conn = waiting.await.expect("served once b gave one back");
    assert_eq!(held(&budget), [1, 3]);
    assert_eq!(b.metrics().closed_for(CloseReason::Reclaimed), 1);
    assert!(script.alive() <= 4);
    drop(busy.pop());
    b_waiter.await.expect("b's own caller next");
    drop(conn);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_pool_above_its_guarantee_gets_a_connection_another_would_leave_idle() {
    let budget = Budget::new(4);
    let (a, b, script) = tenants(&budget, 1, 1);
    let a_conn = a.get().await.unwrap();
    let mut busy = take(&b, 3).await;
    let mut waiting = Box::pin(a.get());
    assert!(poll_once(&mut waiting).await.is_pending());
    settle().await;
    assert!(poll_once(&mut waiting).await.is_pending());
    assert_eq!(budget.status().waiting, 1);

    // b's callers are done: its connections coming back would only sit
    // idle, so the first is closed for a's caller.
    drop(busy.pop());
    let conn = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("served at once, not at its acquire_timeout")
        .expect("a connection");
    assert_eq!(held(&budget), [2, 2]);
    assert_eq!(b.metrics().closed_for(CloseReason::Reclaimed), 1);
    // Nobody waits any more: b keeps the rest.
    drop(busy);
    settle().await;
    assert_eq!(b.status().idle, 2);
    assert!(script.alive() <= 4);
    drop((conn, a_conn));
}

#[tokio::test(start_paused = true)]
async fn pools_above_their_guarantee_wait_for_units_first_come_first_served() {
    let budget = Budget::new(3);
    let (manager, script) = ScriptedManager::new();
    let pools: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            Pool::builder(manager.clone())
                .name(name)
                .max_size(3)
                .budget(&budget, 1)
                .build()
                .unwrap()
        })
        .collect();
    let mut held_now: Vec<_> = Vec::new();
    for pool in &pools {
        held_now.push(pool.get().await.unwrap());
    }
    // Everyone at its guarantee and busy: a asks first, then b.
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, pool) in pools.iter().take(2).enumerate() {
        let (pool, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let conn = pool.get().await.unwrap();
            order.lock().push(i);
            conn
        }));
        settle().await;
    }
    assert_eq!(budget.status().waiting, 2);
    assert!(order.lock().is_empty());

    // c's connection closes: its unit goes to a, the next to b.
    held_now.pop().unwrap().discard();
    settle().await;
    assert_eq!(*order.lock(), [0]);
    assert_eq!(budget.status().waiting, 1);
    held_now.pop().unwrap().discard();
    settle().await;
    assert_eq!(*order.lock(), [0, 1]);
    assert_eq!(held(&budget), [2, 1, 0]);
    assert_eq!(script.alive(), 3);
    for task in tasks {
        drop(task.await.unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_times_out_while_its_pool_waits_for_the_budget_and_the_late_unit_goes_back() {
    let budget = Budget::new(2);
    let (a, b, script) = tenants(&budget, 1, 1);
    let a_conn = a.get().await.unwrap();
    let b_conn = b.get().await.unwrap();
    let started = tokio::time::Instant::now();
    let err = a.get_timeout(Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(budget.status().waiting, 1, "the request stays in line");

    // The unit freed later reaches a, which no longer needs it.
    b_conn.discard();
    settle().await;
    let status = budget.status();
    assert_eq!((status.in_use, status.waiting), (1, 0));
    assert_eq!(held(&budget), [1, 0]);
    assert_eq!(script.alive(), 1);
    drop(a_conn);
    settle().await;
    assert_balanced(&a, &script);
}

#[tokio::test(start_paused = true)]
async fn units_come_back_when_connections_reach_their_lifetime_or_idle_timeout() {
    let budget = Budget::new(4);
    let (manager, _script) = ScriptedManager::new();
    let pool = |builder: wharf::Builder<ScriptedManager>| {
        builder
            .max_size(2)
            .lifetime_jitter(0.0)
            .maintenance_interval(Duration::from_secs(1))
            .budget(&budget, 0)
            .build()
            .unwrap()
    };
    let idle = pool(
        Pool::builder(manager.clone())
            .idle_timeout(Duration::from_secs(10))
            .max_lifetime(None),
    );
    let aging = pool(
        Pool::builder(manager)
            .idle_timeout(None)
            .max_lifetime(Duration::from_secs(60)),
    );
    drop(take(&idle, 2).await);
    let held_long = take(&aging, 2).await;
    assert_eq!(budget.status().in_use, 4);

    sleep(Duration::from_secs(12)).await;
    settle().await;
    assert_eq!(idle.metrics().closed_for(CloseReason::Idle), 2);
    assert_eq!(budget.status().in_use, 2);

    // Past their lifetime while in use: closed as they come back.
    sleep(Duration::from_secs(50)).await;
    drop(held_long);
    assert_eq!(aging.metrics().closed_for(CloseReason::Lifetime), 2);
    assert_eq!(budget.status().in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_connect_discarded_or_detached_connection_gives_its_unit_back() {
    let budget = Budget::new(2);
    let (a, _b, script) = tenants(&budget, 1, 1);
    let conn = a.get().await.unwrap();
    conn.discard();
    assert_eq!(budget.status().in_use, 0);
    let conn = a.get().await.unwrap();
    let _owned = conn.detach();
    assert_eq!(budget.status().in_use, 0);

    script.refuse(true);
    assert!(a.get_timeout(Duration::from_secs(1)).await.is_err());
    settle().await;
    assert_eq!(budget.status().in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn closing_or_dropping_a_pool_gives_its_units_back_to_the_others() {
    let budget = Budget::new(4);
    let (a, b, _script) = tenants(&budget, 1, 1);
    drop(take(&a, 4).await);
    let mut waiting = Box::pin(b.get());
    assert!(poll_once(&mut waiting).await.is_pending());
    // a's four are idle: b (below its guarantee) took one already.
    let conn = waiting.await.unwrap();
    assert_eq!(held(&budget), [3, 1]);

    a.close().await;
    assert_eq!(held(&budget), [0, 1]);
    drop(a);
    settle().await;
    let status = budget.status();
    assert_eq!((status.in_use, status.pools.len()), (1, 1));
    let more = take(&b, 3).await;
    assert_eq!(budget.status().in_use, 4);
    drop((conn, more));
    drop(b);
    settle().await;
    assert_eq!(budget.status().in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn add_is_refused_when_the_budget_is_spent() {
    let budget = Budget::new(1);
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager.clone())
        .max_size(2)
        .budget(&budget, 1)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let extra = wharf::Manager::connect(&manager).await.unwrap();
    let refused = pool.add(extra).unwrap_err();
    assert_eq!(refused.reason, wharf::AddRefusal::BudgetSpent);
    drop(refused);
    drop(conn);
    assert_eq!(script.alive(), 1);
}

#[tokio::test]
async fn guarantees_above_the_total_or_above_max_size_are_refused() {
    let budget = Budget::new(5);
    let (builder, _) = scripted();
    let first = builder.max_size(4).budget(&budget, 3).build().unwrap();
    let (builder, _) = scripted();
    let err = builder.budget(&budget, 3).build().unwrap_err();
    assert!(matches!(
        err,
        ConfigError::GuaranteesExceedBudget {
            guaranteed: 6,
            total: 5
        }
    ));
    let (builder, _) = scripted();
    let err = builder
        .max_size(2)
        .budget(&budget, 2)
        .max_size(1)
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        ConfigError::GuaranteeAboveMax {
            guaranteed: 2,
            max_size: 1
        }
    ));
    // A pool that goes gives its guarantee back.
    drop(first);
    let (builder, _) = scripted();
    assert!(builder.budget(&budget, 5).build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn metrics_show_each_pools_share_of_the_budget() {
    let budget = Budget::new(3);
    let (a, b, _script) = tenants(&budget, 2, 1);
    let conn = a.get().await.unwrap();
    let share = a.metrics().budget.expect("a budgeted pool");
    assert_eq!(
        (share.pool.as_str(), share.guaranteed, share.held),
        ("a", 2, 1)
    );
    let text = a.metrics().to_prometheus();
    assert!(
        text.contains("wharf_pool_budget_held{pool=\"a\"} 1"),
        "{text}"
    );
    assert!(text.contains("wharf_pool_budget_guaranteed{pool=\"a\"} 2"));
    assert_eq!(b.metrics().budget.map(|s| s.held), Some(0));
    let (builder, _) = scripted();
    let plain = builder.build().unwrap();
    assert!(plain.metrics().budget.is_none());
    assert!(!plain.metrics().to_prometheus().contains("budget"));
    drop(conn);
}
