//! Unary gRPC calls per second with 256 calls in flight: one tonic
//! `Channel` against the pool with 1, 4 and 16 channels, against an
//! in-process tonic server (`grpc.health.v1.Health/Check`) on loopback
//! that allows 100 concurrent streams per connection, as many gRPC
//! servers and proxies do (`--streams N` to change it).
//! Variants are interleaved, each round starting with a different one; a
//! figure is the median over rounds.
//!
//! ```sh
//! cargo bench -p wharf-grpc --bench channels                  # 5 rounds of 2 s
//! cargo bench -p wharf-grpc --bench channels -- --rounds 3 --secs 1
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use wharf_grpc::GrpcPool;

const CONCURRENCY: usize = 256;

#[derive(Clone)]
enum Target {
    One(Channel),
    Pool(GrpcPool),
}

impl Target {
    async fn call(&self) -> bool {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match self {
            Target::One(channel) => HealthClient::new(channel.clone())
                .check(request)
                .await
                .is_ok(),
            Target::Pool(pool) => match pool.channel().await {
                Ok(channel) => HealthClient::new(channel).check(request).await.is_ok(),
                Err(_) => false,
            },
        }
    }
}

/// Calls per second over `secs` with `CONCURRENCY` callers.
async fn rate(target: &Target, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (target, done, stop) = (target.clone(), done.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if target.call().await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let _ = caller.await;
    }
    calls as f64 / elapsed
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let rounds = arg("--rounds", 5.0) as usize;
    let secs = arg("--secs", 2.0);
    let streams = arg("--streams", 100.0) as u32;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, service) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .max_concurrent_streams(Some(streams))
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let url = format!("http://{addr}");
        let one = Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut targets = vec![("one tonic Channel".to_owned(), Target::One(one))];
        for n in [1usize, 4, 16] {
            let pool = GrpcPool::builder([url.clone()])
                .min_channels(n)
                .max_channels(n)
                .streams_per_channel(CONCURRENCY.div_ceil(n))
                .build()
                .await
                .unwrap();
            targets.push((format!("pool, {n} channel(s)"), Target::Pool(pool)));
        }
        let mut results = vec![Vec::new(); targets.len()];
        for round in 0..rounds {
            for k in 0..targets.len() {
                let i = (round + k) % targets.len();
                results[i].push(rate(&targets[i].1, secs).await);
            }
        }
        println!(
            "{CONCURRENCY} calls in flight, server streams per connection {streams}, \
             {rounds} rounds of {secs} s, median calls/s; CPU: {}",
            cpu_model()
        );
        println!("| target | calls/s | vs one channel |");
        println!("|---|---:|---:|");
        let base = median(results[0].clone());
        for ((name, _), rates) in targets.iter().zip(results) {
            let m = median(rates);
            println!("| {name} | {m:.0} | {:.2} |", m / base);
        }
    });
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
