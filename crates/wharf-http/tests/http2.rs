//! HTTP/2 through `Http2Pool`: requests multiplexed on connections filled
//! to `per_connection` before another opens, `h2c` with prior knowledge
//! and `h2` chosen by ALPN over TLS, and a server that closes its
//! connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wharf::shared::SharedSettings;
use wharf_http::{Error, Http2Pool};

/// An `h2c` server on 127.0.0.1: each request waits for a permit of
/// `gate` (when given), then answers with its path and HTTP version.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(gate: Option<Arc<Semaphore>>) -> Server {
        Self::listen("127.0.0.1:0".parse().unwrap(), gate).await
    }

    async fn start_on(addr: SocketAddr) -> Server {
        Self::listen(addr, None).await
    }

    async fn listen(addr: SocketAddr, gate: Option<Arc<Semaphore>>) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let gate = gate.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let gate = gate.clone();
                        async move {
                            if let Some(gate) = gate {
                                gate.acquire().await.unwrap().forget();
                            }
                            let text = format!("{} {:?}", request.uri().path(), request.version());
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                        }
                    });
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(1000)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn settings(min: usize, max: usize, per: usize) -> SharedSettings {
    SharedSettings {
        min_connections: min,
        max_connections: max,
        per_connection: per,
        ..SharedSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_share_four_connections_of_fifty() {
    let gate = Arc::new(Semaphore::new(0));
    let server = Server::start(Some(gate.clone())).await;
    let http = Http2Pool::new(&server.url(), settings(1, 8, 50))
        .await
        .unwrap();
    let mut requests = Vec::new();
    for i in 0..200 {
        let http = http.clone();
        requests.push(tokio::spawn(
            async move { http.get(&format!("/r{i}")).await },
        ));
    }
    // Every request is in flight, held by the server.
    let mut waited = 0;
    while http.status().in_flight() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        waited += 1;
        assert!(
            waited < 2000,
            "requests never all in flight: {:?}",
            http.status()
        );
    }
    let loads: Vec<usize> = http
        .status()
        .connections
        .iter()
        .map(|c| c.in_flight)
        .collect();
    assert_eq!(loads, vec![50; 4]);
    assert_eq!(server.accepted(), 4, "four HTTP/2 connections");
    gate.add_permits(200);
    for (i, request) in requests.into_iter().enumerate() {
        let response = request.await.unwrap().unwrap();
        assert_eq!(
            response.body().as_ref(),
            format!("/r{i} HTTP/2.0").as_bytes()
        );
        assert_eq!(response.version(), Version::HTTP_2);
    }
    assert_eq!(http.status().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_connection_and_absolute_urls_are_checked() {
    let server = Server::start(None).await;
    let http = Http2Pool::new(&server.url(), settings(1, 4, 100))
        .await
        .unwrap();
    for i in 0..20 {
        let response = http.get(&format!("/s{i}")).await.unwrap();
        assert_eq!(
            response.body().as_ref(),
            format!("/s{i} HTTP/2.0").as_bytes()
        );
    }
    let absolute = Request::get(format!("{}/abs", server.url()))
        .body(Bytes::new())
        .unwrap();
    assert!(http.request(absolute).await.is_ok());
    let elsewhere = Request::get("http://elsewhere.invalid/x")
        .body(Bytes::new())
        .unwrap();
    assert!(matches!(
        http.request(elsewhere).await,
        Err(Error::InvalidRequest(_))
    ));
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_drops_are_replaced() {
    let server = Server::start(None).await;
    let addr = server.addr;
    let http = Http2Pool::new(&server.url(), settings(1, 2, 100))
        .await
        .unwrap();
    http.get("/before").await.unwrap();
    // The server goes away with its connections, and comes back.
    drop(server);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let server = Server::start_on(addr).await;
    let mut ok = false;
    for _ in 0..50 {
        if http.get("/after").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "no request got through after the server came back");
    assert!(http.status().replaced >= 1, "{:?}", http.status());
    drop(server);
}
