//! Replica sets against a real primary and its streaming replica (made by
//! the test kit with `pg_basebackup -R`): the probe tells them apart and
//! does not take an idle primary's quiet for lag; reads land on the
//! replica; a write is read back on the primary within the window and on
//! the replica after it; and once the replica is stopped, reads go to the
//! primary.

mod common;

use std::time::Duration;

use common::{cluster, lifecycle, pg_config};
use tokio::time::{sleep, Instant};
use wharf::{Manager, MemberState, Role};
use wharf_postgres::{Connection, PgManager, Pool, ReplicaSet};
use wharf_testkit::PgCluster;

/// Far above the replay lag of an idle local replica: the probe's
/// measure is tested on its own.
const MAX_LAG: Duration = Duration::from_secs(30);
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const WINDOW: Duration = Duration::from_secs(2);

/// A primary with table `notes`, and its replica once it has replayed the
/// table's creation: a commit made after the base backup, so the replica's
/// last replayed commit is known (without one, a replica caught between
/// receiving and replaying some background WAL has no lag to report but
/// "unknown", which is too much).
async fn primary_and_replica() -> (PgCluster, PgCluster) {
    let primary = cluster(PgCluster::builder()).await;
    let (primary, replica) = tokio::task::spawn_blocking(move || {
        let replica = primary.replica().expect("a streaming replica");
        (primary, replica)
    })
    .await
    .expect("replica task");
    primary
        .psql(
            "postgres",
            "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)",
        )
        .expect("create the table");
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica
        .psql("postgres", "SELECT count(*) FROM notes")
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the replica never replayed the table"
        );
        sleep(Duration::from_millis(20)).await;
    }
    (primary, replica)
}

fn pool(cluster: &PgCluster, app: &str) -> Pool {
    Pool::builder(PgManager::new(pg_config(cluster, app)))
        .name(app)
        .max_size(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .fail_fast(true)
        .build()
        .expect("build the pool")
}

async fn in_recovery(conn: &Connection) -> bool {
    conn.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery()")
        .get(0)
}

async fn note(conn: &Connection, id: i32) -> Option<String> {
    conn.query_opt("SELECT body FROM notes WHERE id = $1", &[&id])
        .await
        .expect("select a note")
        .map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_tells_primary_from_replica_and_an_idle_primary_means_no_lag() {
    let (primary, replica) = primary_and_replica().await;
    let manager = PgManager::new(pg_config(&primary, "probe"));
    let mut on_primary = manager.connect().await.expect("connect to the primary");
    assert_eq!(
        manager.probe_role(&mut on_primary).await.unwrap(),
        Some(Role::Primary)
    );

    primary
        .psql("postgres", "INSERT INTO notes VALUES (1, 'replayed')")
        .unwrap();
    let manager = PgManager::new(pg_config(&replica, "probe"));
    let mut on_replica = manager.connect().await.expect("connect to the replica");
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_replica
        .query_opt("SELECT 1 FROM notes WHERE id = 1", &[])
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the replica never replayed the insert"
        );
        sleep(Duration::from_millis(20)).await;
    }
    // The last replayed commit is now 2 s old, but nothing is written
    // meanwhile, so the replica is not behind at all. (A probe may catch
    // the replica between receiving and replaying some background WAL,
    // and then rightly measure the commit's age; the age alone would
    // never say zero.)
    sleep(Duration::from_secs(2)).await;
    let mut lags = Vec::new();
    for _ in 0..5 {
        match manager.probe_role(&mut on_replica).await.unwrap() {
            Some(Role::Replica { lag }) => lags.push(lag),
            other => panic!("the replica probed as {other:?}"),
        }
        if lags.last() == Some(&Duration::ZERO) {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lags.last(), Some(&Duration::ZERO), "{lags:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_writes_are_read_back_and_a_stopped_replica_sends_reads_to_the_primary(
) {
    let (primary, replica) = primary_and_replica().await;
    let set: ReplicaSet = ReplicaSet::builder(pool(&primary, "set-primary"))
        .replica(pool(&replica, "set-replica"))
        .max_lag(MAX_LAG)
        .probe_interval(PROBE_INTERVAL)
        .read_your_writes(WINDOW)
        .build()
        .unwrap();
    // A replica fresh from its base backup may not stream yet; until it
    // does, having replayed no commit, it probes as too far behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        set.probe().await;
        let status = set.status();
        if status.replicas[0].state == MemberState::Ready {
            assert_eq!(status.primary.role, Some(Role::Primary));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never became ready: {status:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }

    for _ in 0..3 {
        let conn = set.replica().await.unwrap();
        assert!(in_recovery(&conn).await, "a read on the replica");
    }

    let conn = set.primary().await.unwrap();
    assert!(!in_recovery(&conn).await);
    conn.execute("INSERT INTO notes VALUES (7, 'mine')", &[])
        .await
        .unwrap();
    drop(conn);
    let token = set.wrote();
    let conn = set.replica_after(&token).await.unwrap();
    assert!(!in_recovery(&conn).await, "inside the window: the primary");
    assert_eq!(note(&conn, 7).await.as_deref(), Some("mine"));
    drop(conn);

    sleep(WINDOW).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn = set.replica_after(&token).await.unwrap();
        assert!(in_recovery(&conn).await, "after the window: the replica");
        if note(&conn, 7).await.as_deref() == Some("mine") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never replayed the write"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let status = set.status();
    assert_eq!(status.fresh_reads, 1);
    assert_eq!(status.primary_fallbacks, 0);

    let _replica = lifecycle(replica, PgCluster::stop).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while set.status().replicas[0].state != MemberState::Unreachable {
        assert!(
            Instant::now() < deadline,
            "the probe never noticed: {:?}",
            set.status()
        );
        sleep(PROBE_INTERVAL).await;
    }
    for _ in 0..3 {
        let conn = set.replica().await.expect("a read with the replica down");
        assert!(!in_recovery(&conn).await, "the primary serves the read");
    }
    let status = set.status();
    assert_eq!(status.primary_fallbacks, 3);
    assert!(status.replicas[0].last_error.is_some(), "{status:?}");
    set.close().await;
}
