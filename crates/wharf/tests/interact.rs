//! `Pool::interact`: blocking code on a pooled connection, on Tokio's
//! blocking threads.

mod common;

use std::sync::mpsc;
use std::thread;

use common::{assert_balanced, scripted};
use wharf::{CloseReason, InteractError};

#[tokio::test]
async fn the_closure_runs_on_a_blocking_thread_with_a_pooled_connection() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    // A current-thread runtime runs every task on this thread.
    let runtime_thread = thread::current().id();
    let (thread_id, conn_id) = pool
        .interact(|conn| {
            conn.dirty = true;
            (thread::current().id(), conn.id)
        })
        .await
        .unwrap();
    assert_ne!(thread_id, runtime_thread);
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.id, conn_id, "the same connection came back");
    assert!(conn.dirty, "the closure had it by `&mut`");
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test]
async fn a_panicking_closure_closes_its_connection_and_reports_the_panic() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    let err = pool
        .interact(|_conn| -> () { panic!("constraint violated") })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InteractError::Panicked(message) if message == "constraint violated"),
        "{err:?}"
    );
    assert_eq!(pool.metrics().closed_for(CloseReason::Discarded), 1);
    assert_eq!(pool.get().await.unwrap().info().id, 2, "a fresh connection");
    assert_balanced(&pool, &script);
}

#[tokio::test]
async fn a_dropped_interact_returns_its_connection_when_the_closure_ends() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    let (started_tx, started) = mpsc::channel();
    let (finish, finish_rx) = mpsc::channel::<()>();
    let interacting = tokio::spawn(pool.interact(move |conn| {
        started_tx.send(conn.id).unwrap();
        finish_rx.recv().unwrap();
    }));
    let id = tokio::task::spawn_blocking(move || started.recv().unwrap())
        .await
        .unwrap();
    interacting.abort();
    assert!(interacting.await.unwrap_err().is_cancelled());
    assert_eq!(pool.status().in_use, 1, "still in the closure's hands");

    // With one slot, this waits for exactly that connection.
    let waiter = tokio::spawn(pool.get());
    finish.send(()).unwrap();
    let conn = waiter.await.unwrap().unwrap();
    assert_eq!(conn.info().id, id);
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test]
async fn interact_reports_a_pool_error_when_no_connection_comes() {
    let (builder, _script) = scripted();
    let pool = builder.build().unwrap();
    pool.close().await;
    let err = pool.interact(|_conn| ()).await.unwrap_err();
    assert!(
        matches!(err, InteractError::Pool(wharf::Error::Closed)),
        "{err:?}"
    );
}
