//! Calls spread over channels by load: a new channel opens only when every
//! open one has `streams_per_channel` calls in flight, and streams count
//! for as long as they are read.

mod common;

use common::Server;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use wharf_grpc::GrpcPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_fill_four_channels_of_fifty() {
    let server = Server::start("127.0.0.1:0".parse().unwrap()).await;
    let pool = GrpcPool::builder([server.url()])
        .min_channels(1)
        .max_channels(8)
        .streams_per_channel(50)
        .build()
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..200 {
        let pool = pool.clone();
        calls.push(tokio::spawn(async move {
            let mut client = HealthClient::new(pool.channel().await.unwrap());
            let mut stream = client
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            // The first status arrives at once; the stream stays open.
            stream.message().await.unwrap().unwrap();
            stream
        }));
    }
    let mut streams = Vec::new();
    for call in calls {
        streams.push(call.await.unwrap());
    }
    let status = pool.status();
    assert_eq!(status.in_flight(), 200, "{status:?}");
    let loads: Vec<usize> = status.channels.iter().map(|c| c.in_flight).collect();
    assert_eq!(loads, vec![50; 4], "{status:?}");
    assert_eq!(server.accepted(), 4, "one connection per channel");
    // A stream read to its end, or dropped, gives its place back.
    drop(streams.split_off(150));
    assert_eq!(pool.status().in_flight(), 150);
    drop(streams);
    assert_eq!(pool.status().in_flight(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_the_least_loaded_channel_and_max_channels_caps_growth() {
    let server = Server::start("127.0.0.1:0".parse().unwrap()).await;
    let pool = GrpcPool::builder([server.url()])
        .min_channels(2)
        .max_channels(2)
        .streams_per_channel(1)
        .build()
        .await
        .unwrap();
    let a = pool.channel().await.unwrap();
    let b = pool.channel().await.unwrap();
    assert_ne!(a.id(), b.id(), "the second lease goes to the idle channel");
    // Both at the watermark and none may open: the least loaded anyway,
    // so the next two go one to each.
    let c = pool.channel().await.unwrap();
    let d = pool.channel().await.unwrap();
    let status = pool.status();
    assert_eq!(status.channels.len(), 2);
    assert_eq!(status.in_flight(), 4);
    assert_eq!(status.opened, 2);
    assert_ne!(c.id(), d.id(), "{status:?}");
    drop((a, c));
    let e = pool.channel().await.unwrap();
    assert_ne!(e.id(), b.id(), "the emptied channel is the least loaded");
    // The server takes a connection off its backlog in its own time.
    common::eventually("the server to accept both channels", || {
        server.accepted() >= 2
    })
    .await;
    assert_eq!(server.accepted(), 2);
    server.stop().await;
}
