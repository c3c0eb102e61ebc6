//! RELOAD: a changed configuration file goes into force without dropping
//! clients; a broken one is refused and the old configuration stays.

mod common;

use std::time::Duration;

use common::{pgbench, start, Setup, TestPooler};
use tokio_postgres::SimpleQueryMessage;
use wharf_pooler::lifecycle::ReloadError;

async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// Rewrites every `key = value` line of the pooler's ini (the harness may
/// write a key twice; the last one counts).
fn set_in_ini(pooler: &TestPooler, key: &str, value: &str) {
    let ini = std::fs::read_to_string(pooler.ini()).unwrap();
    let mut found = 0;
    let text: Vec<String> = ini
        .lines()
        .map(|line| {
            if line.split('=').next().map(str::trim) == Some(key) {
                found += 1;
                format!("{key} = {value}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(found > 0, "no {key} in\n{ini}");
    std::fs::write(pooler.ini(), text.join("\n") + "\n").unwrap();
}

fn pgbench_init(pooler: &TestPooler) {
    pgbench::init(&pooler.cluster.bin("pgbench"), pooler.cluster.port());
    // pgbench -i went straight to the server; its backend exits a moment
    // after pgbench does, and must not be counted as one of the pool's.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pooler.server_connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pgbench -i's backend did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The most server connections seen in `polls` looks 100 ms apart.
async fn peak_servers(pooler: &TestPooler, polls: usize) -> usize {
    let mut peak = 0;
    for _ in 0..polls {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(pooler.server_connections());
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_resizes_pools_without_failing_a_transaction() {
    let pooler = start(Setup {
        pgbouncer: "default_pool_size = 2",
        ..Setup::default()
    })
    .await;
    pgbench_init(&pooler);
    let bench = pgbench::spawn(
        pooler.cluster.bin("pgbench"),
        pooler.port,
        &["-c", "8", "-T", "5"],
    );
    let before = peak_servers(&pooler, 10).await;
    assert!(
        (1..=2).contains(&before),
        "{before} servers with default_pool_size = 2"
    );
    set_in_ini(&pooler, "default_pool_size", "6");
    let summary = pooler.shared.reload().await.expect("reload");
    assert_eq!(summary.resized, 1, "{summary:?}");
    let after = peak_servers(&pooler, 20).await;
    assert!(
        (3..=6).contains(&after),
        "{after} servers after default_pool_size = 6"
    );
    set_in_ini(&pooler, "default_pool_size", "3");
    pooler.shared.reload().await.expect("reload");
    let output = bench.await.expect("pgbench task");
    pgbench::assert_error_free(&output);
    assert!(
        pooler.server_connections() <= 3,
        "the pool did not shrink to 3"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_and_the_old_one_kept() {
    let pooler = start(Setup {
        pgbouncer: "default_pool_size = 2",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    set_in_ini(&pooler, "default_pool_size", "lots");
    let err = pooler
        .shared
        .reload()
        .await
        .expect_err("a broken file is refused");
    let ReloadError::Config(inner) = &err else {
        panic!("{err}");
    };
    assert_eq!(inner.file(), pooler.ini());
    assert_eq!(inner.key(), Some("default_pool_size"));
    assert!(inner.line().is_some(), "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains(&format!(
            "{}:{}: default_pool_size:",
            pooler.ini().display(),
            inner.line().unwrap_or(0)
        )),
        "{shown}"
    );
    assert_eq!(pooler.shared.config().pgbouncer.default_pool_size, 2);
    assert_eq!(value(&client, "SELECT 1").await, "1");
    let newcomer = pooler.client().await;
    assert_eq!(value(&newcomer, "SELECT 2").await, "2");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_target_applies_to_new_servers_and_spares_open_transactions() {
    let pooler = start(Setup::default()).await;
    pooler.cluster.create_database("other").unwrap();
    let client = pooler.client().await;
    let busy = pooler.client().await;
    assert_eq!(
        value(&client, "SELECT current_database()").await,
        "postgres"
    );
    busy.batch_execute("BEGIN").await.unwrap();
    assert_eq!(value(&busy, "SELECT current_database()").await, "postgres");
    let ini = std::fs::read_to_string(pooler.ini()).unwrap();
    std::fs::write(
        pooler.ini(),
        ini.replacen("dbname=postgres", "dbname=other", 1),
    )
    .unwrap();
    let summary = pooler.shared.reload().await.expect("reload");
    assert_eq!(summary.retargeted, 1, "{summary:?}");
    // The open transaction keeps its server to the end.
    assert_eq!(value(&busy, "SELECT current_database()").await, "postgres");
    busy.batch_execute("COMMIT").await.unwrap();
    // Every later transaction, of old clients too, goes to the new target.
    assert_eq!(value(&busy, "SELECT current_database()").await, "other");
    assert_eq!(value(&client, "SELECT current_database()").await, "other");
    let mut old = String::new();
    for _ in 0..50 {
        old = pooler
            .cluster
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'postgres' \
                 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .unwrap();
        if old == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(old, "0", "servers with the old target stayed open");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_timeouts_apply_to_clients_already_connected() {
    let pooler = start(Setup::default()).await;
    let watched = pooler.watched_client().await;
    watched.client.simple_query("SELECT 1").await.unwrap();
    let ini = std::fs::read_to_string(pooler.ini()).unwrap();
    std::fs::write(
        pooler.ini(),
        ini.replace(
            "[pgbouncer]\n",
            "[pgbouncer]\nidle_transaction_timeout = 0.3\n",
        ),
    )
    .unwrap();
    pooler.shared.reload().await.expect("reload");
    watched.client.batch_execute("BEGIN").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), watched.ended)
        .await
        .expect("the idle transaction is ended")
        .expect("connection task");
    let err = ended.expect_err("closed with an error");
    let db = err.as_db_error().expect("a pooler error");
    assert_eq!(
        (db.code().code(), db.message()),
        ("08P01", "idle transaction timeout")
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_keep_their_old_value() {
    let pooler = start(Setup::default()).await;
    let port = pooler.port;
    set_in_ini(&pooler, "listen_port", &(port + 1).to_string());
    let summary = pooler.shared.reload().await.expect("reload");
    assert_eq!(summary.need_restart, vec!["listen_port"]);
    assert_eq!(pooler.shared.config().pgbouncer.listen_port, port);
    let client = pooler.client().await;
    assert_eq!(value(&client, "SELECT 1").await, "1");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_server_lifetime_and_idle_timeout_apply_to_live_pools() {
    let pooler = start(Setup {
        pgbouncer: "default_pool_size = 1",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    let first = value(&client, "SELECT pg_backend_pid()").await;
    let ini = std::fs::read_to_string(pooler.ini()).unwrap();
    std::fs::write(
        pooler.ini(),
        ini.replace(
            "[pgbouncer]\n",
            "[pgbouncer]\nserver_lifetime = 0.3\nserver_idle_timeout = 0.5\n",
        ),
    )
    .unwrap();
    pooler.shared.reload().await.expect("reload");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = value(&client, "SELECT pg_backend_pid()").await;
    assert_ne!(
        first, second,
        "the old server outlived the new server_lifetime"
    );
    let mut left = usize::MAX;
    for _ in 0..40 {
        left = pooler.server_connections();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "idle servers outlived the new server_idle_timeout");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_begun_before_a_switch_to_transaction_mode_is_still_reset() {
    let pooler = start(Setup {
        pgbouncer: "pool_mode = session\ndefault_pool_size = 1",
        ..Setup::default()
    })
    .await;
    let a = pooler.client().await;
    let default = value(&a, "SHOW work_mem").await;
    a.batch_execute("SET work_mem = '77MB'").await.unwrap();
    set_in_ini(&pooler, "pool_mode", "transaction");
    pooler.shared.reload().await.expect("reload");
    // The session ends under the new mode; its server must still get the
    // session-end reset (DISCARD ALL) before anyone else has it.
    drop(a);
    let b = pooler.client().await;
    assert_eq!(value(&b, "SHOW work_mem").await, default);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_pool_mode_and_min_pool_size_apply_to_a_live_pool() {
    let pooler = start(Setup {
        pgbouncer: "pool_mode = session\ndefault_pool_size = 2",
        ..Setup::default()
    })
    .await;
    // A session-mode client keeps its server for the whole session.
    let a = pooler.client().await;
    let a_pid = value(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(pooler.server_connections(), 1);

    set_in_ini(&pooler, "pool_mode", "transaction");
    let ini = std::fs::read_to_string(pooler.ini()).unwrap();
    std::fs::write(
        pooler.ini(),
        ini.replace("[pgbouncer]\n", "[pgbouncer]\nmin_pool_size = 2\n"),
    )
    .unwrap();
    pooler.shared.reload().await.expect("reload");
    // min_pool_size opens the second server with no new client.
    let mut servers = 0;
    for _ in 0..50 {
        servers = pooler.server_connections();
        if servers == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(servers, 2, "min_pool_size = 2 after RELOAD");

    // Two new clients share the one free server: transaction pooling.
    // (In session mode the second would wait for a server.)
    let b = pooler.client().await;
    let c = pooler.client().await;
    let b_pid = value(&b, "SELECT pg_backend_pid()").await;
    let c_pid = tokio::time::timeout(Duration::from_secs(5), value(&c, "SELECT pg_backend_pid()"))
        .await
        .expect("the third client is served in transaction mode");
    assert_eq!(b_pid, c_pid);
    // The session that held its server before the change keeps it.
    assert_eq!(value(&a, "SELECT pg_backend_pid()").await, a_pid);
    assert_ne!(a_pid, b_pid);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_demands_tls_without_its_files_is_refused_and_clients_go_on() {
    let pooler = start(Setup::default()).await;
    let client = pooler.client().await;
    let mut ini = std::fs::read_to_string(pooler.ini()).unwrap();
    ini = ini.replace(
        "[pgbouncer]\n",
        "[pgbouncer]\nclient_tls_sslmode = verify-full\n",
    );
    std::fs::write(pooler.ini(), ini).unwrap();
    let err = pooler
        .shared
        .reload()
        .await
        .expect_err("TLS demanded without a certificate to offer");
    let ReloadError::Tls(inner) = &err else {
        panic!("{err}");
    };
    assert_eq!(inner.key(), "client_tls_sslmode");
    assert!(
        err.to_string()
            .contains("needs client_tls_key_file and client_tls_cert_file"),
        "{err}"
    );
    assert_eq!(
        pooler.shared.config().pgbouncer.client_tls_sslmode,
        wharf_pooler::config::SslMode::Disable,
        "the old configuration stays"
    );
    client
        .simple_query("SELECT 1")
        .await
        .expect("clients go on");
    pooler.stop().await;
}
