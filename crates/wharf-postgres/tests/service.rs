//! The example service (`examples/service`), run in-process against a
//! throwaway database and driven over real HTTP: users, orders in a
//! transaction (and their rollback), the health check across a database
//! outage, and a graceful shutdown with a request in flight.

#[path = "../examples/service/app.rs"]
mod app;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tokio_postgres::NoTls;
use wharf_postgres::Pool;
use wharf_testkit::PgCluster;

const DB: &str = "shop";

struct Service {
    addr: SocketAddr,
    pool: Pool,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Service {
    /// Triggers the graceful shutdown and waits for it, pool close included.
    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.await.unwrap().unwrap();
        assert!(self.pool.is_closed());
    }
}

/// A fresh cluster with database `shop`, the service's tables and one user,
/// Ada, with id 1; and the service listening on a free port.
async fn start() -> (PgCluster, Service) {
    let cluster = tokio::task::spawn_blocking(|| {
        let cluster = PgCluster::start()?;
        cluster.create_database(DB)?;
        Ok::<_, wharf_testkit::Error>(cluster)
    })
    .await
    .unwrap()
    .expect("start a throwaway PostgreSQL");
    let pool = app::pool(&cluster.url(DB)).unwrap();
    app::migrate(&pool).await.unwrap();
    // Twice: the schema is created only if missing.
    app::migrate(&pool).await.unwrap();
    psql(
        &cluster,
        "INSERT INTO users (name, email) VALUES ('Ada', 'ada@example.com')",
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(app::serve(listener, pool.clone(), async move {
        let _ = signal.await;
    }));
    let service = Service {
        addr,
        pool,
        shutdown: Some(shutdown),
        server,
    };
    (cluster, service)
}

fn psql(cluster: &PgCluster, sql: &str) -> String {
    cluster.psql(DB, sql).expect("psql")
}

/// One HTTP/1.1 exchange on a fresh connection; the server closes it after
/// the response, so the body is whatever follows the head.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).await?;
    let content_type = content_type
        .map(|t| format!("Content-Type: {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         {content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no HTTP response: {text:?}"),
        )
    })?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "not JSON: {head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    Ok((status, body))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    http(addr, "GET", path, None, "").await.unwrap()
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    http(
        addr,
        "POST",
        path,
        Some("application/json"),
        &body.to_string(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_requests_served() {
    let (_cluster, service) = start().await;
    let addr = service.addr;
    for _ in 0..3 {
        assert_eq!(get(addr, "/users/1").await.0, 200);
    }

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let value = |series: &str| -> f64 {
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    };
    // Migration and the three lookups at least; /health is not called here.
    assert!(value(r#"wharf_pool_acquired_total{pool="service"}"#) >= 4.0);
    assert_eq!(value(r#"wharf_pool_max_size{pool="service"}"#), 10.0);
    assert_eq!(value(r#"wharf_pool_timeouts_total{pool="service"}"#), 0.0);

    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_found_or_404() {
    let (_cluster, service) = start().await;
    let addr = service.addr;

    let (status, user) = get(addr, "/users/1").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["id"], 1);
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["email"], "ada@example.com");
    assert!(
        user["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{user}"
    );

    let (status, body) = get(addr, "/users/999").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "no user 999");

    let (status, body) = get(addr, "/users/ada").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");

    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_created_with_their_items_or_not_at_all() {
    let (cluster, service) = start().await;
    let addr = service.addr;

    let (status, created) = post_json(
        addr,
        "/orders",
        &json!({
            "user_id": 1,
            "items": [
                {"product": "tea", "quantity": 2, "price": 4.5},
                {"product": "scone", "quantity": 3, "price": 1.99},
            ],
        }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["id"].as_i64().expect("an order id");
    assert_eq!(created["total"], "14.97");
    assert_eq!(
        psql(
            &cluster,
            &format!("SELECT user_id, total FROM orders WHERE id = {order_id}")
        ),
        "1|14.97"
    );
    assert_eq!(
        psql(
            &cluster,
            &format!(
                "SELECT product, quantity, price FROM order_items \
                 WHERE order_id = {order_id} ORDER BY product"
            )
        ),
        "scone|3|1.99\ntea|2|4.50"
    );
    let counts = || {
        psql(
            &cluster,
            "SELECT (SELECT count(*) FROM orders) || '/' || (SELECT count(*) FROM order_items)",
        )
    };
    assert_eq!(counts(), "1/2");

    // Unknown user: the first INSERT fails on the foreign key.
    let (status, body) = post_json(
        addr,
        "/orders",
        &json!({"user_id": 999, "items": [{"product": "tea", "quantity": 1, "price": 4.5}]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "no user 999");
    assert_eq!(counts(), "1/2");

    // The same product twice: the order row and the first item are in when
    // the second item fails; all of it must be rolled back.
    let (status, body) = post_json(
        addr,
        "/orders",
        &json!({
            "user_id": 1,
            "items": [
                {"product": "tea", "quantity": 1, "price": 4.5},
                {"product": "tea", "quantity": 5, "price": 4.5},
            ],
        }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("once")),
        "{body}"
    );
    assert_eq!(counts(), "1/2", "a failed order left rows behind");
    // The ids the rolled-back inserts took are gone for good, but nothing
    // else: the next order still works.
    let (status, body) = post_json(
        addr,
        "/orders",
        &json!({"user_id": 1, "items": [{"product": "jam", "quantity": 1, "price": 3}]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["total"], "3.00");
    assert_eq!(counts(), "2/3");

    // Bad input never reaches the database.
    let bad: [(&str, Option<&str>, &str, u16); 8] = [
        (
            "malformed JSON",
            Some("application/json"),
            "{\"user_id\": 1,",
            400,
        ),
        ("not JSON", Some("text/plain"), "user_id=1", 415),
        (
            "no items",
            Some("application/json"),
            r#"{"user_id": 1, "items": []}"#,
            422,
        ),
        (
            "missing field",
            Some("application/json"),
            r#"{"items": []}"#,
            422,
        ),
        (
            "zero quantity",
            Some("application/json"),
            r#"{"user_id": 1, "items": [{"product": "tea", "quantity": 0, "price": 1}]}"#,
            422,
        ),
        (
            "negative price",
            Some("application/json"),
            r#"{"user_id": 1, "items": [{"product": "tea", "quantity": 1, "price": -1}]}"#,
            422,
        ),
        (
            "blank product",
            Some("application/json"),
            r#"{"user_id": 1, "items": [{"product": " ", "quantity": 1, "price": 1}]}"#,
            422,
        ),
        (
            "price as text",
            Some("application/json"),
            r#"{"user_id": 1, "items": [{"product": "tea", "quantity": 1, "price": "1"}]}"#,
            422,
        ),
    ];
    for (what, content_type, body, expected) in bad {
        let (status, answer) = http(addr, "POST", "/orders", content_type, body)
            .await
            .unwrap();
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(answer["error"].is_string(), "{what}: {answer}");
    }
    assert_eq!(counts(), "2/3");

    // No connection was kept by a failed transaction.
    let status = service.pool.status();
    assert_eq!(status.in_use, 0, "{status:?}");
    assert_eq!(service.pool.metrics().leaks, 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_down_and_back_up() {
    let (cluster, service) = start().await;
    let addr = service.addr;

    let (status, health) = get(addr, "/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["database"], "up");
    assert_eq!(health["pool"]["max_size"], 10);
    assert_eq!(health["pool"]["in_use"], 0);
    assert!(
        health["pool"]["size"].as_u64().is_some_and(|n| n >= 1),
        "{health}"
    );
    for gauge in ["idle", "waiting"] {
        assert!(health["pool"][gauge].is_u64(), "{gauge}: {health}");
    }

    let mut cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.stop().unwrap();
        cluster
    })
    .await
    .unwrap();
    let asked = Instant::now();
    let (status, health) = get(addr, "/health").await;
    let answered_in = asked.elapsed();
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["database"], "down");
    assert!(health["error"].is_string(), "{health}");
    assert!(health["pool"]["size"].is_u64(), "{health}");
    assert!(
        answered_in < Duration::from_secs(2),
        "/health took {answered_in:?} with the database down"
    );
    // Other requests are told to come back later, not left hanging.
    let (status, body) = get(addr, "/users/1").await;
    assert_eq!(status, 503, "{body}");

    cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again().unwrap();
        cluster
    })
    .await
    .unwrap();
    let back = Instant::now();
    let mut last = (0, Value::Null);
    while back.elapsed() < Duration::from_secs(10) {
        last = get(addr, "/health").await;
        if last.0 == 200 {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "service: /health answered 503 in {} ms with the database down, 200 again {} ms after it came back",
        answered_in.as_millis(),
        back.elapsed().as_millis()
    );
    assert_eq!(last.0, 200, "still unhealthy: {}", last.1);
    assert_eq!(last.1["database"], "up");
    let (status, user) = get(addr, "/users/1").await;
    assert_eq!(status, 200, "{user}");

    service.stop().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_in_flight_finish_then_closes_the_pool() {
    let (cluster, service) = start().await;
    let addr = service.addr;
    assert_eq!(get(addr, "/users/1").await.0, 200);

    // A lock that `GET /users/1` will wait on, released at our signal.
    let (locker, connection) = tokio_postgres::connect(&cluster.connection_string(DB), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move { get(addr, "/users/1").await });
    let pool = service.pool.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.status().in_use == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never took a connection"
        );
        sleep(Duration::from_millis(10)).await;
    }

    let Service {
        shutdown, server, ..
    } = service;
    shutdown.unwrap().send(()).unwrap();
    sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the request did not wait for the lock"
    );
    assert!(
        !server.is_finished(),
        "the server quit with a request in flight"
    );
    assert!(
        !pool.is_closed(),
        "the pool closed under a request in flight"
    );
    // No new connections once shutting down.
    let refused = http(addr, "GET", "/health", None, "").await;
    assert!(
        refused.is_err(),
        "served a new request while shutting down: {refused:?}"
    );

    let released = Instant::now();
    locker.batch_execute("COMMIT").await.unwrap();
    let (status, user) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["name"], "Ada");
    server.await.unwrap().unwrap();
    eprintln!(
        "service: shut down {} ms after the request in flight was let go",
        released.elapsed().as_millis()
    );
    assert!(pool.is_closed());
    let status = pool.status();
    assert_eq!((status.size, status.in_use), (0, 0), "{status:?}");
}
