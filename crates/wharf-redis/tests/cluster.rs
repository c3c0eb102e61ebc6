//! Redis Cluster through the pool, against a real 3-master cluster made by
//! the test kit: keys reach the master of their slot, a slot moved to
//! another master is followed (MOVED), and a master killed and started
//! again is picked up by the pooled connections.

use std::time::{Duration, Instant};

use wharf_redis::redis::{self, AsyncCommands};
use wharf_redis::{ClusterPool, RedisClusterManager};
use wharf_testkit::redis_cluster::RedisCluster;

async fn cluster() -> RedisCluster {
    tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .expect("a 3-master Redis Cluster")
}

/// A pool whose connections give up quickly on a node that is down (the
/// redis crate retries 16 times by default, with backoff).
fn pool(cluster: &RedisCluster) -> ClusterPool {
    let client = redis::cluster::ClusterClient::builder(cluster.urls())
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .retries(2)
        .build()
        .unwrap();
    let manager = RedisClusterManager::from_client(client);
    ClusterPool::builder(manager)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Keys held by node `i`.
fn dbsize(cluster: &mut RedisCluster, i: usize) -> usize {
    cluster
        .node(i)
        .command(&["DBSIZE"])
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_go_to_the_master_of_their_slot() {
    let mut cluster = cluster().await;
    let pool = pool(&cluster);
    let mut writers = Vec::new();
    for task in 0..4 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..75 {
                let mut conn = pool.get().await.unwrap();
                let key = format!("key:{task}:{i}");
                let () = conn.set(&key, i).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let counts: Vec<usize> = (0..3).map(|i| dbsize(&mut cluster, i)).collect();
    assert_eq!(counts.iter().sum::<usize>(), 300, "{counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every master holds keys: {counts:?}"
    );
    let mut conn = pool.get().await.unwrap();
    let value: i64 = conn.get("key:3:74").await.unwrap();
    assert_eq!(value, 74);
    assert!(pool.status().size <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_master_is_followed() {
    let mut cluster = cluster().await;
    let pool = pool(&cluster);
    let mut conn = pool.get().await.unwrap();
    let () = conn.set("warm", 1).await.unwrap();
    let slot = cluster
        .node(0)
        .command(&["CLUSTER", "KEYSLOT", "moving"])
        .unwrap();
    let ids: Vec<String> = (0..3)
        .map(|i| cluster.node(i).command(&["CLUSTER", "MYID"]).unwrap())
        .collect();
    let owner = (0..3)
        .find(|&i| {
            cluster
                .node(i)
                .command(&["CLUSTER", "COUNTKEYSINSLOT", &slot])
                .is_ok()
                && cluster.node(i).command(&["GET", "moving"]).is_ok()
        })
        .expect("the node that owns the slot answers for it");
    let target = (owner + 1) % 3;
    // The slot is empty, so it can change hands without MIGRATE: the new
    // owner first, then the others.
    for i in [target, owner, (owner + 2) % 3] {
        cluster
            .node(i)
            .command(&["CLUSTER", "SETSLOT", &slot, "NODE", &ids[target]])
            .unwrap();
    }
    // This connection still has the old map: the old owner answers MOVED.
    let () = conn.set("moving", "here").await.unwrap();
    assert_eq!(
        cluster.node(target).command(&["GET", "moving"]).unwrap(),
        "here"
    );
    assert!(
        cluster.node(owner).command(&["GET", "moving"]).is_err(),
        "MOVED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_and_started_again_is_picked_up() {
    let mut cluster = cluster().await;
    let pool = pool(&cluster);
    {
        let mut conn = pool.get().await.unwrap();
        let () = conn.set("before", 1).await.unwrap();
    }
    cluster.node(1).kill().unwrap();
    // With a master gone and no replica, the cluster refuses commands for
    // its slots (and, once the others notice, every command).
    let mut refused = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !refused {
        if let Ok(mut conn) = pool.get().await {
            for i in 0..30 {
                let set: redis::RedisResult<()> = conn.set(format!("during:{i}"), i).await;
                refused |= set.is_err();
            }
        }
    }
    assert!(refused, "no command failed with a master down");
    cluster.node(1).start_again().unwrap();
    // Kept: dropping the cluster would stop its nodes.
    let _cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_ok().unwrap();
        cluster
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ok = 0;
        if let Ok(mut conn) = pool.get().await {
            for i in 0..30 {
                let set: redis::RedisResult<()> = conn.set(format!("after:{i}"), i).await;
                ok += usize::from(set.is_ok());
            }
        }
        if ok == 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not recover: {ok}/30"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
