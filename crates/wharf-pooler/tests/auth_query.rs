//! `auth_user` / `auth_query` end to end: users who are not in
//! `auth_file` are looked up in PostgreSQL (md5 and SCRAM secrets, made
//! with `password_encryption` set accordingly) through a server connection
//! logged in as `auth_user`; an unknown user, a user without a usable
//! secret, and a lookup that cannot run all get the same exchange and the
//! same error as a wrong password.

mod common;

use std::time::Duration;

use common::wire::{self, auth_failed, current_user, refused};
use common::{start_with, Setup, TestPooler};
use wharf_testkit::PgCluster;

/// Roles on the server only (not in the auth file).
const MIA: (&str, &str) = ("mia", "mia-pw"); // md5
const SAM: (&str, &str) = ("sam", "sam-pw"); // SCRAM

/// A cluster with mia (md5 secret), sam (SCRAM secret), nopw (LOGIN, no
/// password) and looker (a superuser who may read pg_authid).
async fn cluster() -> PgCluster {
    tokio::task::spawn_blocking(|| {
        let cluster = PgCluster::start().expect("throwaway PostgreSQL");
        let sql = format!(
            "SET password_encryption = 'md5'; CREATE ROLE {} LOGIN PASSWORD '{}'; \
             SET password_encryption = 'scram-sha-256'; CREATE ROLE {} LOGIN PASSWORD '{}'; \
             CREATE ROLE nopw LOGIN; CREATE ROLE looker SUPERUSER LOGIN PASSWORD 'looker-pw';",
            MIA.0, MIA.1, SAM.0, SAM.1
        );
        cluster.psql("postgres", &sql).expect("roles created");
        let kinds = cluster
            .psql(
                "postgres",
                "SELECT rolname || ':' || left(coalesce(rolpassword, 'NULL'), 6) FROM pg_authid \
                 WHERE rolname IN ('mia', 'sam', 'nopw') ORDER BY 1",
            )
            .expect("secrets read");
        let lines: Vec<&str> = kinds.lines().collect();
        assert!(
            matches!(lines.as_slice(), [mia, "nopw:NULL", sam]
                if mia.starts_with("mia:md5") && sam.starts_with("sam:SCRAM-")),
            "the secrets are of the kinds wanted: {kinds}"
        );
        cluster
    })
    .await
    .expect("cluster task")
}

/// A pooler with `auth_type`, only postgres in the auth file, and `extra`
/// `[pgbouncer]` lines (the auth_user). Database `sock` reaches the server
/// over its trusted Unix socket, `tcp` over TCP, where it wants SCRAM.
async fn lookup_pooler(cluster: PgCluster, auth_type: &str, extra: &str) -> TestPooler {
    let databases = format!(
        "sock = host={sock} port={port} dbname=postgres\n\
         tcp = host=127.0.0.1 port={port} dbname=postgres\n",
        sock = cluster.socket_dir().display(),
        port = cluster.port(),
    );
    let pgbouncer = format!("auth_type = {auth_type}\n{extra}\n");
    start_with(
        cluster,
        Setup {
            pgbouncer: &pgbouncer,
            databases: &databases,
            ..Setup::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_scram_users_are_looked_up_through_auth_user() {
    let pooler = lookup_pooler(cluster().await, "md5", "auth_user = postgres").await;
    // md5 asks for md5, or for SCRAM when the secret is SCRAM (as PgBouncer).
    assert_eq!(wire::auth_request(pooler.port, MIA.0, "sock").await, 5);
    assert_eq!(wire::auth_request(pooler.port, SAM.0, "sock").await, 10);
    for (user, password) in [MIA, SAM] {
        let client = pooler
            .login(user, password, "sock")
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(current_user(&client).await, user);
        assert_eq!(
            refused(pooler.login(user, "wrong", "sock").await),
            auth_failed(user)
        );
    }
    // psql (libpq) too.
    let conninfo = format!("host=127.0.0.1 port={} user=sam dbname=sock", pooler.port);
    let bin = pooler.cluster.bin("psql");
    let out = tokio::task::block_in_place(|| {
        wire::psql(&bin, &conninfo, SAM.1, &[], "SELECT current_user")
    });
    assert_eq!(wire::psql_ok(&out), SAM.0);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_look_like_wrong_passwords() {
    let pooler = lookup_pooler(cluster().await, "scram-sha-256", "auth_user = postgres").await;
    // A wrong password for sam, a user PostgreSQL does not know, one with
    // no password, one whose md5 secret SCRAM cannot use: the same SCRAM
    // exchange, then the same error.
    for (user, password) in [
        (SAM.0, "wrong"),
        ("ghost", "anything"),
        ("nopw", "anything"),
        (MIA.0, MIA.1),
    ] {
        assert_eq!(
            wire::auth_request(pooler.port, user, "sock").await,
            10,
            "{user} is asked for SCRAM"
        );
        assert_eq!(
            refused(pooler.login(user, password, "sock").await),
            auth_failed(user),
            "{user}"
        );
    }
    // Again, answered from the cache this time: still the same.
    assert_eq!(
        refused(pooler.login("ghost", "anything", "sock").await),
        auth_failed("ghost")
    );
    let sam = pooler.login(SAM.0, SAM.1, "sock").await.expect("sam");
    assert_eq!(current_user(&sam).await, SAM.0);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_is_seen_after_one_failed_login() {
    let pooler = lookup_pooler(cluster().await, "md5", "auth_user = postgres").await;
    let sam = pooler.login(SAM.0, SAM.1, "sock").await.expect("sam");
    drop(sam);
    tokio::task::block_in_place(|| {
        pooler
            .cluster
            .psql("postgres", "ALTER ROLE sam PASSWORD 'sam-new'")
            .expect("password changed")
    });
    // The cached secret is the old one: the new password fails once, and
    // that failure drops the cache entry.
    assert_eq!(
        refused(pooler.login(SAM.0, "sam-new", "sock").await),
        auth_failed(SAM.0)
    );
    let sam = pooler
        .login(SAM.0, "sam-new", "sock")
        .await
        .expect("new password");
    assert_eq!(current_user(&sam).await, SAM.0);
    assert_eq!(
        refused(pooler.login(SAM.0, SAM.1, "sock").await),
        auth_failed(SAM.0)
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_user_missing_from_auth_file_logs_in_without_a_password() {
    // looker is not in the auth file: over the trusted Unix socket it needs
    // no password, over TCP the server wants one and every lookup fails.
    let pooler = lookup_pooler(cluster().await, "scram-sha-256", "auth_user = looker").await;
    let sam = pooler
        .login(SAM.0, SAM.1, "sock")
        .await
        .expect("looked up over the Unix socket");
    assert_eq!(current_user(&sam).await, SAM.0);
    for (user, password) in [(SAM.0, SAM.1), ("ghost", "anything")] {
        assert_eq!(
            wire::auth_request(pooler.port, user, "tcp").await,
            10,
            "{user}"
        );
        let login = tokio::time::timeout(
            Duration::from_secs(30),
            pooler.connect(user, password, "tcp"),
        )
        .await
        .expect("a failed lookup does not hang the login");
        assert_eq!(refused(login), auth_failed(user), "{user} on tcp");
    }
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looked_up_scram_user_reaches_a_scram_server_by_pass_through() {
    // `tcp` reaches the server over TCP, where it wants SCRAM: the lookup
    // runs as postgres (password from the auth file), and sam's own
    // server login uses the key its SCRAM login revealed.
    let pooler = lookup_pooler(cluster().await, "scram-sha-256", "auth_user = postgres").await;
    let sam = pooler
        .login(SAM.0, SAM.1, "tcp")
        .await
        .expect("sam through a SCRAM server");
    assert_eq!(current_user(&sam).await, SAM.0);
    let server_side = tokio::task::block_in_place(|| {
        pooler.cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'sam' AND client_addr IS NOT NULL",
        )
    })
    .expect("pg_stat_activity");
    assert_eq!(server_side, "1", "sam's server connection is over TCP");
    pooler.stop().await;
}
