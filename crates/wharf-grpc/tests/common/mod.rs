//! An in-process gRPC server (tonic's `grpc.health.v1` service) on a
//! loopback port, with a count of the connections it accepted.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use wharf_grpc::GrpcPool;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub reporter: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts a server on `addr` (port 0 for a free one).
    pub async fn start(addr: SocketAddr) -> Server {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let incoming = TcpListenerStream::new(listener).map(move |conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            conn
        });
        let (reporter, service) = tonic_health::server::health_reporter();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Server {
            addr,
            accepted,
            reporter,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops it: the listener closes and open connections are told to go.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }
}

/// One unary call through the pool: the server's overall health.
pub async fn check(pool: &GrpcPool) -> Result<i32, tonic::Status> {
    let channel = pool.channel().await.map_err(|e| e.to_status())?;
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(reply.into_inner().status)
}

/// Polls `check` until it holds, for at most 20 s.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of `backend` whose live connections can be cut,
/// as a load balancer or a network fault drops them.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    links: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(backend: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().push(link);
            }
        });
        CuttingProxy {
            addr,
            links,
            accept,
        }
    }

    /// Drops every connection through the proxy (new ones still pass).
    pub fn cut(&self) -> usize {
        let links = std::mem::take(&mut *self.links.lock());
        let n = links.len();
        for link in links {
            link.abort();
        }
        n
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
