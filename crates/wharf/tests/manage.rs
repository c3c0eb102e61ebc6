//! Managing connections by hand: `Pool::retain` closes idle connections by
//! predicate, `Pool::add` adopts connections made elsewhere.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_balanced, scripted, settle, ScriptedManager};
use tokio::time::sleep;
use wharf::{AddRefusal, CloseReason, Manager, Pool};

/// A pool of `n` idle connections, ids 1..=n.
async fn pool_of(n: usize) -> (Pool<ScriptedManager>, Arc<common::Script>) {
    let (builder, script) = scripted();
    let pool = builder.max_size(n).validate_after(None).build().unwrap();
    let held: Vec<_> = {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(pool.get().await.unwrap());
        }
        held
    };
    drop(held);
    assert_eq!(pool.status().idle, n);
    (pool, script)
}

#[tokio::test(start_paused = true)]
async fn retain_closes_the_idle_connections_turned_down_and_keeps_the_rest() {
    let (pool, script) = pool_of(4).await;
    let mut seen = Vec::new();
    let closed = pool.retain(|conn, info| {
        assert_eq!(conn.id, info.id);
        seen.push(info.id);
        info.id % 2 == 0
    });
    assert_eq!(closed, 2);
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3, 4]);
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::Removed), 2);
    assert_eq!(m.status.idle, 2);
    assert_balanced(&pool, &script);
    let ids = [pool.get().await.unwrap(), pool.get().await.unwrap()].map(|c| c.info().id);
    assert!(ids.iter().all(|id| id % 2 == 0), "{ids:?}");
}

#[tokio::test(start_paused = true)]
async fn retain_never_sees_connections_in_use() {
    let (pool, script) = pool_of(2).await;
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;
    let mut offered = Vec::new();
    let closed = pool.retain(|_, info| {
        offered.push(info.id);
        false
    });
    assert_eq!((closed, offered.len()), (1, 1));
    assert_ne!(offered[0], held_id);
    drop(held);
    assert_eq!(pool.status().idle, 1, "the connection in use came back");
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn retain_tells_how_long_each_connection_has_been_idle() {
    let (pool, _script) = pool_of(2).await;
    let older = pool.get().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    drop(older);
    sleep(Duration::from_secs(2)).await;
    let mut idle_for = Vec::new();
    pool.retain(|_, info| {
        idle_for.push(info.idle_for);
        true
    });
    idle_for.sort_unstable();
    assert_eq!(idle_for, [Duration::from_secs(2), Duration::from_secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn connections_removed_by_retain_are_replaced_for_min_idle() {
    let (builder, script) = scripted();
    let pool = builder.max_size(3).min_idle(2).build().unwrap();
    pool.ready().await.unwrap();
    assert_eq!(pool.retain(|_, _| false), 2);
    settle().await;
    assert_eq!(pool.status().idle, 2, "topped up again");
    assert_eq!(script.attempts(), 4);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_retain_predicate_loses_no_connection() {
    let (pool, script) = pool_of(3).await;
    let mut calls = 0;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        pool.retain(|_, _| {
            calls += 1;
            if calls == 2 {
                panic!("predicate failed");
            }
            false
        })
    }));
    assert!(outcome.is_err());
    let status = pool.status();
    // The first was turned down before the panic; the rest went back.
    assert_eq!((status.size, status.idle), (2, 2));
    assert_eq!(pool.metrics().closed_for(CloseReason::Removed), 1);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn an_added_connection_is_handed_out_and_counted_as_created() {
    let (builder, script) = scripted();
    let pool = builder.max_size(2).validate_after(None).build().unwrap();
    let made_elsewhere = pool.manager().connect().await.unwrap();
    let id = made_elsewhere.id;
    pool.add(made_elsewhere).unwrap();
    assert_eq!(pool.status().idle, 1);
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.id, id);
    assert_eq!(conn.info().uses, 1);
    drop(conn);
    assert_eq!(pool.metrics().created, 1);
    assert_eq!(script.attempts(), 1, "the pool opened none itself");
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_served_by_an_added_connection() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    script.hang(true);
    let waiter = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 1);
    // The hanging connect holds the only slot: make room for the adopted
    // connection, which must go to the waiter, not to the idle set.
    pool.resize(2).unwrap();
    script.hang(false);
    let made_elsewhere = pool.manager().connect().await.unwrap();
    let id = made_elsewhere.id;
    pool.add(made_elsewhere).unwrap();
    let conn = waiter.await.unwrap().unwrap();
    assert_eq!(conn.id, id);
    assert_eq!(pool.status().idle, 0);
}

#[tokio::test(start_paused = true)]
async fn adding_beyond_max_size_gives_the_connection_back() {
    let (pool, script) = pool_of(2).await;
    let extra = pool.manager().connect().await.unwrap();
    let id = extra.id;
    let refused = pool.add(extra).unwrap_err();
    assert_eq!(refused.reason, AddRefusal::Full { max_size: 2 });
    assert!(refused.to_string().contains("max_size (2)"), "{refused}");
    let extra = refused.into_inner();
    assert_eq!(extra.id, id);
    drop(extra);
    assert_eq!(pool.status().size, 2);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn adding_to_a_closed_pool_gives_the_connection_back() {
    let (builder, _script) = scripted();
    let pool = builder.build().unwrap();
    let conn = pool.manager().connect().await.unwrap();
    pool.close().await;
    let refused = pool.add(conn).unwrap_err();
    assert_eq!(refused.reason, AddRefusal::Closed);
}
