//! Sixty-four tasks send GETs over eight keep-alive connections, like a
//! node `http.Agent({ keepAlive: true, maxSockets: 8 })`.
//!
//! ```sh
//! cargo run -p wharf-http --example http_pool                      # in-process origin
//! ORIGIN=http://127.0.0.1:8080 cargo run -p wharf-http --example http_pool
//! ```

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wharf_http::HttpPool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let origin = match std::env::var("ORIGIN") {
        Ok(origin) => origin,
        Err(_) => start_origin().await?,
    };

    let mut config = HttpPool::default_config();
    config.name = "example".into();
    config.max_size = 8; // maxSockets
    config.acquire_timeout = Duration::from_secs(2);
    let http = HttpPool::with_config(&origin, config)?.with_request_timeout(Duration::from_secs(5));

    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..64 {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let response = http.get(&format!("/task/{task}/{i}")).await?;
                if !response.status().is_success() {
                    return Err(format!("HTTP {}", response.status()).into());
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await??;
    }

    let metrics = http.pool().metrics();
    println!(
        "1280 GETs to {origin} in {:?} over {} connections ({} retried)",
        start.elapsed(),
        metrics.created,
        http.retried()
    );
    println!("{:?}", http.pool().status());
    http.pool().close().await;
    Ok(())
}

/// A minimal keep-alive origin on a free port, answering every request
/// with its path.
async fn start_origin() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let body = Bytes::from(request.uri().path().to_owned());
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    },
                );
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    eprintln!("origin: {error}");
                }
            });
        }
    });
    Ok(origin)
}
