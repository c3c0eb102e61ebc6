//! An origin that is down, goes down, or stops answering: clear errors
//! within the configured limits, never a hang.

mod common;

use std::net::TcpListener as StdListener;
use std::time::Duration;

use common::{Behaviour, Origin};
use tokio::time::{timeout, Instant};
use wharf_http::{Error, HttpPool};

const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
/// Liveness bound: far above every configured limit.
const HANG: Duration = Duration::from_secs(10);

fn config() -> wharf::Config {
    let mut config = HttpPool::default_config();
    config.max_size = 2;
    config.acquire_timeout = ACQUIRE_TIMEOUT;
    config.connect_backoff = Duration::from_millis(20);
    config.connect_backoff_max = Duration::from_millis(200);
    config
}

/// An address with nothing listening.
fn dead_addr() -> std::net::SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn nothing_listening_fails_within_the_acquire_timeout() {
    let http = HttpPool::with_config(&format!("http://{}", dead_addr()), config()).unwrap();
    let started = Instant::now();
    let error = timeout(HANG, http.get("/"))
        .await
        .expect("hung")
        .unwrap_err();
    eprintln!("origin down, after {:?}: {error}", started.elapsed());
    assert!(
        matches!(error, Error::Pool(wharf::Error::Timeout { .. })),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("timed out after"), "{message}");
    assert!(
        message.to_lowercase().contains("connection refused"),
        "{message}"
    );
    assert!(message.contains("connecting to 127.0.0.1:"), "{message}");
    assert_eq!(http.pool().status().size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_going_down_and_coming_back() {
    let origin = Origin::start(Behaviour::default()).await;
    let addr = origin.addr;
    let http = HttpPool::with_config(&origin.url(), config()).unwrap();
    for _ in 0..5 {
        http.get("/").await.unwrap();
    }
    origin.stop().await;

    // Idle connections are dead, new ones refused: a clear error, in time.
    for _ in 0..3 {
        let error = timeout(HANG, http.get("/"))
            .await
            .expect("hung")
            .unwrap_err();
        eprintln!("origin stopped: {error}");
        let message = error.to_string().to_lowercase();
        assert!(
            message.contains("refused") || message.contains("closed"),
            "{message}"
        );
    }
    let status = http.pool().status();
    assert_eq!((status.size, status.in_use), (0, 0), "{status:?}");

    let origin = Origin::start_on(addr, Behaviour::default()).await;
    let back = Instant::now();
    let deadline = back + HANG;
    loop {
        match http.get("/").await {
            Ok(_) => break,
            Err(error) => {
                assert!(Instant::now() < deadline, "not back: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    eprintln!("origin back: first success after {:?}", back.elapsed());
    for _ in 0..5 {
        http.get("/").await.unwrap();
    }
    assert_eq!(origin.accepted(), 1);
}

#[tokio::test]
async fn an_origin_that_never_answers_times_out_and_its_connection_is_closed() {
    // Accepts connections (the kernel does) but never reads from them.
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let http = HttpPool::with_config(
        &format!("http://{}", listener.local_addr().unwrap()),
        config(),
    )
    .unwrap()
    .with_request_timeout(Duration::from_millis(300));
    let error = timeout(HANG, http.get("/"))
        .await
        .expect("hung")
        .unwrap_err();
    eprintln!("silent origin: {error}");
    assert!(matches!(error, Error::Timeout(_)), "{error:?}");
    assert_eq!(error.to_string(), "no complete response within 300ms");
    let status = http.pool().status();
    assert_eq!((status.size, status.in_use), (0, 0), "{status:?}");
    assert_eq!(
        http.pool().metrics().closed_for(wharf::CloseReason::Broken),
        1
    );
    drop(listener);
}
