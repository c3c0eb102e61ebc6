//! `acquire_timeout` is kept by each caller's own wait, whatever else the
//! pool's tasks are doing: a caller times out on time even while the pool's
//! background tasks cannot run, a connection is never handed to a caller
//! whose deadline has passed, and waiting starts no task of its own.

mod common;

use std::pin::pin;
use std::time::Duration;

use common::{assert_balanced, poll_once, scripted, settle, ScriptedManager};
use tokio::runtime::{Handle, Runtime};
use tokio::time::{sleep, Instant};
use wharf::{CloseReason, Error, Manager, Pool};

fn alive_tasks() -> usize {
    Handle::current().metrics().num_alive_tasks()
}

/// A runtime that nothing drives: the tasks a pool built on it spawns (its
/// connectors, its maintenance) are never polled, which is what a starved
/// task looks like from the outside.
struct Stalled(Option<Runtime>);

impl Stalled {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self(Some(runtime))
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        // Dropped inside the test's runtime, where blocking is not allowed.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A one-connection pool whose tasks run on `stalled` (so never), holding
/// one connection made here and added idle.
async fn pool_on(stalled: &Stalled, acquire_timeout: Duration) -> Pool<ScriptedManager> {
    let (manager, _script) = ScriptedManager::new();
    let conn = manager.connect().await.unwrap();
    let pool = {
        let _on_stalled = stalled.0.as_ref().unwrap().enter();
        Pool::builder(manager)
            .max_size(1)
            .validate_after(None)
            .acquire_timeout(acquire_timeout)
            .build()
            .unwrap()
    };
    pool.add(conn).unwrap();
    pool
}

#[tokio::test(start_paused = true)]
async fn a_later_caller_with_a_shorter_timeout_times_out_first_and_on_time() {
    let (builder, _script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let _held = pool.get().await.unwrap();
    let start = Instant::now();
    let patient = tokio::spawn(pool.get_timeout(Duration::from_secs(10)));
    settle().await;
    let hasty = tokio::spawn(pool.get_timeout(Duration::from_secs(1)));
    settle().await;
    assert_eq!(pool.status().waiting, 2);

    let err = hasty.await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(
        matches!(err, Error::Timeout { waited, .. } if waited == Duration::from_secs(1)),
        "{err:?}"
    );
    assert_eq!(pool.status().waiting, 1, "the patient one still waits");

    assert!(patient.await.unwrap().is_err());
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(pool.metrics().timeouts, 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_starts_no_task() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .validate_after(None)
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    settle().await;
    let idle_tasks = alive_tasks();

    let waiter = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 1);
    assert_eq!(alive_tasks(), idle_tasks + 1, "the waiter alone");
    drop(held);
    drop(waiter.await.unwrap().unwrap());
    settle().await;
    assert_eq!(alive_tasks(), idle_tasks);
}

/// The case that got the first version of this engine reverted: a waiter's
/// deadline kept only by a pool task that did not get to run, so the
/// caller went on waiting and was served seconds late.
#[tokio::test(start_paused = true)]
async fn a_caller_times_out_on_time_while_the_pools_tasks_cannot_run() {
    let stalled = Stalled::new();
    let pool = pool_on(&stalled, Duration::from_secs(1)).await;
    let held = pool.get().await.unwrap();
    // The connection comes back long after the caller's deadline.
    let release = tokio::spawn(async move {
        sleep(Duration::from_secs(3)).await;
        drop(held);
    });

    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .expect("get() still waiting 10 s into a 1 s acquire timeout");
    let waited = start.elapsed();
    assert!(
        matches!(got, Err(Error::Timeout { .. })),
        "after {waited:?} with a 1 s acquire timeout: {got:?}"
    );
    assert_eq!(waited, Duration::from_secs(1));
    assert_eq!(pool.metrics().timeouts, 1);

    release.await.unwrap();
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.in_use, s.waiting), (1, 1, 0, 0), "{s:?}");
}

/// A caller whose task is not polled past its deadline (starved, or its
/// runtime busy) must not be handed the connection that comes back then:
/// it goes to the next caller, and the late one is told it timed out.
#[tokio::test(start_paused = true)]
async fn a_connection_returned_after_a_starved_callers_deadline_is_not_handed_to_it() {
    let stalled = Stalled::new();
    let pool = pool_on(&stalled, Duration::from_secs(1)).await;
    let held = pool.get().await.unwrap();

    let start = Instant::now();
    let mut late = pin!(pool.get());
    assert!(poll_once(&mut late).await.is_pending());
    assert_eq!(pool.status().waiting, 1);
    // Not polled again until well past its deadline.
    sleep(Duration::from_secs(2)).await;
    drop(held);
    assert_eq!(
        pool.status().idle,
        1,
        "the connection went to a caller 1 s past its deadline: {:?}",
        pool.status()
    );
    let next = pool.get_timeout(Duration::ZERO);
    let next = next.await.expect("the returned connection, idle");

    let err = late.await.expect_err("served after its deadline");
    assert!(
        matches!(err, Error::Timeout { waited, .. } if waited == start.elapsed()),
        "{err:?}"
    );
    drop(next);
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.in_use, s.waiting), (1, 1, 0, 0), "{s:?}");
}

/// Around the deadline a returned connection goes to the caller or back to
/// the pool, never lost and never counted twice: returned 1 ms before the
/// deadline it is the caller's, even when the caller's task only runs after
/// the deadline; returned at the deadline it goes back to the pool, whether
/// the caller looks before or after it comes back.
#[tokio::test(start_paused = true)]
async fn around_the_deadline_a_connection_goes_to_the_caller_or_the_pool_never_lost() {
    let ms = Duration::from_millis;
    // (returned at, caller polled again only at 2 s, served)
    for (returned_at, caller_late, served) in [
        (ms(999), true, true),
        (ms(1000), true, false),
        (ms(1000), false, false),
    ] {
        let (builder, script) = scripted();
        let pool = builder
            .max_size(1)
            .validate_after(None)
            .acquire_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let held = pool.get().await.unwrap();
        let start = Instant::now();
        let release = async move {
            tokio::time::sleep_until(start + returned_at).await;
            drop(held);
        };
        let mut caller = pin!(pool.get());
        assert!(poll_once(&mut caller).await.is_pending());
        let got = if caller_late {
            release.await;
            tokio::time::sleep_until(start + Duration::from_secs(2)).await;
            caller.await
        } else {
            // Both wake at the deadline; the caller is polled first.
            tokio::join!(biased; caller, release).0
        };
        let case = format!("returned at {returned_at:?}, caller late {caller_late}");
        assert_eq!(got.is_ok(), served, "{case}: {got:?}");
        drop(got);
        let s = pool.status();
        assert_eq!(
            (s.size, s.idle, s.in_use, s.waiting),
            (1, 1, 0, 0),
            "{case}: {s:?}"
        );
        assert_eq!(script.alive(), 1, "{case}");
        assert_eq!(pool.metrics().timeouts, u64::from(!served), "{case}");
    }
}

/// A check that took the caller past its deadline (here it hangs until
/// `validation_timeout`) ends the wait: the caller is not given the next
/// idle connection, and its check, after its deadline.
#[tokio::test(start_paused = true)]
async fn a_caller_whose_check_outlasted_its_deadline_is_not_served_another_connection() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(2)
        .validate_after(Some(Duration::from_millis(500)))
        .validation_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let both = (pool.get().await.unwrap(), pool.get().await.unwrap());
    drop(both);
    sleep(Duration::from_secs(1)).await;
    script.hang_checks(true);

    let start = Instant::now();
    let err = pool.get().await.expect_err("served after its deadline");
    assert!(
        matches!(err, Error::Timeout { waited, .. } if waited == Duration::from_secs(2)),
        "{err:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(script.checks(), 1, "a second check after the deadline");
    assert_eq!(pool.metrics().closed_for(CloseReason::FailedCheck), 1);
    assert_eq!(pool.metrics().timeouts, 1);
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.waiting), (1, 1, 0), "{s:?}");
    assert_balanced(&pool, &script);
}
