//! An origin that closes keep-alive connections: the pool recovers, every
//! request succeeds, nothing leaks.

mod common;

use std::time::Duration;

use common::{Behaviour, Origin};
use wharf::CloseReason;
use wharf_http::HttpPool;

const TASKS: usize = 8;

fn pool(origin: &Origin, max_size: usize) -> HttpPool {
    let mut config = HttpPool::default_config();
    config.max_size = max_size;
    config.acquire_timeout = Duration::from_secs(5);
    HttpPool::with_config(&origin.url(), config)
        .unwrap()
        // A liveness bound, not a speed claim: it covers waiting for one of
        // the 4 connections behind 7 other tasks, on a machine shared with
        // the rest of the suite.
        .with_request_timeout(Duration::from_secs(15))
}

/// Runs `TASKS` tasks of `per_task` GETs each, pausing `pause(i)` after the
/// i-th request; every request must succeed.
async fn load(http: &HttpPool, per_task: usize, pause: fn(usize) -> Duration) {
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let path = format!("/t{task}/{i}");
                match http.get(&path).await {
                    Ok(response) => {
                        assert_eq!(response.status(), 200);
                        let body = String::from_utf8_lossy(response.body()).into_owned();
                        assert!(body.starts_with(&format!("GET {path} ")), "{body}");
                    }
                    Err(error) => panic!("{path} failed: {error}"),
                }
                tokio::time::sleep(pause(task + i)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Everything is back in the pool, and the origin holds exactly the
/// connections the pool keeps.
async fn assert_no_leak(http: &HttpPool, origin: &Origin) {
    let status = http.pool().status();
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
    common::eventually(
        || {
            format!(
                "origin holds {} connections, pool {:?}",
                origin.open(),
                http.pool().status()
            )
        },
        || origin.open() == http.pool().status().size,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_closing_after_every_third_request() {
    let origin = Origin::start(Behaviour {
        close_after: Some(3),
        ..Behaviour::default()
    })
    .await;
    let http = pool(&origin, 4);
    load(&http, 25, |_| Duration::ZERO).await;

    let metrics = http.pool().metrics();
    eprintln!(
        "close after 3: {} requests, {} connections accepted, {} retried, {:?}",
        origin.requests(),
        origin.accepted(),
        http.retried(),
        http.pool().status()
    );
    assert_eq!(origin.requests(), TASKS * 25);
    // Each connection served at most 3 requests.
    assert!(origin.accepted() >= TASKS * 25 / 3, "{}", origin.accepted());
    assert_eq!(metrics.created, origin.accepted() as u64);
    assert!(metrics.closed_for(CloseReason::Discarded) >= (TASKS * 25 / 3) as u64 - 4);
    assert_no_leak(&http, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_closing_idle_connections() {
    const IDLE: Duration = Duration::from_millis(40);
    let origin = Origin::start(Behaviour {
        idle_close: Some(IDLE),
        ..Behaviour::default()
    })
    .await;
    let http = pool(&origin, 4);
    // Pauses around the origin's idle timeout, so that connections are
    // often closed just as they are taken again.
    load(&http, 30, |i| {
        Duration::from_millis([0, 20, 35, 40, 45, 60][i % 6])
    })
    .await;

    eprintln!(
        "idle close after {IDLE:?}: {} requests, {} connections accepted, {} retried, {:?}",
        origin.requests(),
        origin.accepted(),
        http.retried(),
        http.pool().status()
    );
    assert_eq!(origin.requests(), TASKS * 30);
    // The origin did close idle connections, and they were replaced.
    assert!(origin.accepted() > 4, "{}", origin.accepted());
    assert_no_leak(&http, &origin).await;
    // Left idle, every pooled connection is closed by the origin; a request
    // still succeeds, on a new one.
    let dead = http.pool().status().size;
    tokio::time::sleep(IDLE * 3).await;
    assert_eq!(origin.open(), 0);
    let accepted = origin.accepted();
    http.get("/after").await.unwrap();
    assert_eq!(origin.accepted(), accepted + 1);
    eprintln!(
        "after all {dead} pooled connections were closed: {:?}",
        http.pool().status()
    );
    // The rest are found closed by the keepalive check.
    assert_no_leak(&http, &origin).await;
}

#[tokio::test]
async fn origin_without_keep_alive() {
    let origin = Origin::start(Behaviour {
        no_keep_alive: true,
        ..Behaviour::default()
    })
    .await;
    let http = pool(&origin, 4);
    for _ in 0..20 {
        http.get("/").await.unwrap();
    }
    assert_eq!(origin.accepted(), 20);
    assert_eq!(http.pool().metrics().closed_for(CloseReason::Discarded), 20);
    assert_no_leak(&http, &origin).await;
}

#[tokio::test]
async fn a_pool_full_of_connections_the_origin_closed_still_serves() {
    let origin = Origin::start(Behaviour {
        idle_close: Some(Duration::from_millis(100)),
        ..Behaviour::default()
    })
    .await;
    let mut config = HttpPool::default_config();
    config.max_size = 4;
    // Nothing weeds out the closed connections before they are taken.
    config.keepalive_interval = None;
    let http = HttpPool::with_config(&origin.url(), config).unwrap();
    let held: Vec<_> = take_connections(&http, 4).await;
    drop(held);
    assert_eq!(http.pool().status().idle, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.open(), 0, "the origin closed them");

    let response = http.get("/").await.unwrap();
    assert_eq!(response.status(), 200);
    eprintln!(
        "pool of 4 closed connections: {} retried, {} accepted, {:?}",
        http.retried(),
        origin.accepted(),
        http.pool().status()
    );
    assert_eq!(http.retried(), 4);
    assert_eq!(origin.accepted(), 5);
    assert_eq!(http.pool().metrics().closed_for(CloseReason::Discarded), 4);
    assert_no_leak(&http, &origin).await;
}

/// Takes `n` connections at once, so that the pool opens `n`.
async fn take_connections(
    http: &HttpPool,
    n: usize,
) -> Vec<wharf::Pooled<wharf_http::HttpManager>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(http.pool().get().await.unwrap());
    }
    held
}
