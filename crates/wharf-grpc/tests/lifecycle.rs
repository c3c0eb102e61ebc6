//! Channels come and go: idle ones close down to `min_channels`, a server
//! that is down is reported as UNAVAILABLE and its return is picked up,
//! cut connections and failed health checks get channels replaced.

mod common;

use std::time::Duration;

use common::{check, eventually, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use wharf_grpc::{Error, GrpcPool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_channels_close_down_to_min_channels() {
    let server = Server::start("127.0.0.1:0".parse().unwrap()).await;
    let pool = GrpcPool::builder([server.url()])
        .min_channels(1)
        .max_channels(4)
        .streams_per_channel(1)
        .idle_timeout(Duration::from_millis(300))
        .maintenance_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let leases = vec![
        pool.channel().await.unwrap(),
        pool.channel().await.unwrap(),
        pool.channel().await.unwrap(),
    ];
    assert_eq!(pool.status().channels.len(), 3);
    drop(leases);
    eventually("idle channels to close", || {
        pool.status().channels.len() == 1
    })
    .await;
    assert_eq!(pool.status().closed_idle, 2);
    assert_eq!(check(&pool).await.unwrap(), ServingStatus::Serving as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_unavailable_and_its_return_is_picked_up() {
    let server = Server::start("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let pool = GrpcPool::builder([server.url()])
        .min_channels(1)
        .max_channels(2)
        .connect_timeout(Duration::from_secs(2))
        .maintenance_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    assert!(check(&pool).await.is_ok());
    server.stop().await;
    // Calls on the old connections may fail first as cut off (CANCELLED,
    // UNKNOWN); once no channel can connect, the pool says UNAVAILABLE.
    let mut seen = Vec::new();
    for _ in 0..100 {
        match check(&pool).await {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                seen.push(status.code());
                break;
            }
            Err(status) => seen.push(status.code()),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.last(), Some(&tonic::Code::Unavailable), "{seen:?}");
    let server = Server::start(addr).await;
    let mut recovered = false;
    for _ in 0..200 {
        if check(&pool).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "no call got through after the server returned");
    assert!(pool.status().connect_failures + pool.status().replaced > 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_at_all_fails_channel_with_unavailable_but_not_the_build() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let pool = GrpcPool::builder([format!("http://{addr}")])
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("a pool builds while its server is down");
    let err = pool.channel().await.expect_err("nothing to connect to");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(err.to_status().code(), tonic::Code::Unavailable);
    pool.close();
    assert!(matches!(pool.channel().await, Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_replaces_the_channel() {
    let server = Server::start("127.0.0.1:0".parse().unwrap()).await;
    let pool = GrpcPool::builder([server.url()])
        .min_channels(1)
        .max_channels(2)
        .health_check("")
        .maintenance_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let first = pool.status().channels[0].id;
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    eventually("the unhealthy channel to be replaced", || {
        pool.status().replaced > 0
    })
    .await;
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    eventually("a new channel in its place", || {
        let status = pool.status();
        status.channels.len() == 1 && status.channels[0].id != first
    })
    .await;
    assert_eq!(check(&pool).await.unwrap(), ServingStatus::Serving as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused() {
    let build = |b: wharf_grpc::Builder| async move { b.build().await.unwrap_err() };
    let err = build(GrpcPool::builder(["http://127.0.0.1:1"]).max_channels(0)).await;
    assert!(matches!(err, Error::InvalidSetting(_)), "{err:?}");
    let err = build(
        GrpcPool::builder(["http://127.0.0.1:1"])
            .min_channels(5)
            .max_channels(2),
    )
    .await;
    assert!(matches!(err, Error::InvalidSetting(_)), "{err:?}");
    let err = build(GrpcPool::builder(Vec::<String>::new())).await;
    assert!(matches!(err, Error::NoEndpoint), "{err:?}");
    let err = build(GrpcPool::builder(["not a uri\n"])).await;
    assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_under_the_pool_are_replaced() {
    let server = Server::start("127.0.0.1:0".parse().unwrap()).await;
    let proxy = common::CuttingProxy::start(server.addr).await;
    let pool = GrpcPool::builder([format!("http://{}", proxy.addr)])
        .min_channels(2)
        .max_channels(2)
        .build()
        .await
        .unwrap();
    for _ in 0..4 {
        check(&pool).await.expect("a call before the cut");
    }
    assert_eq!(proxy.cut(), 2, "both channels' connections cut");
    // Each channel fails at most one call at the transport (tonic reports
    // it as UNAVAILABLE, CANCELLED or UNKNOWN depending on where the
    // connection was found dead), then calls go through on fresh
    // connections.
    let mut failures = Vec::new();
    let mut served = 0;
    for _ in 0..50 {
        match check(&pool).await {
            Ok(_) => served += 1,
            Err(status) => failures.push(status.code()),
        }
        if served == 5 {
            break;
        }
    }
    assert_eq!(served, 5, "calls failed after the cut: {failures:?}");
    assert!(failures.len() <= 2, "{failures:?}");
    assert!(server.accepted() >= 3, "no new connection was made");
    assert!(pool.status().channels.len() <= 2);
    server.stop().await;
}
