//! Keep-alive reuse, proven by the TCP connections the origin accepts.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Behaviour, Origin};
use wharf_http::{Error, HttpPool};

fn pool(origin: &Origin, max_size: usize) -> HttpPool {
    let mut config = HttpPool::default_config();
    config.max_size = max_size;
    config.acquire_timeout = Duration::from_secs(5);
    HttpPool::with_config(&origin.url(), config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_requests_over_a_pool_of_four_use_at_most_four_connections() {
    const REQUESTS: usize = 100;
    let origin = Origin::start(Behaviour::default()).await;
    let http = pool(&origin, 4);
    let next = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, next) = (http.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= REQUESTS {
                    return;
                }
                let response = http.get(&format!("/item/{n}?x=1")).await.unwrap();
                assert_eq!(response.status(), 200);
                let body = String::from_utf8(response.body().to_vec()).unwrap();
                assert!(
                    body.starts_with(&format!("GET /item/{n}?x=1 host={} ", origin_host(&http))),
                    "{body}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    eprintln!(
        "{REQUESTS} requests, pool of 4: origin accepted {} TCP connections; {:?}",
        origin.accepted(),
        http.pool().status()
    );
    assert_eq!(origin.requests(), REQUESTS);
    assert!(
        (1..=4).contains(&origin.accepted()),
        "{}",
        origin.accepted()
    );
    assert_eq!(http.pool().metrics().created, origin.accepted() as u64);
    let status = http.pool().status();
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
    assert_eq!(origin.open(), status.size);
    http.pool().close().await;
    common::eventually(
        || format!("{} still open", origin.open()),
        || origin.open() == 0,
    )
    .await;
}

fn origin_host(http: &HttpPool) -> String {
    http.origin().trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let origin = Origin::start(Behaviour::default()).await;
    let http = pool(&origin, 4);
    for n in 1..=20 {
        let response = http.get("/").await.unwrap();
        let body = String::from_utf8_lossy(response.body()).into_owned();
        assert!(body.contains(&format!("request={n} ")), "{body}");
    }
    assert_eq!(origin.accepted(), 1);
    assert_eq!(http.retried(), 0);
}

#[tokio::test]
async fn bodies_methods_and_absolute_urls() {
    let origin = Origin::start(Behaviour::default()).await;
    let http = pool(&origin, 1);

    let request = hyper::Request::post("/echo").body("payload").unwrap();
    let response = http.request(request).await.unwrap();
    let body = String::from_utf8_lossy(response.body()).into_owned();
    assert!(
        body.starts_with("POST /echo ") && body.ends_with("body=payload"),
        "{body}"
    );

    let absolute = format!("{}/abs?q=2", origin.url());
    let request = hyper::Request::delete(absolute.as_str())
        .body(Vec::new())
        .unwrap();
    let response = http.request(request).await.unwrap();
    let body = String::from_utf8_lossy(response.body()).into_owned();
    assert!(body.starts_with("DELETE /abs?q=2 "), "{body}");

    let elsewhere = hyper::Request::get("http://example.invalid/")
        .body("")
        .unwrap();
    let error = http.request(elsewhere).await.unwrap_err();
    assert!(matches!(error, Error::InvalidRequest(_)), "{error}");
    assert_eq!(origin.accepted(), 1);
}

#[tokio::test]
async fn a_request_saying_connection_close_is_not_kept() {
    let origin = Origin::start(Behaviour::default()).await;
    let http = pool(&origin, 1);
    let request = hyper::Request::get("/")
        .header("connection", "close")
        .body("")
        .unwrap();
    http.request(request).await.unwrap();
    assert_eq!(http.pool().status().size, 0);
    http.get("/").await.unwrap();
    assert_eq!(origin.accepted(), 2);
}
