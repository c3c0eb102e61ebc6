//! A pool of gRPC channels in use: 200 concurrent calls spread over
//! channels of at most 50 calls each.
//!
//! ```sh
//! cargo run -p wharf-grpc --example grpc_pool                 # serves its own health service
//! GRPC_URL=http://10.0.0.7:50051 cargo run -p wharf-grpc --example grpc_pool
//! ```

use std::time::Instant;

use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use wharf_grpc::GrpcPool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = match std::env::var("GRPC_URL") {
        Ok(url) => url,
        Err(_) => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (_reporter, service) = tonic_health::server::health_reporter();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpListenerStream::new(listener)),
            );
            format!("http://{addr}")
        }
    };
    let pool = GrpcPool::builder([url.clone()])
        .min_channels(1)
        .max_channels(8)
        .streams_per_channel(50)
        .build()
        .await?;
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..200 {
        let pool = pool.clone();
        calls.push(tokio::spawn(async move {
            let channel = pool.channel().await.map_err(|e| e.to_status())?;
            let request = HealthCheckRequest {
                service: String::new(),
            };
            HealthClient::new(channel).check(request).await
        }));
    }
    let mut ok = 0;
    for call in calls {
        if call.await?.is_ok() {
            ok += 1;
        }
    }
    let status = pool.status();
    println!(
        "{ok}/200 calls to {url} in {:?} over {} channel(s); {} opened, {} leases",
        started.elapsed(),
        status.channels.len(),
        status.opened,
        status.leases
    );
    Ok(())
}
