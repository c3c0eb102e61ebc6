//! A real HTTP/1.1 origin for the tests: hyper's server on 127.0.0.1,
//! counting the TCP connections it accepts and holds.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, sleep_until, Instant};

/// How the origin treats its connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Answer the n-th request of a connection with `Connection: close`.
    pub close_after: Option<usize>,
    /// Close connections idle this long.
    pub idle_close: Option<Duration>,
    /// Never keep a connection open after a response.
    pub no_keep_alive: bool,
}

#[derive(Debug, Default)]
pub struct Counters {
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// TCP connections open now.
    pub open: AtomicUsize,
    /// Requests answered.
    pub requests: AtomicUsize,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    server: JoinHandle<()>,
}

impl Origin {
    pub async fn start(behaviour: Behaviour) -> Origin {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour).await
    }

    /// On a given address, e.g. the one of an origin that was stopped.
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> Origin {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let server = tokio::spawn(serve(listener, behaviour, counters.clone()));
        Origin {
            addr,
            counters,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every connection at once.
    pub async fn stop(self) {
        self.server.abort();
        let _ = self.server.await;
    }
}

/// Decrements `open` however the connection's task ends (aborted too).
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(listener: TcpListener, behaviour: Behaviour, counters: Arc<Counters>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        counters.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(counters.clone());
        let counters = counters.clone();
        connections.spawn(async move {
            let _guard = guard;
            serve_connection(stream, behaviour, counters).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    behaviour: Behaviour,
    counters: Arc<Counters>,
) {
    let served = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let last_active = Arc::new(Mutex::new(Instant::now()));
    let service = {
        let (served, in_flight, last_active) =
            (served.clone(), in_flight.clone(), last_active.clone());
        service_fn(move |request: Request<Incoming>| {
            let (served, in_flight, last_active, counters) = (
                served.clone(),
                in_flight.clone(),
                last_active.clone(),
                counters.clone(),
            );
            async move {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                let method = request.method().clone();
                let path = request.uri().to_string();
                let host = request
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let text = format!(
                    "{method} {path} host={host} request={n} body={}",
                    String::from_utf8_lossy(&body)
                );
                let mut response = Response::new(Full::new(Bytes::from(text)));
                if behaviour.close_after == Some(n) {
                    response
                        .headers_mut()
                        .insert(hyper::header::CONNECTION, "close".parse().unwrap());
                }
                counters.requests.fetch_add(1, Ordering::SeqCst);
                *last_active.lock().unwrap() = Instant::now();
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = http1::Builder::new()
        .keep_alive(!behaviour.no_keep_alive)
        .serve_connection(TokioIo::new(stream), service);
    let Some(idle) = behaviour.idle_close else {
        let _ = connection.await;
        return;
    };
    tokio::pin!(connection);
    loop {
        let deadline = *last_active.lock().unwrap() + idle;
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = sleep_until(deadline) => {
                let idle_since = *last_active.lock().unwrap();
                if in_flight.load(Ordering::SeqCst) == 0 && idle_since + idle <= Instant::now() {
                    // Closes at once when no request is being read or
                    // answered, as servers' keep-alive timeouts do.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                    return;
                }
            }
        }
    }
}

/// Waits up to 5 s for `condition`, then fails with `what`.
pub async fn eventually(what: impl Fn() -> String, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "{}", what());
        sleep(Duration::from_millis(20)).await;
    }
}
