//! The manager's own error, typed, from a pool error: `Error::backend` and
//! `Pool::backend_error`.

mod common;

use std::time::Duration;

use common::{scripted, ScriptError};
use wharf::{ConnectTimeout, Error};

#[tokio::test(start_paused = true)]
async fn a_timeout_after_failed_connects_gives_the_managers_error_typed() {
    let (builder, script) = scripted();
    script.refuse(true);
    let pool = builder
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let cause: &ScriptError = pool.backend_error(&err).expect("the refusal");
    assert_eq!(cause.0, "connection refused");
    assert_eq!(err.backend::<ScriptError>(), Some(cause));
    assert!(err.connect_error().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_fail_fast_refusal_gives_the_managers_error_typed() {
    let (builder, script) = scripted();
    script.refuse(true);
    let pool = builder
        .fail_fast(true)
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // The first caller waits for the first connect to fail; later ones are
    // refused at once.
    let _ = pool.get().await;
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(pool.backend_error(&err).is_some());
}

#[tokio::test(start_paused = true)]
async fn no_backend_error_when_the_connect_timed_out_or_nothing_failed() {
    let (builder, script) = scripted();
    script.hang(true);
    let pool = builder
        .connect_timeout(Duration::from_millis(100))
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(err.backend::<ConnectTimeout>().is_some(), "{err:?}");
    assert!(pool.backend_error(&err).is_none());

    pool.close().await;
    let closed = pool.get().await.unwrap_err();
    assert!(closed.connect_error().is_none());
    assert!(pool.backend_error(&closed).is_none());
}
