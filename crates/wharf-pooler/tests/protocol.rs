//! Queries through the pooler with real clients: simple and extended
//! protocol, COPY, large rows, notices, errors, pipelining, psql and the
//! client parameters the pooler keeps in step on shared servers.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{start, Setup};
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}

/// The text values of the rows a simple query returned.
fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The single value a simple query returned.
async fn simple_value(client: &Client, sql: &str) -> String {
    let messages = within(sql, client.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows = simple_rows(&messages);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    assert_eq!(rows[0].len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone().expect("not NULL")
}

async fn backend_pid(client: &Client) -> i32 {
    simple_value(client, "SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("a pid")
}

fn code(err: &tokio_postgres::Error) -> Option<&SqlState> {
    err.code()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn pool_of_one() -> Setup<'static> {
    Setup {
        pgbouncer: "default_pool_size = 1",
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_go_through_in_transaction_mode() {
    let pooler = start(Setup::default()).await;
    let client = pooler.client().await;
    let rows = client.simple_query("SELECT 1 AS one").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1"))
    );
    let row = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_return_exact_results() {
    let pooler = start(Setup::default()).await;
    let client = pooler.client().await;

    // Simple protocol: several statements in one Query, NULLs, row counts.
    let messages = within(
        "multi-statement simple query",
        client.simple_query(
            "CREATE TABLE kv (k int PRIMARY KEY, v text);\
             INSERT INTO kv VALUES (1, 'one'), (2, NULL), (3, 'three');\
             SELECT k, v FROM kv ORDER BY k",
        ),
    )
    .await
    .unwrap();
    let completions: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(completions, vec![0, 3, 3]);
    assert_eq!(
        simple_rows(&messages),
        vec![
            vec![Some("1".to_owned()), Some("one".to_owned())],
            vec![Some("2".to_owned()), None],
            vec![Some("3".to_owned()), Some("three".to_owned())],
        ]
    );

    // Extended protocol with unnamed statements (safe in transaction mode).
    let rows = within(
        "query_typed",
        client.query_typed(
            "SELECT k, v, $1::text || k FROM kv WHERE k >= $2 ORDER BY k",
            &[
                (&"key-" as &(dyn ToSql + Sync), Type::TEXT),
                (&2i32, Type::INT4),
            ],
        ),
    )
    .await
    .unwrap();
    let got: Vec<(i32, Option<String>, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, None, "key-2".to_owned()),
            (3, Some("three".to_owned()), "key-3".to_owned()),
        ]
    );
    let updated = within(
        "execute_typed",
        client.execute_typed(
            "UPDATE kv SET v = $1 WHERE v IS NULL OR k = $2",
            &[
                (&"changed" as &(dyn ToSql + Sync), Type::TEXT),
                (&1i32, Type::INT4),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(updated, 2);

    // A named prepared statement used several times inside one transaction,
    // where it is sure to stay on one server.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let statement = tx.prepare("SELECT v FROM kv WHERE k = $1").await.unwrap();
    for (k, v) in [(1, "changed"), (2, "changed"), (3, "three")] {
        let row = tx.query_one(&statement, &[&k]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), v);
    }
    assert!(tx.query_opt(&statement, &[&4i32]).await.unwrap().is_none());
    drop(statement);
    tx.commit().await.unwrap();

    // Binary results of several types.
    let row = within(
        "typed values",
        client.query_typed_one(
            "SELECT $1::int8 * 2, $2::float8 / 4, $3::bool, $4::bytea, NULL::text",
            &[
                (&i64::MAX.wrapping_div(4) as &(dyn ToSql + Sync), Type::INT8),
                (&10.0f64, Type::FLOAT8),
                (&true, Type::BOOL),
                (&vec![0u8, 1, 255], Type::BYTEA),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i64>(0), i64::MAX / 4 * 2);
    assert_eq!(row.get::<_, f64>(1), 2.5);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0u8, 1, 255]);
    assert_eq!(row.get::<_, Option<String>>(4), None);
    pooler.stop().await;
}

/// `n` rows of COPY text format: `id<TAB>name-id`.
fn copy_text(range: std::ops::Range<u32>) -> String {
    range.map(|i| format!("{i}\tname-{i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_copy_out_go_through_and_release_the_server() {
    // One server: if a COPY left it linked to its client, the second client
    // below could never run.
    let pooler = start(pool_of_one()).await;
    let client = pooler.client().await;
    within(
        "create",
        client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)"),
    )
    .await
    .unwrap();

    const ROWS: u32 = 50_000;
    let data = copy_text(0..ROWS);
    let copied = within("COPY FROM STDIN", async {
        let sink = client
            .copy_in::<_, Bytes>("COPY items (id, name) FROM STDIN")
            .await?;
        futures_util::pin_mut!(sink);
        // Pieces that do not line up with rows, as a client may send them.
        for piece in data.as_bytes().chunks(7_777) {
            sink.send(Bytes::copy_from_slice(piece)).await?;
        }
        sink.finish().await
    })
    .await
    .unwrap();
    assert_eq!(copied, u64::from(ROWS));
    assert_eq!(
        simple_value(&client, "SELECT count(*) || ' ' || sum(id) FROM items").await,
        format!("{ROWS} {}", (0..u64::from(ROWS)).sum::<u64>())
    );
    assert_eq!(
        simple_value(&client, "SELECT name FROM items WHERE id = 4242").await,
        "name-4242"
    );

    let out = within("COPY TO STDOUT", async {
        let stream = client
            .copy_out("COPY (SELECT id, name FROM items ORDER BY id) TO STDOUT")
            .await?;
        futures_util::pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok::<_, tokio_postgres::Error>(out)
    })
    .await
    .unwrap();
    assert_eq!(out.len(), data.len());
    assert!(out == data.as_bytes(), "COPY TO STDOUT returned other rows");

    // A COPY the server rejects mid-stream leaves everything usable.
    let failed = within("bad COPY FROM STDIN", async {
        let sink = client
            .copy_in::<_, Bytes>("COPY items (id, name) FROM STDIN")
            .await?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"900000\tok\nnot-a-number\tbad\n"))
            .await?;
        sink.finish().await
    })
    .await
    .unwrap_err();
    assert_eq!(code(&failed), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    assert_eq!(
        simple_value(&client, "SELECT count(*) FROM items /* after bad row */").await,
        ROWS.to_string()
    );

    // A COPY the client abandons (tokio-postgres sends CopyFail and Sync).
    within("abandoned COPY FROM STDIN", async {
        let sink = client
            .copy_in::<_, Bytes>("COPY items (id, name) FROM STDIN")
            .await?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"900001\tnever\n")).await?;
        Ok::<_, tokio_postgres::Error>(())
    })
    .await
    .unwrap();
    // COPYs the server refuses before reading any data: before it starts
    // (no CopyInResponse) or right after. Either way the server reads the
    // Sync sent after Execute outside COPY and answers it, and the one
    // after tokio-postgres's CopyFail too. tokio-postgres trips over the
    // second ReadyForQuery (it does the same talking to PostgreSQL
    // directly), so each runs on a client of its own, dropped after; the
    // one server must come back to the pool in step.
    let doomed = pooler.client().await;
    let refused = within(
        "COPY with a bad option",
        doomed.copy_in::<_, Bytes>("COPY items FROM STDIN WITH (DELIMITER 'ab')"),
    )
    .await
    .err()
    .expect("COPY with a two-character delimiter fails");
    assert_eq!(code(&refused), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    drop(doomed);
    assert_eq!(
        simple_value(&client, "SELECT count(*) FROM items /* after bad option */").await,
        ROWS.to_string()
    );
    within(
        "view",
        client.batch_execute("CREATE VIEW items_view AS SELECT * FROM items"),
    )
    .await
    .unwrap();
    let doomed = pooler.client().await;
    let refused = within("COPY into a view", async {
        let sink = doomed
            .copy_in::<_, Bytes>("COPY items_view FROM STDIN")
            .await?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"900002\tview\n")).await?;
        sink.finish().await
    })
    .await
    .expect_err("COPY into a view fails");
    assert_eq!(code(&refused), Some(&SqlState::WRONG_OBJECT_TYPE));
    drop(doomed);
    assert_eq!(
        simple_value(&client, "SELECT count(*) FROM items /* after view */").await,
        ROWS.to_string()
    );

    // A client that vanishes in the middle of a COPY (its socket closed,
    // no CopyDone or CopyFail) must not keep the server waiting for data.
    let vanishing = pooler.watched_client().await;
    let sink = within(
        "COPY before vanishing",
        vanishing
            .client
            .copy_in::<_, Bytes>("COPY items (id, name) FROM STDIN"),
    )
    .await
    .unwrap();
    let mut sink = Box::pin(sink);
    within(
        "some data",
        sink.send(Bytes::from_static(b"900003\tlost\n")),
    )
    .await
    .unwrap();
    // Dropping the connection task closes the socket mid-COPY.
    vanishing.ended.abort();
    let _ = vanishing.ended.await;
    drop(sink);

    // The one server went back to the pool: another client gets it.
    let other = pooler.client().await;
    assert_eq!(
        simple_value(&other, "SELECT count(*) FROM items /* other */").await,
        ROWS.to_string()
    );
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_over_a_megabyte_pass_both_ways() {
    let pooler = start(Setup::default()).await;
    let client = pooler.client().await;

    // Server to client: one 3 MB value, simple and extended.
    let big = simple_value(&client, "SELECT repeat('x', 3000000)").await;
    assert_eq!(big.len(), 3_000_000);
    assert!(big.bytes().all(|b| b == b'x'));
    let row = within(
        "3 MB extended",
        client.query_typed_one("SELECT repeat('y', 3000000), 'after'", &[]),
    )
    .await
    .unwrap();
    let value: &str = row.get(0);
    assert_eq!(value.len(), 3_000_000);
    assert!(value.bytes().all(|b| b == b'y'));
    assert_eq!(row.get::<_, &str>(1), "after");

    // Client to server: a 2 MB parameter, then a 2 MB query text, with
    // content that shows any byte lost or moved.
    within(
        "create",
        client.batch_execute("CREATE TABLE big (id int, t text)"),
    )
    .await
    .unwrap();
    let param: String = (0..2_000_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let inserted = within(
        "2 MB parameter",
        client.execute_typed(
            "INSERT INTO big VALUES (1, $1)",
            &[(&param as &(dyn ToSql + Sync), Type::TEXT)],
        ),
    )
    .await
    .unwrap();
    assert_eq!(inserted, 1);
    let literal: String = param.chars().rev().collect();
    within(
        "2 MB query text",
        client.simple_query(&format!("INSERT INTO big VALUES (2, '{literal}')")),
    )
    .await
    .unwrap();
    assert_eq!(
        simple_value(
            &client,
            "SELECT string_agg(length(t)::text, ',' ORDER BY id) FROM big"
        )
        .await,
        "2000000,2000000"
    );
    let back = within(
        "read back",
        client.query_typed("SELECT t FROM big ORDER BY id", &[]),
    )
    .await
    .unwrap();
    assert_eq!(back.len(), 2);
    assert!(
        back[0].get::<_, &str>(0) == param,
        "parameter came back changed"
    );
    assert!(
        back[1].get::<_, &str>(0) == literal,
        "literal came back changed"
    );
    assert_eq!(
        simple_value(
            &client,
            "SELECT (SELECT t FROM big WHERE id = 1) = reverse((SELECT t FROM big WHERE id = 2))"
        )
        .await,
        "t"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_the_client() {
    let pooler = start(Setup::default()).await;
    let mut watched = pooler.watched_client().await;
    within(
        "DO with a notice",
        watched
            .client
            .batch_execute("DO $$ BEGIN RAISE NOTICE 'hi'; END $$"),
    )
    .await
    .unwrap();
    let notice = within("the notice", watched.notices.recv())
        .await
        .expect("a notice");
    assert_eq!(notice.severity(), "NOTICE");
    assert_eq!(notice.message(), "hi");
    // In the extended protocol too.
    within(
        "extended DO with a notice",
        watched
            .client
            .execute_typed("DO $$ BEGIN RAISE NOTICE 'extended'; END $$", &[]),
    )
    .await
    .unwrap();
    let notice = within("the extended notice", watched.notices.recv())
        .await
        .expect("a notice");
    assert_eq!(notice.message(), "extended");
    within(
        "second notice",
        watched
            .client
            .batch_execute("DO $$ BEGIN RAISE NOTICE 'second %', 2; END $$"),
    )
    .await
    .unwrap();
    let notice = within("the second notice", watched.notices.recv())
        .await
        .expect("a notice");
    assert_eq!(notice.message(), "second 2");
    assert!(watched.notices.try_recv().is_err(), "no other notices");

    // psql prints it on stderr.
    let output = tokio::task::block_in_place(|| {
        pooler.psql(&["-c", "DO $$ BEGIN RAISE NOTICE 'hi from psql'; END $$"])
    });
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("NOTICE:  hi from psql"),
        "psql stderr: {}",
        stderr(&output)
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_aborts_the_transaction_and_the_server_goes_back_healthy() {
    let pooler = start(pool_of_one()).await;
    let first = pooler.client().await;
    let pid = backend_pid(&first).await;
    within("BEGIN", first.batch_execute("BEGIN")).await.unwrap();
    within(
        "insert in tx",
        first.batch_execute("CREATE TABLE t_err (a int); INSERT INTO t_err VALUES (1)"),
    )
    .await
    .unwrap();
    let err = within(
        "bad statement",
        first.simple_query("SELECT * FROM no_such_table"),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::UNDEFINED_TABLE));
    let err = within("after the error", first.simple_query("SELECT 1"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    let err = within(
        "extended after the error",
        first.query_typed("SELECT 1", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    within("ROLLBACK", first.batch_execute("ROLLBACK"))
        .await
        .unwrap();
    // The transaction's work is gone, and the connection works.
    assert_eq!(
        simple_value(
            &first,
            "SELECT count(*) FROM pg_class WHERE relname = 't_err'"
        )
        .await,
        "0"
    );
    assert_eq!(backend_pid(&first).await, pid);

    // The same server serves the next client, outside any transaction:
    // a statement of its own starts a transaction of its own.
    let second = pooler.client().await;
    assert_eq!(backend_pid(&second).await, pid);
    assert_eq!(
        simple_value(&second, "SELECT now() = statement_timestamp()").await,
        "t"
    );
    assert_eq!(simple_value(&first, "SELECT 2").await, "2");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_a_pipeline_affects_what_postgres_says_it_does() {
    let pooler = start(pool_of_one()).await;
    let client = pooler.client().await;

    // Each query its own implicit transaction (its own Sync): only the bad
    // one fails.
    let (a, b, c) = within("pipeline", async {
        tokio::join!(
            client.query_typed_one("SELECT 1::int", &[]),
            client.query_typed_one("SELECT 1 / 0", &[]),
            client.query_typed_one("SELECT 3::int", &[]),
        )
    })
    .await;
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(code(&b.unwrap_err()), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);

    // Simple queries pipelined the same way.
    let (a, b, c) = within("simple pipeline", async {
        tokio::join!(
            client.simple_query("SELECT 'a'"),
            client.simple_query("SELECT * FROM missing_table"),
            client.simple_query("SELECT 'c'"),
        )
    })
    .await;
    assert_eq!(simple_rows(&a.unwrap()), vec![vec![Some("a".to_owned())]]);
    assert_eq!(code(&b.unwrap_err()), Some(&SqlState::UNDEFINED_TABLE));
    assert_eq!(simple_rows(&c.unwrap()), vec![vec![Some("c".to_owned())]]);

    // Inside a transaction the error aborts it: what follows fails too.
    within("create", client.batch_execute("CREATE TABLE piped (a int)"))
        .await
        .unwrap();
    within("BEGIN", client.batch_execute("BEGIN"))
        .await
        .unwrap();
    let (a, b, c) = within("pipeline in a transaction", async {
        tokio::join!(
            client.execute_typed("INSERT INTO piped VALUES (1)", &[]),
            client.query_typed_one("SELECT 1 / 0", &[]),
            client.execute_typed("INSERT INTO piped VALUES (3)", &[]),
        )
    })
    .await;
    assert_eq!(a.unwrap(), 1);
    assert_eq!(code(&b.unwrap_err()), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(
        code(&c.unwrap_err()),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    // COMMIT of an aborted transaction rolls back.
    let messages = within("COMMIT", client.simple_query("COMMIT"))
        .await
        .unwrap();
    assert!(messages
        .iter()
        .all(|m| !matches!(m, SimpleQueryMessage::Row(_))));
    assert_eq!(
        simple_value(&client, "SELECT count(*) FROM piped").await,
        "0"
    );

    // And the pipeline of a healthy client still works, on the one server.
    let other = pooler.client().await;
    let results = within("pipeline after", async {
        tokio::join!(
            other.query_typed_one("SELECT 10::int", &[]),
            other.query_typed_one("SELECT 20::int", &[]),
            client.query_typed_one("SELECT 30::int", &[]),
        )
    })
    .await;
    assert_eq!(results.0.unwrap().get::<_, i32>(0), 10);
    assert_eq!(results.1.unwrap().get::<_, i32>(0), 20);
    assert_eq!(results.2.unwrap().get::<_, i32>(0), 30);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_statements_and_copy_through_the_pooler() {
    let pooler = start(Setup::default()).await;
    let dir = pooler.dir().to_path_buf();
    let output = tokio::task::block_in_place(|| {
        pooler.psql(&[
            "-c",
            "CREATE TABLE p (a int, b text); INSERT INTO p VALUES (1, 'one'), (2, 'two'); \
             SELECT sum(a) FROM p",
            "-c",
            "SELECT string_agg(b, '+' ORDER BY a) FROM p",
        ])
    });
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "CREATE TABLE\nINSERT 0 2\n3\none+two\n");

    // \copy from a file and back to another.
    let input = dir.join("in.csv");
    let exported = dir.join("out.csv");
    let csv: String = (3..=1002).map(|i| format!("{i},\"row {i}\"\n")).collect();
    std::fs::write(&input, &csv).unwrap();
    let copy_in = format!("\\copy p FROM '{}' CSV", input.display());
    let copy_out = format!(
        "\\copy (SELECT a, b FROM p WHERE a >= 3 ORDER BY a) TO '{}' CSV",
        exported.display()
    );
    let output = tokio::task::block_in_place(|| {
        pooler.psql(&[
            "-c",
            &copy_in,
            "-c",
            "SELECT count(*), sum(a) FROM p",
            "-c",
            &copy_out,
        ])
    });
    assert!(output.status.success(), "{}", stderr(&output));
    let sum: u32 = (1..=1002).sum();
    assert_eq!(
        stdout(&output),
        format!("COPY 1000\n1002|{sum}\nCOPY 1000\n")
    );
    let back = std::fs::read_to_string(&exported).unwrap();
    // CSV output quotes only values that need it; "row N" does not.
    let expected: String = (3..=1002).map(|i| format!("{i},row {i}\n")).collect();
    assert_eq!(back, expected);

    // A failing statement stops psql with the server's error.
    let output = tokio::task::block_in_place(|| {
        pooler.psql(&["-c", "SELECT 1/0", "-c", "SELECT 'not reached'"])
    });
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("division by zero"),
        "{}",
        stderr(&output)
    );
    assert!(!stdout(&output).contains("not reached"));
    pooler.stop().await;
}

async fn show_timezone(client: &Client) -> String {
    simple_value(client, "SHOW TimeZone").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_own_timezone_on_a_shared_server() {
    let pooler = start(pool_of_one()).await;
    let default =
        tokio::task::block_in_place(|| pooler.cluster.psql("postgres", "SHOW TimeZone")).unwrap();
    assert_ne!(default, "Asia/Tokyo");
    let mut tokyo = pooler.watched_client().await;
    let plain = pooler.client().await;
    assert_eq!(show_timezone(&plain).await, default);

    within(
        "SET TimeZone",
        tokyo.client.batch_execute("SET TimeZone = 'Asia/Tokyo'"),
    )
    .await
    .unwrap();
    let pid = backend_pid(&tokyo.client).await;
    for _ in 0..3 {
        assert_eq!(show_timezone(&tokyo.client).await, "Asia/Tokyo");
        assert_eq!(show_timezone(&plain).await, default);
        assert_eq!(backend_pid(&plain).await, pid, "one shared server");
        // Values that depend on it, in the extended protocol too.
        let row = within(
            "timestamptz text",
            tokyo
                .client
                .query_typed_one("SELECT '2024-01-01 00:00:00+00'::timestamptz::text", &[]),
        )
        .await
        .unwrap();
        assert_eq!(row.get::<_, &str>(0), "2024-01-01 09:00:00+09");
    }
    // The other client changes its own, and each still sees its own.
    within(
        "SET TimeZone",
        plain.batch_execute("SET TimeZone = 'America/New_York'"),
    )
    .await
    .unwrap();
    assert_eq!(show_timezone(&tokyo.client).await, "Asia/Tokyo");
    assert_eq!(show_timezone(&plain).await, "America/New_York");
    within("RESET", tokyo.client.batch_execute("RESET TimeZone"))
        .await
        .unwrap();
    assert_eq!(show_timezone(&plain).await, "America/New_York");
    assert_eq!(show_timezone(&tokyo.client).await, default);
    assert!(tokyo.notices.try_recv().is_err());
    pooler.stop().await;
}
