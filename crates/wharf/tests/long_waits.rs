//! `Pool::wake_long_waits`: callers that have waited in line at least so
//! long are woken without being served, keep their place, and are served
//! as before; callers that have waited less are left asleep.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::{assert_balanced, scripted, settle};
use tokio::time::advance;

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Counted(AtomicUsize);

impl Wake for Counted {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counted {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Polls `fut` once with `waker`.
fn poll_with<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(waker))
}

#[tokio::test(start_paused = true)]
async fn callers_waiting_at_least_so_long_are_woken_and_keep_their_place() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(1)
        .validate_after(None)
        .acquire_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();

    let older = Arc::new(Counted::default());
    let older_waker = Waker::from(older.clone());
    let mut first = Box::pin(pool.get());
    assert!(poll_with(&mut first, &older_waker).is_pending());

    advance(Duration::from_millis(600)).await;
    let newer = Arc::new(Counted::default());
    let newer_waker = Waker::from(newer.clone());
    let mut second = Box::pin(pool.get());
    assert!(poll_with(&mut second, &newer_waker).is_pending());
    assert_eq!(pool.status().waiting, 2);

    // 600 ms and 0 ms in line: nobody has waited a second yet.
    assert_eq!(pool.wake_long_waits(Duration::from_secs(1)), 0);
    assert_eq!((older.count(), newer.count()), (0, 0));

    // 1.1 s and 0.5 s: only the older caller.
    advance(Duration::from_millis(500)).await;
    assert_eq!(pool.wake_long_waits(Duration::from_secs(1)), 1);
    assert_eq!((older.count(), newer.count()), (1, 0));
    assert!(
        poll_with(&mut first, &older_waker).is_pending(),
        "woken, not served"
    );
    assert_eq!(pool.status().waiting, 2, "both still in line");

    // Woken again on the next call: it is still waiting that long.
    assert_eq!(pool.wake_long_waits(Duration::from_secs(1)), 1);
    assert_eq!(older.count(), 2);

    // The returned connection goes to the older caller first, as before.
    drop(held);
    settle().await;
    assert_eq!(older.count(), 3, "woken by the hand-off");
    let conn = match poll_with(&mut first, &older_waker) {
        Poll::Ready(got) => got.unwrap(),
        Poll::Pending => panic!("the older caller was not served"),
    };
    assert!(poll_with(&mut second, &newer_waker).is_pending());
    drop(conn);
    settle().await;
    assert_eq!(newer.count(), 1);
    let conn = match poll_with(&mut second, &newer_waker) {
        Poll::Ready(got) => got.unwrap(),
        Poll::Pending => panic!("the newer caller was not served"),
    };
    drop(conn);
    assert_eq!(pool.wake_long_waits(Duration::ZERO), 0, "nobody in line");
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_woken_caller_still_times_out_at_its_own_deadline() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .validate_after(None)
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let _held = pool.get().await.unwrap();
    let waiting = tokio::spawn(pool.get());
    settle().await;
    advance(Duration::from_millis(1500)).await;
    assert_eq!(pool.wake_long_waits(Duration::from_secs(1)), 1);
    settle().await;
    assert_eq!(pool.status().waiting, 1, "still in line after the wake-up");
    advance(Duration::from_millis(600)).await;
    let err = waiting.await.unwrap().expect_err("timed out");
    assert!(matches!(err, wharf::Error::Timeout { .. }), "{err}");
}
