//! SQL-level `PREPARE`, `EXECUTE` and `DEALLOCATE` in transaction mode:
//! the statement follows the client from server to server, every answer
//! and error is PostgreSQL's own, and no client reaches another's.

mod common;

use common::wire::{exchange, login_trusted, message, query, Replies};
use common::{start, Setup, TestPooler};
use tokio::net::TcpStream;

async fn pooler(extra: &str) -> TestPooler {
    let pgbouncer = format!("auth_type = trust\n{extra}\n");
    start(Setup {
        pgbouncer: &pgbouncer,
        ..Setup::default()
    })
    .await
}

async fn client(pooler: &TestPooler) -> TcpStream {
    login_trusted(pooler.port, "postgres", "postgres").await
}

async fn sql(stream: &mut TcpStream, text: &str) -> Replies {
    exchange(stream, &query(text), 1).await
}

/// Parse of `text` as `statement`, Bind, Execute and Sync.
fn extended(statement: &str, text: &str) -> Vec<u8> {
    let mut parse = format!("{statement}\0{text}\0").into_bytes();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = format!("\0{statement}\0").into_bytes();
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut batch = message(b'P', &parse);
    batch.extend(message(b'B', &bind));
    batch.extend(message(b'E', b"\0\0\0\0\0"));
    batch.extend(message(b'S', b""));
    batch
}

fn error_codes(replies: &Replies) -> Vec<&str> {
    replies
        .errors
        .iter()
        .map(|(code, _)| code.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_and_execute_follow_the_client_to_another_server() {
    let pooler = pooler("default_pool_size = 2").await;
    let mut a = client(&pooler).await;
    let prepared = sql(&mut a, "PREPARE add1 (int) AS SELECT $1 + 1").await;
    assert_eq!(prepared.completions, ["PREPARE"], "{prepared:?}");
    let first = sql(&mut a, "EXECUTE add1(41)").await;
    assert_eq!(
        (first.rows.as_slice(), first.tags.as_str()),
        (&["42".to_string()][..], "TDCZ")
    );
    let pid = sql(&mut a, "SELECT pg_backend_pid()").await.rows;
    // Another client holds that server: the next transaction runs on one
    // that has never seen the statement.
    let other = pooler.client().await;
    other.batch_execute("BEGIN").await.unwrap();
    let moved = sql(&mut a, "BEGIN; SELECT pg_backend_pid()").await;
    assert_ne!(moved.rows, pid, "ran on another server");
    let executed = sql(&mut a, " execute ADD1 ( 1 ) ; ").await;
    assert_eq!(
        (executed.rows.as_slice(), executed.completions.as_slice()),
        (&["2".to_string()][..], &["SELECT 1".to_string()][..]),
        "the PREPARE the pooler added is not seen: {executed:?}"
    );
    assert_eq!(sql(&mut a, "COMMIT").await.completions, ["COMMIT"]);
    other.batch_execute("COMMIT").await.unwrap();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_postgresqls_own_and_names_go_as_they_would() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut a = client(&pooler).await;
    let unknown = sql(&mut a, "EXECUTE nope").await;
    assert_eq!(
        unknown.errors,
        [(
            "26000".to_string(),
            "prepared statement \"nope\" does not exist".to_string()
        )]
    );
    sql(&mut a, "PREPARE p AS SELECT 1").await;
    let again = sql(&mut a, "PREPARE p AS SELECT 2").await;
    assert_eq!(
        again.errors,
        [(
            "42P05".to_string(),
            "prepared statement \"p\" already exists".to_string()
        )]
    );
    assert_eq!(sql(&mut a, "EXECUTE p").await.rows, ["1"]);
    // A PREPARE that fails keeps no name.
    let bad = sql(&mut a, "PREPARE q AS SELECT * FROM missing_table").await;
    assert_eq!(error_codes(&bad), ["42P01"]);
    assert_eq!(error_codes(&sql(&mut a, "EXECUTE q").await), ["26000"]);
    // Inside a failed transaction, as PostgreSQL says.
    let failed = sql(&mut a, "BEGIN; SELECT 1/0").await;
    assert_eq!(error_codes(&failed), ["22012"]);
    assert_eq!(
        error_codes(&sql(&mut a, "PREPARE r AS SELECT 3").await),
        ["25P02"]
    );
    assert_eq!(error_codes(&sql(&mut a, "DEALLOCATE p").await), ["25P02"]);
    sql(&mut a, "ROLLBACK").await;
    assert_eq!(error_codes(&sql(&mut a, "EXECUTE r").await), ["26000"]);
    assert_eq!(sql(&mut a, "EXECUTE p").await.rows, ["1"], "p survived");
    // DEALLOCATE forgets the client's name only.
    let gone = sql(&mut a, "DEALLOCATE PREPARE p").await;
    assert_eq!(gone.completions, ["DEALLOCATE"], "{gone:?}");
    assert_eq!(error_codes(&sql(&mut a, "EXECUTE p").await), ["26000"]);
    assert_eq!(error_codes(&sql(&mut a, "DEALLOCATE p").await), ["26000"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_a_statement_but_not_its_names() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut a = client(&pooler).await;
    let mut b = client(&pooler).await;
    sql(&mut a, "PREPARE s AS SELECT 7").await;
    assert_eq!(sql(&mut a, "EXECUTE s").await.rows, ["7"]);
    // The one server has the statement: b's PREPARE is checked on it
    // without touching it, and answers as a plain PREPARE does.
    let shared = sql(&mut b, "PREPARE t AS SELECT 7").await;
    assert_eq!(shared.completions, ["PREPARE"], "{shared:?}");
    assert!(shared.errors.is_empty());
    assert_eq!(error_codes(&sql(&mut b, "EXECUTE s").await), ["26000"]);
    sql(&mut a, "DEALLOCATE s").await;
    assert_eq!(sql(&mut b, "EXECUTE t").await.rows, ["7"]);
    // The server's names are out of reach, and so is the pooler's check.
    let names = sql(
        &mut b,
        "SELECT string_agg(name, ',' ORDER BY name) FROM pg_prepared_statements",
    )
    .await;
    let server_name = names.rows[0].clone();
    assert!(server_name.starts_with("wharf_"), "{names:?}");
    for text in [
        format!("EXECUTE {server_name}"),
        format!("DEALLOCATE {server_name}"),
        "EXECUTE wharf_check".to_string(),
        format!("SELECT 1; EXECUTE {server_name}"),
        format!("SELECT 1; DEALLOCATE PREPARE \"{server_name}\""),
        format!("SELECT 1; EXECUTE U&\"{server_name}\""),
    ] {
        let refused = sql(&mut b, &text).await;
        assert_eq!(error_codes(&refused), ["26000"], "{text}: {refused:?}");
    }
    assert_eq!(sql(&mut b, "EXECUTE t").await.rows, ["7"]);
    // Nor by the extended protocol: a Parse's text is guarded as a
    // query's is, whether the Parse names its statement or not.
    for (statement, text) in [
        ("", format!("EXECUTE {server_name}")),
        ("mine", format!("EXECUTE {server_name}")),
        ("", format!("DEALLOCATE {server_name}")),
        ("", format!("EXECUTE U&\"{server_name}\"")),
        ("", format!("EXECUTE U&\"\\0077{}\"", &server_name[1..])),
    ] {
        let refused = exchange(&mut b, &extended(statement, &text), 1).await;
        assert_eq!(error_codes(&refused), ["26000"], "{text}: {refused:?}");
    }
    assert_eq!(sql(&mut b, "EXECUTE t").await.rows, ["7"]);
    assert_eq!(sql(&mut a, "PREPARE s AS SELECT 7").await.errors, []);
    assert_eq!(sql(&mut a, "EXECUTE s").await.rows, ["7"]);
    // A statement a client leaves on the server under a name like the
    // pooler's stand-ins gets in nobody's way.
    sql(&mut b, "SELECT 1; PREPARE wharf_check AS SELECT 1").await;
    let checked = sql(&mut a, "PREPARE again AS SELECT 7").await;
    assert!(checked.errors.is_empty(), "{checked:?}");
    let dropped = sql(&mut a, "DEALLOCATE again").await;
    assert!(dropped.errors.is_empty(), "{dropped:?}");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_evicted_from_a_full_server_come_back() {
    let pooler = pooler("default_pool_size = 1\nmax_prepared_statements = 1").await;
    let mut a = client(&pooler).await;
    for i in 0..4 {
        sql(&mut a, &format!("PREPARE s{i} AS SELECT {i}")).await;
    }
    for round in 0..2 {
        for i in (0..4).rev() {
            let run = sql(&mut a, &format!("EXECUTE s{i}")).await;
            assert_eq!(run.rows, [i.to_string()], "round {round}: {run:?}");
            assert_eq!(run.completions, ["SELECT 1"]);
        }
    }
    let kept = sql(&mut a, "SELECT count(*) FROM pg_prepared_statements").await;
    assert_eq!(kept.rows, ["1"]);
    // Mixed with protocol-level statements in one namespace: DEALLOCATE ALL
    // clears both.
    assert_eq!(
        sql(&mut a, "DEALLOCATE ALL").await.completions,
        ["DEALLOCATE ALL"]
    );
    assert_eq!(error_codes(&sql(&mut a, "EXECUTE s0").await), ["26000"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_plan_runs_again_or_is_prepared_again_at_next_use() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut a = client(&pooler).await;
    sql(
        &mut a,
        "CREATE TABLE stale_sql (a int); INSERT INTO stale_sql VALUES (1)",
    )
    .await;
    sql(&mut a, "PREPARE s AS SELECT * FROM stale_sql").await;
    assert_eq!(sql(&mut a, "EXECUTE s").await.rows, ["1"]);
    sql(&mut a, "ALTER TABLE stale_sql ADD COLUMN b int").await;
    // Outside a transaction it runs again, prepared anew: a simple query's
    // answer describes its rows, so the client sees the new shape.
    let ran = sql(&mut a, "EXECUTE s").await;
    assert_eq!(
        (ran.tags.as_str(), ran.completions.as_slice()),
        ("TDCZ", &["SELECT 1".to_string()][..]),
        "{ran:?}"
    );
    // Inside one, PostgreSQL's error reaches the client, and the
    // statement is prepared again at its next use.
    sql(&mut a, "ALTER TABLE stale_sql ADD COLUMN c int").await;
    sql(&mut a, "BEGIN").await;
    assert_eq!(error_codes(&sql(&mut a, "EXECUTE s").await), ["0A000"]);
    sql(&mut a, "ROLLBACK").await;
    let run = sql(&mut a, "EXECUTE s").await;
    assert!(run.errors.is_empty(), "{run:?}");
    assert_eq!(run.rows, ["1"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_longer_than_what_is_read_stream_through() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut a = client(&pooler).await;
    // Past the 64 KiB read for SQL-level statements, and the relay's
    // buffer ten times over.
    let literal = "x".repeat(200 * 1024);
    let long = sql(&mut a, &format!("SELECT length('{literal}')")).await;
    assert_eq!(long.rows, [(200 * 1024).to_string()]);
    let prepared = sql(
        &mut a,
        &format!("PREPARE big AS SELECT length('{literal}')"),
    )
    .await;
    assert_eq!(prepared.completions, ["PREPARE"]);
    // Not followed: it reached the one server under the client's name.
    assert_eq!(
        sql(&mut a, "EXECUTE big").await.rows,
        [(200 * 1024).to_string()]
    );
    let names = sql(&mut a, "SELECT name FROM pg_prepared_statements").await;
    assert_eq!(names.rows, ["big"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_simple_query_that_may_reach_the_pooler_statements_is_refused_unrun() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut owner = client(&pooler).await;
    sql(&mut owner, "CREATE TABLE reached (a int)").await;
    sql(&mut owner, "PREPARE s AS INSERT INTO reached VALUES (1)").await;
    let server_name = server_statement_name(&mut owner).await;
    // Past the 64 KiB read whole, which streams to the server.
    let padding = format!("-- {}\n", "x".repeat(70 * 1024));
    let escaped: String = server_name
        .chars()
        .map(|c| format!("\\{:04x}", c as u32))
        .collect();
    // One client whose session tracks nothing yet, one that does.
    for tracked in [false, true] {
        let mut other = client(&pooler).await;
        if tracked {
            sql(&mut other, "PREPARE mine AS SELECT 1").await;
        }
        for text in [
            format!("SELECT 1; EXECUTE {server_name}; {padding}"),
            format!("{padding} DEALLOCATE {}", server_name.to_uppercase()),
            format!("SELECT 1; {padding}EXECUTE U&\"{escaped}\""),
        ] {
            let refused = sql(&mut other, &text).await;
            assert_eq!(error_codes(&refused), ["54000"], "{refused:?}");
            assert_eq!(refused.tags, "EZ");
            assert_eq!(sql(&mut other, "SELECT 2").await.rows, ["2"]);
        }
        // In a transaction block, it fails the block as any error does.
        sql(&mut other, "BEGIN").await;
        let refused = sql(&mut other, &format!("EXECUTE {server_name} {padding}")).await;
        assert_eq!(error_codes(&refused), ["54000"], "{refused:?}");
        let aborted = sql(&mut other, "SELECT 3").await;
        assert_eq!(error_codes(&aborted), ["25P02"], "{aborted:?}");
        sql(&mut other, "ROLLBACK").await;
        // A long query holding only one of the two words runs.
        for text in [
            format!("SELECT 'execute' {padding}"),
            format!("SELECT 'wharf_1', 'you&me' {padding}"),
        ] {
            let ran = sql(&mut other, &text).await;
            assert_eq!(ran.completions, ["SELECT 1"], "{ran:?}");
        }
    }
    let count = sql(&mut owner, "SELECT count(*) FROM reached").await;
    assert_eq!(count.rows, ["0"]);
    assert_eq!(
        sql(&mut owner, "EXECUTE s").await.completions,
        ["INSERT 0 1"]
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_execute_sharing_a_transaction_with_earlier_work_is_not_run_again() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut a = client(&pooler).await;
    sql(&mut a, "CREATE TABLE shared_xact (a int)").await;
    sql(&mut a, "PREPARE s AS SELECT * FROM shared_xact").await;
    assert!(sql(&mut a, "EXECUTE s").await.errors.is_empty());
    sql(&mut a, "ALTER TABLE shared_xact ADD COLUMN b int").await;
    // An INSERT sent without a Sync, then the EXECUTE: both in one
    // implicit transaction, which the refused plan rolls back. Running the
    // EXECUTE again alone would hide that the INSERT is gone.
    let insert = [
        message(b'P', b"\0INSERT INTO shared_xact VALUES (1)\0\0\0"),
        message(b'B', b"\0\0\0\0\0\0\0\0"),
        message(b'E', b"\0\0\0\0\0"),
        query("EXECUTE s"),
    ]
    .concat();
    let replies = exchange(&mut a, &insert, 1).await;
    assert_eq!(error_codes(&replies), ["0A000"], "{replies:?}");
    let rows = sql(&mut a, "SELECT count(*) FROM shared_xact").await;
    assert_eq!(rows.rows, ["0"]);
    pooler.stop().await;
}

/// The name the pooler gave, on the server `client` reaches, to the one
/// statement there.
async fn server_statement_name(client: &mut TcpStream) -> String {
    let names = sql(
        client,
        "SELECT string_agg(name, ',') FROM pg_prepared_statements",
    )
    .await;
    let name = names.rows[0].clone();
    assert!(name.starts_with("wharf_"), "{names:?}");
    name
}

/// Replaces `from` with `to` in the pooler's ini and reloads it.
async fn reload_with(pooler: &TestPooler, from: &str, to: &str) {
    let ini = std::fs::read_to_string(pooler.ini()).unwrap();
    assert!(ini.contains(from), "no {from} in\n{ini}");
    std::fs::write(pooler.ini(), ini.replace(from, to)).unwrap();
    pooler.shared.reload().await.expect("reload");
}

/// Turns statement tracking on (`max_prepared_statements = 200`) or off
/// (0) by a RELOAD.
async fn tracking(pooler: &TestPooler, on: bool) {
    let (untracked, tracked) = (
        "max_prepared_statements = 0",
        "max_prepared_statements = 200",
    );
    if on {
        reload_with(pooler, untracked, tracked).await;
    } else {
        reload_with(pooler, tracked, untracked).await;
    }
}

/// Prepares `wharf_1` to `wharf_20`, the pooler's first names, from a
/// session that tracks no statements: in one transaction, the one its
/// server was cleared for.
async fn plant_pooler_names(planter: &mut TcpStream) {
    let plant: Vec<String> = (1..=20)
        .map(|n| format!("PREPARE wharf_{n} AS SELECT 666"))
        .collect();
    let planted = sql(planter, &plant.join("; ")).await;
    assert_eq!(planted.completions, ["PREPARE"; 20], "{planted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_turns_tracking_off_leaves_no_client_the_pooler_statements() {
    for (from, to) in [
        (
            "max_prepared_statements = 200",
            "max_prepared_statements = 0",
        ),
        ("pool_mode = transaction", "pool_mode = session"),
    ] {
        let pooler = pooler("default_pool_size = 1\nmax_prepared_statements = 200").await;
        let mut a = client(&pooler).await;
        sql(&mut a, "PREPARE s AS SELECT 7").await;
        let server_name = server_statement_name(&mut a).await;
        drop(a);
        reload_with(&pooler, from, to).await;
        // A new session tracks nothing and gets the one server.
        let mut b = client(&pooler).await;
        for text in [
            format!("EXECUTE {server_name}"),
            format!("DEALLOCATE {server_name}"),
        ] {
            let refused = sql(&mut b, &text).await;
            assert_eq!(
                error_codes(&refused),
                ["26000"],
                "{to}: {text}: {refused:?}"
            );
        }
        // Its own statements are its own, as without a pooler.
        sql(&mut b, "PREPARE mine AS SELECT 8").await;
        assert_eq!(sql(&mut b, "EXECUTE mine").await.rows, ["8"], "{to}");
        pooler.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_begun_before_tracking_was_on_cannot_reach_the_pooler_statements() {
    let pooler = pooler("default_pool_size = 1\nmax_prepared_statements = 0").await;
    let mut before = client(&pooler).await;
    assert_eq!(sql(&mut before, "SELECT 1").await.rows, ["1"]);
    tracking(&pooler, true).await;
    let mut a = client(&pooler).await;
    sql(&mut a, "PREPARE s AS SELECT 7").await;
    let server_name = server_statement_name(&mut a).await;
    let refused = sql(&mut before, &format!("EXECUTE {server_name}")).await;
    assert_eq!(error_codes(&refused), ["26000"], "{refused:?}");
    // The tracked client's statement comes back when next used.
    assert_eq!(sql(&mut a, "EXECUTE s").await.rows, ["7"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_a_session_without_tracking_left_do_not_block_the_pooler_names() {
    let pooler = pooler("default_pool_size = 1\nmax_prepared_statements = 200").await;
    // The server holds one of the pooler's statements when tracking goes
    // off, and its owner stays.
    let mut owner = client(&pooler).await;
    sql(&mut owner, "PREPARE s AS SELECT 7").await;
    tracking(&pooler, false).await;
    // The servers from before the reload are closed once given back: the
    // owner's statement is prepared again on a new one.
    for _ in 0..2 {
        assert_eq!(sql(&mut owner, "EXECUTE s").await.rows, ["7"]);
    }
    let mut planter = client(&pooler).await;
    // Tracking off: the names go to the server as they are, the pooler's
    // own included.
    plant_pooler_names(&mut planter).await;
    tracking(&pooler, true).await;
    let mut a = client(&pooler).await;
    let prepared = sql(&mut a, "PREPARE s AS SELECT 8").await;
    assert_eq!(prepared.completions, ["PREPARE"], "{prepared:?}");
    assert_eq!(sql(&mut a, "EXECUTE s").await.rows, ["8"]);
    assert_eq!(sql(&mut owner, "EXECUTE s").await.rows, ["7"]);
    let names = sql(&mut a, "SELECT name FROM pg_prepared_statements").await;
    assert_eq!(names.rows.len(), 2, "planted ones left: {names:?}");
    drop(planter);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_of_a_pooler_name_inside_a_longer_query_takes_no_pooler_name() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut a = client(&pooler).await;
    let planted = sql(&mut a, "SELECT 1; PREPARE wharf_999 AS SELECT 666").await;
    assert_eq!(planted.completions, ["SELECT 1", "PREPARE"], "{planted:?}");
    let names = sql(&mut a, "SELECT name FROM pg_prepared_statements").await;
    assert_eq!(names.rows, ["client:wharf_999"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untracked_session_planting_right_after_its_server_was_cleared_blocks_no_name() {
    let pooler = pooler("default_pool_size = 1\nmax_prepared_statements = 0").await;
    let mut planter = client(&pooler).await;
    assert_eq!(sql(&mut planter, "SELECT 1").await.rows, ["1"]);
    tracking(&pooler, true).await;
    // The one server holds a statement of the pooler's when the planter,
    // which began untracked, gets it: it is cleared for the planter, and
    // what the planter leaves must be cleared again for the next.
    let mut owner = client(&pooler).await;
    sql(&mut owner, "PREPARE s AS SELECT 7").await;
    plant_pooler_names(&mut planter).await;
    let mut a = client(&pooler).await;
    let prepared = sql(&mut a, "PREPARE t AS SELECT 8").await;
    assert_eq!(prepared.completions, ["PREPARE"], "{prepared:?}");
    assert_eq!(sql(&mut a, "EXECUTE t").await.rows, ["8"]);
    assert_eq!(sql(&mut owner, "EXECUTE s").await.rows, ["7"]);
    pooler.stop().await;
}
