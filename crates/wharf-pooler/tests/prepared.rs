//! Prepared statements in transaction mode (`max_prepared_statements`):
//! named statements follow a client from server to server, with raw
//! protocol sequences that pin every reply, tokio-postgres under
//! concurrency, and pgbench -M prepared.

mod common;

use common::wire::{exchange, login_trusted, message, query as wire_query, read_replies};
use common::{pgbench, start, Setup, TestPooler};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn setup(extra: &str) -> String {
    format!("auth_type = trust\n{extra}\n")
}

async fn pooler(extra: &str) -> TestPooler {
    let pgbouncer = setup(extra);
    start(Setup {
        pgbouncer: &pgbouncer,
        ..Setup::default()
    })
    .await
}

fn cstr(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

fn parse(name: &[u8], sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend(cstr(sql.as_bytes()));
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

/// A Bind of statement `name` to the unnamed portal with text parameters.
fn bind(name: &[u8], params: &[&str]) -> Vec<u8> {
    let mut body = cstr(b"");
    body.extend(cstr(name));
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

fn execute() -> Vec<u8> {
    let mut body = cstr(b"");
    body.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &body)
}

/// Describe of the unnamed portal.
fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

fn describe(name: &[u8]) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend(cstr(name));
    message(b'D', &body)
}

fn close(name: &[u8]) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend(cstr(name));
    message(b'C', &body)
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

fn flush() -> Vec<u8> {
    message(b'H', b"")
}

/// Parse, Bind, Execute and Sync of one statement.
fn run(name: &[u8], sql: &str, params: &[&str]) -> Vec<u8> {
    [parse(name, sql), bind(name, params), execute(), sync()].concat()
}

/// Bind, Execute and Sync of a statement prepared before.
fn call(name: &[u8], params: &[&str]) -> Vec<u8> {
    [bind(name, params), execute(), sync()].concat()
}

async fn client(pooler: &TestPooler) -> TcpStream {
    login_trusted(pooler.port, "postgres", "postgres").await
}

/// The rows of `SHOW what` on the console.
async fn show(pooler: &TestPooler, what: &str) -> Vec<tokio_postgres::SimpleQueryRow> {
    let admin = pooler
        .login("postgres", "postgres", "pgbouncer")
        .await
        .expect("console");
    admin
        .simple_query(&format!("SHOW {what}"))
        .await
        .expect("show")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_follow_the_client_to_another_server() {
    let pooler = pooler("default_pool_size = 2\nadmin_users = postgres").await;
    let mut a = client(&pooler).await;
    let first = exchange(
        &mut a,
        &[
            run(b"add", "SELECT $1::int + 1", &["41"]),
            run(b"pid", "SELECT pg_backend_pid()", &[]),
        ]
        .concat(),
        2,
    )
    .await;
    assert_eq!(first.tags, "12DCZ12DCZ", "{first:?}");
    assert_eq!(first.rows[0], "42");
    // Another client takes the only server, so the next transaction of the
    // first one runs on a new server that has never seen its statements.
    let other = pooler.client().await;
    other.batch_execute("BEGIN").await.unwrap();
    let moved = exchange(
        &mut a,
        &[call(b"add", &["1"]), call(b"pid", &[])].concat(),
        2,
    )
    .await;
    assert_eq!(
        moved.tags, "2DCZ2DCZ",
        "the Parses the pooler added are not seen: {moved:?}"
    );
    assert_eq!(moved.rows[0], "2");
    assert_ne!(moved.rows[1], first.rows[1], "ran on another server");
    other.batch_execute("COMMIT").await.unwrap();
    // Describe of a statement works on whichever server too.
    let described = exchange(&mut a, &[describe(b"add"), sync()].concat(), 1).await;
    assert_eq!(described.tags, "tTZ");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_a_server_has_is_not_parsed_again() {
    let pooler = pooler("default_pool_size = 1\nadmin_users = postgres").await;
    let mut a = client(&pooler).await;
    let mut b = client(&pooler).await;
    let sql = "SELECT $1::text || '!'";
    assert_eq!(
        exchange(&mut a, &run(b"s1", sql, &["a"]), 1).await.rows,
        ["a!"]
    );
    // Another client, another name, the same text: answered by the pooler.
    let replies = exchange(&mut b, &run(b"other", sql, &["b"]), 1).await;
    assert_eq!(
        (replies.tags.as_str(), replies.rows[0].as_str()),
        ("12DCZ", "b!")
    );
    let stats = show(&pooler, "STATS").await;
    let row = stats
        .iter()
        .find(|r| r.get("database") == Some("postgres"))
        .expect("postgres stats");
    assert_eq!(row.get("total_client_parse_count"), Some("2"));
    assert_eq!(row.get("total_server_parse_count"), Some("1"));
    assert_eq!(row.get("total_bind_count"), Some("2"));
    let clients = show(&pooler, "CLIENTS").await;
    let named: Vec<_> = clients
        .iter()
        .filter(|c| c.get("database") == Some("postgres"))
        .map(|c| c.get("prepared_statements").unwrap_or("").to_owned())
        .collect();
    assert_eq!(named, ["1", "1"], "each client has its one name");
    let servers = show(&pooler, "SERVERS").await;
    assert_eq!(servers[0].get("prepared_statements"), Some("1"));
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_pipeline_forgets_what_never_ran() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut c = client(&pooler).await;
    let pipeline = [
        parse(b"good", "SELECT $1::int * 2"),
        bind(b"good", &["21"]),
        execute(),
        parse(b"bad", "SELEC nonsense"),
        bind(b"bad", &[]),
        execute(),
        parse(b"later", "SELECT 3"),
        sync(),
    ]
    .concat();
    let replies = exchange(&mut c, &pipeline, 1).await;
    assert_eq!(replies.tags, "12DCEZ", "{replies:?}");
    assert_eq!(replies.rows, ["42"]);
    assert_eq!(replies.errors[0].0, "42601");
    // A failed Parse and one skipped after it prepared nothing.
    for name in [&b"bad"[..], b"later"] {
        let replies = exchange(&mut c, &call(name, &[]), 1).await;
        assert_eq!(replies.tags, "EZ", "{replies:?}");
        assert_eq!(replies.errors[0].0, "26000", "{replies:?}");
    }
    let replies = exchange(&mut c, &call(b"good", &["5"]), 1).await;
    assert_eq!(replies.rows, ["10"]);
    // The statement that was skipped can be prepared now.
    let replies = exchange(&mut c, &run(b"later", "SELECT 3", &[]), 1).await;
    assert_eq!(replies.rows, ["3"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_answered_by_the_pooler_and_forgets_the_name() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut c = client(&pooler).await;
    let prepared = exchange(&mut c, &[parse(b"s", "SELECT 1"), sync()].concat(), 1).await;
    assert_eq!(prepared.tags, "1Z");
    let closed = exchange(&mut c, &[close(b"s"), close(b"s"), sync()].concat(), 1).await;
    assert_eq!(
        closed.tags, "33Z",
        "a second Close is fine, as in PostgreSQL"
    );
    let gone = exchange(&mut c, &call(b"s", &[]), 1).await;
    assert_eq!(gone.errors[0].0, "26000", "{gone:?}");
    // Delayed Sync: a Flush gets the replies so far, the Sync the rest.
    c.write_all(&[parse(b"s", "SELECT 7"), bind(b"s", &[]), execute(), flush()].concat())
        .await
        .expect("sent");
    let replies = read_replies(&mut c, 0, 4).await;
    assert_eq!(
        (replies.tags.as_str(), replies.rows[0].as_str()),
        ("12DC", "7")
    );
    let rest = exchange(&mut c, &sync(), 1).await;
    assert_eq!(rest.tags, "Z");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_and_discard_all_drop_every_statement() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut c = client(&pooler).await;
    for reset in ["DEALLOCATE ALL", "DISCARD ALL"] {
        let replies = exchange(&mut c, &run(b"s", "SELECT 11", &[]), 1).await;
        assert_eq!(replies.rows, ["11"], "{reset}");
        let replies = exchange(&mut c, &common::wire::query(reset), 1).await;
        assert!(replies.errors.is_empty(), "{reset}: {replies:?}");
        let gone = exchange(&mut c, &call(b"s", &[]), 1).await;
        assert_eq!(gone.errors[0].0, "26000", "{reset}: {gone:?}");
        // Prepared again from scratch: the server lost its copy too.
        let again = exchange(&mut c, &run(b"s", "SELECT 11", &[]), 1).await;
        assert_eq!(again.rows, ["11"], "{reset}: {again:?}");
        let closed = exchange(&mut c, &[close(b"s"), sync()].concat(), 1).await;
        assert_eq!(closed.tags, "3Z");
    }
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_starts_with_plain_queries_turns_to_named_statements_mid_pipeline() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut c = client(&pooler).await;
    let plain = exchange(&mut c, &wire_query("SELECT 1"), 1).await;
    assert_eq!(plain.rows, ["1"]);
    // Inside a transaction, in one write: two plain queries the server
    // answers before the first named statement, which comes after them.
    let mixed = [
        wire_query("BEGIN"),
        wire_query("SELECT 2"),
        run(b"s", "SELECT $1::int * 10", &["3"]),
    ]
    .concat();
    let replies = exchange(&mut c, &mixed, 3).await;
    assert_eq!(replies.tags, "CZTDCZ12DCZ", "{replies:?}");
    assert_eq!(replies.rows, ["2", "30"]);
    let committed = exchange(&mut c, &wire_query("COMMIT"), 1).await;
    assert!(committed.errors.is_empty(), "{committed:?}");
    // The name is the client's from now on, whichever server it gets.
    let other = pooler.client().await;
    other.batch_execute("SELECT 1").await.unwrap();
    let again = exchange(&mut c, &call(b"s", &["4"]), 1).await;
    assert_eq!(again.rows, ["40"], "{again:?}");
    // A new plain client's Parse of a statement the server has: the
    // pooler answers it, after the replies the server still owes for the
    // plain query before it.
    let mut late = client(&pooler).await;
    let shared = [
        wire_query("SELECT 3"),
        run(b"t", "SELECT $1::int * 10", &["5"]),
    ]
    .concat();
    let replies = exchange(&mut late, &shared, 2).await;
    assert_eq!(replies.tags, "TDCZ12DCZ", "{replies:?}");
    assert_eq!(replies.rows, ["3", "50"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_unnamed_statements_turns_to_named_ones_mid_pipeline() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut c = client(&pooler).await;
    let unnamed = [
        run(b"", "SELECT $1::int + 1", &["1"]),
        [parse(b"", "SELECT 5"), describe(b""), flush()].concat(),
    ]
    .concat();
    c.write_all(&unnamed).await.expect("sent");
    let replies = read_replies(&mut c, 1, usize::MAX).await;
    assert_eq!(replies.tags, "12DCZ", "{replies:?}");
    let flushed = read_replies(&mut c, 0, 3).await;
    assert_eq!(flushed.tags, "1tT", "the Flush's replies: {flushed:?}");
    let rest = exchange(&mut c, &[bind(b"", &[]), execute(), sync()].concat(), 1).await;
    assert_eq!((rest.tags.as_str(), rest.rows[0].as_str()), ("2DCZ", "5"));
    // In one write, from a client that never had a tracker, groups of
    // unnamed statements (one failing) the server answers before the named
    // one that comes after them...
    let mut c = client(&pooler).await;
    let mixed = [
        run(b"", "SELECT 1/0", &[]),
        run(b"", "SELECT $1::int * 2", &["4"]),
        run(b"s", "SELECT $1::int * 10", &["3"]),
    ]
    .concat();
    let replies = exchange(&mut c, &mixed, 3).await;
    // (PostgreSQL folds the division when it plans the Bind.)
    assert_eq!(replies.tags, "1EZ12DCZ12DCZ", "{replies:?}");
    assert_eq!(replies.rows, ["8", "30"]);
    assert_eq!(replies.errors[0].0, "22012");
    // ... and, in another session, in one group with them.
    let mut d = client(&pooler).await;
    let group = [
        parse(b"", "SELECT 2"),
        bind(b"", &[]),
        execute(),
        parse(b"t", "SELECT $1::int * 100"),
        bind(b"t", &["3"]),
        execute(),
        sync(),
    ]
    .concat();
    let replies = exchange(&mut d, &group, 1).await;
    assert_eq!(replies.tags, "12DC12DCZ", "{replies:?}");
    assert_eq!(replies.rows, ["2", "300"]);
    // The names are the clients' from now on.
    let again = exchange(&mut c, &call(b"s", &["4"]), 1).await;
    assert_eq!(again.rows, ["40"], "{again:?}");
    let again = exchange(&mut d, &call(b"t", &["4"]), 1).await;
    assert_eq!(again.rows, ["400"], "{again:?}");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discard_all_from_a_plain_client_drops_the_servers_statements() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut named = client(&pooler).await;
    let first = exchange(&mut named, &run(b"s", "SELECT 11", &[]), 1).await;
    assert_eq!(first.rows, ["11"]);
    // Another client, which never sends a named statement, empties the
    // one server of every prepared statement.
    let mut plain = client(&pooler).await;
    let discarded = exchange(&mut plain, &wire_query("DISCARD ALL"), 1).await;
    assert!(discarded.errors.is_empty(), "{discarded:?}");
    // The pooler knows: it prepares the statement there again.
    let again = exchange(&mut named, &call(b"s", &[]), 1).await;
    assert_eq!(again.rows, ["11"], "{again:?}");
    assert_eq!(again.tags, "2DCZ", "the added Parse is not seen: {again:?}");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_the_buffer_and_long_names_go_through() {
    let pooler = pooler("default_pool_size = 2").await;
    let mut c = client(&pooler).await;
    // The relay reads 16 KiB at a time: ten times that and more.
    let literal = "x".repeat(170 * 1024);
    let name = vec![b'n'; 40 * 1024];
    let sql = format!("SELECT length('{literal}') + length($1::text)");
    let param = "y".repeat(170 * 1024);
    let replies = exchange(&mut c, &run(&name, &sql, &[&param]), 1).await;
    assert_eq!(replies.tags, "12DCZ", "{:?}", replies.errors);
    assert_eq!(replies.rows, [(340 * 1024).to_string()]);
    let again = exchange(&mut c, &call(&name, &["z"]), 1).await;
    assert_eq!(again.rows, [(170 * 1024 + 1).to_string()]);
    // A Bind past the 64 KiB the pooler holds, on a server that has never
    // seen the statement: renamed in its head, its parameter streaming.
    let other = pooler.client().await;
    other.batch_execute("BEGIN").await.unwrap();
    let moved = exchange(&mut c, &call(&name, &[&param]), 1).await;
    assert_eq!(moved.tags, "2DCZ", "{:?}", moved.errors);
    assert_eq!(moved.rows, [(340 * 1024).to_string()]);
    other.batch_execute("COMMIT").await.unwrap();
    // A portal name running past those 64 KiB would carry the statement's
    // name past what the pooler reads: the client is refused; a statement
    // name ending on the last byte read is renamed, one byte further it is
    // refused too.
    let head = 64 * 1024 - 5;
    for (portal_len, name_len) in [(70 * 1024, 0), (0, head - 2), (0, head - 1)] {
        let mut c = client(&pooler).await;
        let portal = vec![b'p'; portal_len];
        let name = if name_len == 0 {
            b"wharf_1".to_vec()
        } else {
            vec![b's'; name_len]
        };
        let mut body = [&portal[..], b"\0", &name[..], b"\0"].concat();
        body.extend_from_slice(&[0; 6]);
        let group = [
            parse(&name, "SELECT 1"),
            message(b'B', &body),
            execute(),
            sync(),
        ]
        .concat();
        if name_len == head - 2 {
            let replies = exchange(&mut c, &group, 1).await;
            assert_eq!(replies.rows, ["1"], "{replies:?}");
            continue;
        }
        // The Parse may be answered first, from an earlier read.
        c.write_all(&group).await.expect("sent");
        let fatal = loop {
            match common::wire::read_message(&mut c).await {
                Some((b'E', body)) => break common::wire::parse_error(&body),
                Some((b'1', _)) => {}
                other => panic!("{portal_len} {name_len}: {other:?}"),
            }
        };
        assert_eq!(fatal.code, "08P01", "{portal_len} {name_len}: {fatal:?}");
        assert!(fatal.message.contains("64 KiB"), "{fatal:?}");
        assert!(common::wire::read_message(&mut c).await.is_none(), "closed");
    }
    pooler.stop().await;
}

/// Runs `ops` random operations over `statements` statements through a
/// pooler keeping at most `cap` per server; every result is checked.
async fn random_stress(cap: usize, seed: u64) {
    let pooler = pooler(&format!(
        "default_pool_size = 2\nmax_prepared_statements = {cap}"
    ))
    .await;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut clients = [client(&pooler).await, client(&pooler).await];
    let mut prepared: Vec<Vec<Option<i32>>> = vec![vec![None; 12]; clients.len()];
    let holder = pooler.client().await;
    for op in 0..100 {
        // Now and then another client holds a server, moving the others.
        if op % 10 == 0 {
            holder.batch_execute("BEGIN").await.unwrap();
        } else if op % 10 == 5 {
            holder.batch_execute("COMMIT").await.unwrap();
        }
        let who = rng.usize(..clients.len());
        let which = rng.usize(..12);
        let name = format!("st{which}");
        let k = i32::try_from(which).unwrap() * 100;
        let arg = rng.i32(0..1000);
        let replies = match prepared[who][which] {
            Some(_) if rng.bool() => {
                exchange(
                    &mut clients[who],
                    &call(name.as_bytes(), &[&arg.to_string()]),
                    1,
                )
                .await
            }
            Some(_) if rng.u8(..4) == 0 => {
                let closed = exchange(
                    &mut clients[who],
                    &[close(name.as_bytes()), sync()].concat(),
                    1,
                )
                .await;
                assert_eq!(closed.tags, "3Z");
                prepared[who][which] = None;
                continue;
            }
            _ => {
                if prepared[who][which].is_some() {
                    exchange(
                        &mut clients[who],
                        &[close(name.as_bytes()), sync()].concat(),
                        1,
                    )
                    .await;
                }
                prepared[who][which] = Some(k);
                let sql = format!("SELECT {k} + $1::int");
                exchange(
                    &mut clients[who],
                    &run(name.as_bytes(), &sql, &[&arg.to_string()]),
                    1,
                )
                .await
            }
        };
        assert!(replies.errors.is_empty(), "cap {cap}, op {op}: {replies:?}");
        assert_eq!(replies.rows, [(k + arg).to_string()], "cap {cap}, op {op}");
    }
    holder.batch_execute("COMMIT").await.ok();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_every_statement_usable() {
    for (cap, seed) in [(1, 1), (2, 2), (5, 5)] {
        random_stress(cap, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_clients_share_two_servers() {
    let pooler = pooler("default_pool_size = 2").await;
    pooler
        .client()
        .await
        .batch_execute("CREATE TABLE ps_items (id int, v text)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..8 {
        let client = pooler.client().await;
        tasks.push(tokio::spawn(async move {
            let add = client.prepare("SELECT $1::int + $2::int").await.unwrap();
            let insert = client
                .prepare("INSERT INTO ps_items VALUES ($1, $2)")
                .await
                .unwrap();
            for i in 0..40 {
                let row = client.query_one(&add, &[&n, &i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), n + i);
                client.batch_execute("BEGIN").await.unwrap();
                client
                    .execute(&insert, &[&n, &format!("{i}")])
                    .await
                    .unwrap();
                if i % 2 == 0 {
                    client.batch_execute("COMMIT").await.unwrap();
                } else {
                    client.batch_execute("ROLLBACK").await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let count: i64 = pooler
        .client()
        .await
        .query_one("SELECT count(*) FROM ps_items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 8 * 20, "committed rows only");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_prepared_mode_has_no_failures() {
    let pooler = pooler("default_pool_size = 2").await;
    let bin = pooler.cluster.bin("pgbench");
    pgbench::init(&bin, pooler.cluster.port());
    // One thread per client: pgbench prepares each statement right before
    // its first use, synchronously, so with more clients per thread than
    // servers a client inside a transaction waits on a thread that waits
    // on a server it holds (through any transaction-mode pooler).
    let output = pgbench::run(
        &bin,
        pooler.port,
        &["-M", "prepared", "-c", "8", "-j", "8", "-T", "3"],
    );
    pgbench::assert_error_free(&output);
    let output = pgbench::run(
        &bin,
        pooler.port,
        &["-M", "prepared", "-S", "-c", "8", "-T", "2"],
    );
    pgbench::assert_error_free(&output);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_reply_after_a_row_description_goes_after_it() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut other = client(&pooler).await;
    let known = "SELECT 2 AS two";
    exchange(&mut other, &run(b"k", known, &[]), 1).await;
    let mut c = client(&pooler).await;
    // Describe ends with a RowDescription; the Parse of a statement the
    // server has is answered by the pooler right after it.
    let replies = exchange(
        &mut c,
        &[
            parse(b"s1", "SELECT 1 AS one"),
            describe(b"s1"),
            parse(b"s2", known),
            sync(),
        ]
        .concat(),
        1,
    )
    .await;
    assert_eq!(replies.tags, "1tT1Z", "{replies:?}");
    let replies = exchange(&mut c, &call(b"s2", &[]), 1).await;
    assert_eq!(replies.rows, ["2"]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_before_the_sync_is_sent_skips_what_follows_until_it() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut c = client(&pooler).await;
    let prepared = exchange(&mut c, &[parse(b"good", "SELECT 5"), sync()].concat(), 1).await;
    assert_eq!(prepared.tags, "1Z");
    // The error comes back on a Flush, before the client sent its Sync.
    c.write_all(&[bind(b"missing", &[]), execute(), flush()].concat())
        .await
        .unwrap();
    let failed = read_replies(&mut c, 0, 1).await;
    assert_eq!(failed.tags, "E");
    // Discarded by the server up to the Sync: only ReadyForQuery comes.
    let skipped = exchange(
        &mut c,
        &[parse(b"later", "SELECT 6"), call(b"good", &[])].concat(),
        1,
    )
    .await;
    assert_eq!(skipped.tags, "Z", "{skipped:?}");
    // The server goes back to the pool, and the session goes on.
    let mut other = client(&pooler).await;
    let replies = exchange(&mut other, &common::wire::query("SELECT 7"), 1).await;
    assert_eq!(replies.rows, ["7"]);
    let again = exchange(&mut c, &call(b"good", &[]), 1).await;
    assert_eq!(again.rows, ["5"]);
    let never = exchange(&mut c, &call(b"later", &[]), 1).await;
    assert_eq!(
        never.errors[0].0, "26000",
        "a skipped Parse prepared nothing"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_reach_or_close_another_clients_statement_by_its_server_name() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut owner = client(&pooler).await;
    exchange(&mut owner, &run(b"mine", "SELECT 8", &[]), 1).await;
    let mut intruder = client(&pooler).await;
    // Until now a client of unnamed statements only, which the pooler
    // does not follow: its Parse's text is looked at all the same.
    let unnamed = exchange(&mut intruder, &run(b"", "SELECT 1", &[]), 1).await;
    assert_eq!(unnamed.rows, ["1"]);
    for n in 1..4 {
        let name = format!("wharf_{n}");
        let text = format!("EXECUTE {name}");
        let executed = exchange(&mut intruder, &run(b"", &text, &[]), 1).await;
        assert_eq!(executed.errors[0].0, "26000", "{executed:?}");
    }
    for n in 1..4 {
        let name = format!("wharf_{n}");
        let closed = exchange(&mut intruder, &[close(name.as_bytes()), sync()].concat(), 1).await;
        assert_eq!(closed.tags, "3Z", "closing a name one never had is fine");
        let reached = exchange(&mut intruder, &call(name.as_bytes(), &[]), 1).await;
        assert_eq!(reached.errors[0].0, "26000", "{reached:?}");
    }
    let replies = exchange(&mut owner, &call(b"mine", &[]), 1).await;
    assert_eq!(replies.rows, ["8"], "{replies:?}");
    pooler.stop().await;
}

/// A pooler of one server where `owner` has prepared `mine` (`SELECT 8`),
/// and `intruder`, with a table `t` of its own, has learnt the name the
/// pooler gave it there.
async fn beside_a_statement() -> (TestPooler, TcpStream, TcpStream, String) {
    let pooler = pooler("default_pool_size = 1").await;
    let mut owner = client(&pooler).await;
    exchange(&mut owner, &run(b"mine", "SELECT 8", &[]), 1).await;
    let mut intruder = client(&pooler).await;
    let names = exchange(
        &mut intruder,
        &wire_query("CREATE TEMP TABLE t (x int); SELECT name FROM pg_prepared_statements"),
        1,
    )
    .await;
    let name = names.rows[0].clone();
    assert!(name.starts_with("wharf_"), "{names:?}");
    (pooler, owner, intruder, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_named_after_copy_data_in_the_same_group_is_guarded() {
    let (pooler, mut owner, mut intruder, name) = beside_a_statement().await;
    // An unnamed COPY FROM STDIN by the extended protocol: the server
    // ignores the Sync sent with it, and after CopyDone reads on, up to
    // the next Sync, as the same group.
    let copy = [
        parse(b"", "COPY t FROM STDIN"),
        bind(b"", &[]),
        execute(),
        sync(),
    ]
    .concat();
    intruder.write_all(&copy).await.expect("sent");
    let copying = read_replies(&mut intruder, 0, 3).await;
    assert_eq!(copying.tags, "12G", "{copying:?}");
    let reach = [message(b'c', b""), call(name.as_bytes(), &[])].concat();
    let replies = exchange(&mut intruder, &reach, 1).await;
    assert!(replies.rows.is_empty(), "the statement ran: {replies:?}");
    assert_eq!(replies.errors[0].0, "26000", "{replies:?}");
    let replies = exchange(&mut owner, &call(b"mine", &[]), 1).await;
    assert_eq!(replies.rows, ["8"], "{replies:?}");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_named_in_a_group_the_pooler_did_not_see_begin_ends_the_session() {
    let (pooler, mut owner, mut intruder, name) = beside_a_statement().await;
    // In a simple COPY FROM STDIN the server ignores a Sync: the group
    // an Execute and a Sync begin there goes on past it, unjudged.
    intruder
        .write_all(&wire_query("COPY t FROM STDIN"))
        .await
        .expect("sent");
    let copying = read_replies(&mut intruder, 0, 1).await;
    assert_eq!(copying.tags, "G", "{copying:?}");
    let reach = [execute(), sync(), call(name.as_bytes(), &[])].concat();
    intruder.write_all(&reach).await.expect("sent");
    let fatal = common::wire::expect_fatal(&mut intruder).await;
    assert_eq!(fatal.code, "08P01", "{fatal:?}");
    assert!(fatal.message.contains("did not see begin"), "{fatal:?}");
    let replies = exchange(&mut owner, &call(b"mine", &[]), 1).await;
    assert_eq!(replies.rows, ["8"], "{replies:?}");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_refused_for_a_stale_plan_runs_again() {
    let pooler = pooler("default_pool_size = 1").await;
    let mut c = client(&pooler).await;
    let ddl = pooler.client().await;
    ddl.batch_execute("CREATE TABLE stale_plan (a int); INSERT INTO stale_plan VALUES (1)")
        .await
        .unwrap();
    let sql = "SELECT * FROM stale_plan";
    assert_eq!(exchange(&mut c, &run(b"s", sql, &[]), 1).await.rows, ["1"]);
    ddl.batch_execute("ALTER TABLE stale_plan ADD COLUMN b int")
        .await
        .unwrap();
    // Outside a transaction, with nothing run before it since the last
    // Sync, and the portal described so that the client learns the new
    // shape: the pooler prepares the statement again and runs it once more.
    let described_call = [bind(b"s", &[]), describe_portal(), execute(), sync()].concat();
    let ran = exchange(&mut c, &described_call, 1).await;
    assert!(ran.errors.is_empty(), "{ran:?}");
    assert_eq!(ran.tags, "2TDCZ", "one answer per request: {ran:?}");
    let twice = exchange(&mut c, &[call(b"s", &[]), call(b"s", &[])].concat(), 2).await;
    assert_eq!(twice.tags, "2DCZ2DCZ", "{twice:?}");
    // Without the Describe the client would read rows of a new shape with
    // the description it kept: it gets PostgreSQL's error, and the
    // statement works from its next use (no re-Parse needed by then).
    ddl.batch_execute("ALTER TABLE stale_plan ADD COLUMN a2 int")
        .await
        .unwrap();
    let kept = exchange(&mut c, &call(b"s", &[]), 1).await;
    assert_eq!(kept.tags, "EZ", "{kept:?}");
    assert_eq!(kept.errors[0].0, "0A000");
    assert_eq!(exchange(&mut c, &call(b"s", &[]), 1).await.tags, "2DCZ");
    // A Describe of the statement is answered in part before the plan is
    // refused: the client gets the error, and the next use works.
    ddl.batch_execute("ALTER TABLE stale_plan ADD COLUMN b2 int")
        .await
        .unwrap();
    let described = exchange(&mut c, &[describe(b"s"), sync()].concat(), 1).await;
    assert_eq!(described.tags, "tEZ", "{described:?}");
    let after = exchange(&mut c, &[describe(b"s"), call(b"s", &[])].concat(), 1).await;
    assert_eq!(after.tags, "tT2DCZ", "{after:?}");
    // Inside a transaction the error must reach the client, which rolls
    // back; its statement is prepared again at the next use all the same.
    ddl.batch_execute("ALTER TABLE stale_plan ADD COLUMN c int")
        .await
        .unwrap();
    let begun = exchange(&mut c, &wire_query("BEGIN"), 1).await;
    assert!(begun.errors.is_empty());
    let refused = exchange(&mut c, &call(b"s", &[]), 1).await;
    assert_eq!(
        refused.errors.first().map(|e| e.0.as_str()),
        Some("0A000"),
        "{refused:?}"
    );
    exchange(&mut c, &wire_query("ROLLBACK"), 1).await;
    let again = exchange(&mut c, &[close(b"s"), run(b"s", sql, &[])].concat(), 1).await;
    assert_eq!(again.tags, "312DCZ", "{again:?}");
    // Another client with the same text gets the new plan too.
    let mut other = client(&pooler).await;
    let fresh = exchange(&mut other, &run(b"t", sql, &[]), 1).await;
    assert!(fresh.errors.is_empty(), "{fresh:?}");
    // A pipeline where something ran before the refused Bind is not run
    // again: the client gets the error.
    assert_eq!(
        exchange(&mut c, &run(b"u", "SELECT 2", &[]), 1).await.rows,
        ["2"]
    );
    ddl.batch_execute("ALTER TABLE stale_plan ADD COLUMN d int")
        .await
        .unwrap();
    let piped = exchange(
        &mut c,
        &[
            bind(b"u", &[]),
            execute(),
            bind(b"s", &[]),
            describe_portal(),
            execute(),
            sync(),
        ]
        .concat(),
        1,
    )
    .await;
    assert_eq!(piped.tags, "2DCEZ", "{piped:?}");
    // Every request before the Sync is run again when nothing had run.
    ddl.batch_execute("ALTER TABLE stale_plan ADD COLUMN e int")
        .await
        .unwrap();
    let both = exchange(
        &mut c,
        &[
            bind(b"s", &[]),
            describe_portal(),
            execute(),
            bind(b"u", &[]),
            execute(),
            sync(),
        ]
        .concat(),
        1,
    )
    .await;
    assert_eq!(both.tags, "2TDC2DCZ", "{both:?}");
    pooler.stop().await;
}
