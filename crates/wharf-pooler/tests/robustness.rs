//! Clients that break the protocol: each is closed (with an ErrorResponse
//! where the protocol allows one), while another client keeps working and
//! the pooler keeps accepting, and nothing in the pooler panics.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use common::wire::{
    self, connect, expect_fatal, login_trusted, message, query, raw_query, read_to_close,
    startup_packet, ErrorFields,
};
use common::{start, Setup, TestPooler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Trust, so raw clients log in without a password exchange.
const TRUSTED: &str = "auth_type = trust\n";

static POOLER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on runtime worker threads, where the pooler's tasks run
/// (the tests' own assertions run on the test thread). A panicking client
/// task would only be logged by Tokio; this makes it fail the test.
fn watch_for_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                POOLER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn assert_no_panics() {
    assert_eq!(
        POOLER_PANICS.load(Ordering::SeqCst),
        0,
        "a pooler task panicked"
    );
}

/// A pooler (trust auth) and a well-behaved client connected to it.
async fn pooler_with_bystander(extra: &str) -> (TestPooler, Client) {
    watch_for_panics();
    let pgbouncer = format!("{TRUSTED}{extra}");
    let pooler = start(Setup {
        pgbouncer: &pgbouncer,
        ..Setup::default()
    })
    .await;
    let bystander = pooler.client().await;
    bystander_works(&bystander, "before").await;
    (pooler, bystander)
}

/// The well-behaved client still gets answers.
async fn bystander_works(client: &Client, when: &str) {
    let sql = format!("SELECT '{when}'");
    let messages = tokio::time::timeout(wire::ANSWER_TIMEOUT, client.simple_query(&sql))
        .await
        .unwrap_or_else(|_| panic!("the bystander's query hung ({when})"))
        .unwrap_or_else(|e| panic!("the bystander's query failed ({when}): {e}"));
    assert!(
        matches!(&messages[1], SimpleQueryMessage::Row(r) if r.get(0) == Some(when)),
        "{messages:?}"
    );
}

/// New clients still get in and get answers.
async fn pooler_accepts(pooler: &TestPooler) {
    let mut raw = login_trusted(pooler.port, "postgres", "postgres").await;
    assert_eq!(raw_query(&mut raw, "SELECT 'new'").await, ["new"]);
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    // The pooler may already have closed on an earlier part; that is fine.
    let _ = stream.write_all(bytes).await;
}

fn fatal(code: &str, message: &str) -> ErrorFields {
    ErrorFields {
        severity: "FATAL".to_owned(),
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_packets_get_a_protocol_error() {
    let (pooler, bystander) = pooler_with_bystander("").await;
    let mut unterminated = startup_packet(&[("user", "postgres")]);
    unterminated.pop();
    let len = unterminated.len() as i32;
    unterminated[..4].copy_from_slice(&len.to_be_bytes());
    let mut protocol_2 = startup_packet(&[("user", "postgres")]);
    protocol_2[4..8].copy_from_slice(&0x0002_0000i32.to_be_bytes());
    let mut two_gb = 0x7fff_ffffi32.to_be_bytes().to_vec();
    two_gb.extend_from_slice(&[0, 3, 0, 0]);
    let cases: Vec<(&str, Vec<u8>, ErrorFields)> = vec![
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            fatal("08P01", "bad packet header: '474554202f204854'"),
        ),
        (
            "a 2 GB length",
            two_gb,
            fatal("08P01", "bad packet header: '7fffffff00030000'"),
        ),
        (
            "a length of 2^31 (negative as i32)",
            vec![0x80, 0, 0, 0, 0, 3, 0, 0],
            fatal("08P01", "bad packet header: '80000000'"),
        ),
        (
            "a length below the minimum",
            vec![0, 0, 0, 3],
            fatal("08P01", "bad packet header: '00000003'"),
        ),
        (
            "parameters without their final NUL",
            unterminated,
            fatal(
                "08P01",
                "invalid startup packet: malformed startup parameters",
            ),
        ),
        (
            "protocol 2",
            protocol_2,
            fatal(
                "08P01",
                "invalid startup packet: unsupported frontend protocol 2.0: server supports 3.0",
            ),
        ),
        (
            "a cancel request of the wrong size",
            vec![0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1],
            fatal(
                "08P01",
                "invalid startup packet: malformed special startup request",
            ),
        ),
        (
            "no user",
            startup_packet(&[("database", "postgres")]),
            fatal("28000", "no user name specified in startup packet"),
        ),
    ];
    for (what, bytes, expected) in cases {
        let mut bad = connect(pooler.port).await;
        send(&mut bad, &bytes).await;
        assert_eq!(expect_fatal(&mut bad).await, expected, "{what}");
        bystander_works(&bystander, what).await;
    }
    pooler_accepts(&pooler).await;
    assert_no_panics();
    pooler.stop().await;
}

/// A startup packet of exactly `len` bytes: user, database and an
/// `application_name` padded to fill it.
fn startup_packet_of(len: usize) -> Vec<u8> {
    let bare = startup_packet(&[
        ("user", "postgres"),
        ("database", "postgres"),
        ("application_name", ""),
    ]);
    let name = "a".repeat(len - bare.len());
    let packet = startup_packet(&[
        ("user", "postgres"),
        ("database", "postgres"),
        ("application_name", &name),
    ]);
    assert_eq!(packet.len(), len);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_packets_up_to_pgbouncers_64_kib_are_taken_past_pkt_buf() {
    // PgBouncer reads a startup length as 16 bits: up to 65,535 bytes get
    // in whatever pkt_buf is; one byte more is a bad header.
    let (pooler, bystander) = pooler_with_bystander("pkt_buf = 4096\n").await;
    for len in [4097, 10_001, 65_535] {
        let mut raw = connect(pooler.port).await;
        send(&mut raw, &startup_packet_of(len)).await;
        let (tag, body) = wire::read_message(&mut raw).await.expect("an answer");
        assert_eq!((tag, body.as_slice()), (b'R', &[0, 0, 0, 0][..]), "{len}");
        bystander_works(&bystander, &format!("{len} bytes")).await;
    }
    let mut bad = connect(pooler.port).await;
    send(&mut bad, &startup_packet_of(65_536)).await;
    assert_eq!(
        expect_fatal(&mut bad).await,
        fatal("08P01", "bad packet header: '0001000000030000'")
    );
    // Real clients with a long application_name and long options log in
    // and run queries (the server keeps 63 bytes of the name).
    let mut config = tokio_postgres::Config::new();
    let options = " -c TimeZone=UTC".repeat(2_000);
    config
        .host("127.0.0.1")
        .port(pooler.port)
        .user("postgres")
        .dbname("postgres")
        .application_name("b".repeat(20_000))
        .options(&options);
    let (client, connection) =
        tokio::time::timeout(wire::ANSWER_TIMEOUT, config.connect(tokio_postgres::NoTls))
            .await
            .expect("the login hung")
            .expect("a long startup packet logs in");
    tokio::spawn(connection);
    let rows = client
        .simple_query("SELECT current_setting('application_name')")
        .await
        .expect("a query after a long startup packet");
    assert!(
        matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("b".repeat(63).as_str())),
        "{rows:?}"
    );
    bystander_works(&bystander, "after").await;
    pooler_accepts(&pooler).await;
    assert_no_panics();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_packets_are_closed_quietly() {
    let (pooler, bystander) = pooler_with_bystander("").await;
    // Half a length field, then the client stops sending.
    let mut bad = connect(pooler.port).await;
    send(&mut bad, &[0, 0]).await;
    bad.shutdown().await.unwrap();
    assert!(read_to_close(&mut bad).await.is_empty());
    bystander_works(&bystander, "half a startup length").await;
    // A startup packet shorter than its length says: the client is still
    // there to read why it is closed.
    let mut bad = connect(pooler.port).await;
    let packet = startup_packet(&[("user", "postgres")]);
    send(&mut bad, &packet[..packet.len() - 3]).await;
    bad.shutdown().await.unwrap();
    assert_eq!(
        expect_fatal(&mut bad).await,
        fatal("08P01", "invalid startup packet: early eof")
    );
    bystander_works(&bystander, "short startup packet").await;
    // After login, half a message header.
    let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
    send(&mut bad, &[b'Q', 0, 0]).await;
    bad.shutdown().await.unwrap();
    assert!(read_to_close(&mut bad).await.is_empty());
    bystander_works(&bystander, "half a header").await;
    pooler_accepts(&pooler).await;
    assert_no_panics();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_message_lengths_after_login_get_a_protocol_error() {
    let (pooler, bystander) = pooler_with_bystander("").await;
    for (what, header, expected) in [
        (
            "length 2^31 (negative as i32)",
            [b'Q', 0x80, 0, 0, 0],
            "invalid message: invalid message length -2147483648 for message",
        ),
        (
            "length 2",
            [b'Q', 0, 0, 0, 2],
            "invalid message: invalid message length 2 for message",
        ),
        (
            "length 0",
            [b'P', 0, 0, 0, 0],
            "invalid message: invalid message length 0 for message",
        ),
    ] {
        let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
        send(&mut bad, &header).await;
        assert_eq!(
            expect_fatal(&mut bad).await,
            fatal("08P01", expected),
            "{what}"
        );
        bystander_works(&bystander, what).await;
    }
    // A bad header right behind a good query: nothing of the batch runs.
    let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
    let mut bytes = query("SELECT 1");
    bytes.extend_from_slice(&[b'Q', 0, 0, 0, 1]);
    send(&mut bad, &bytes).await;
    assert_eq!(
        expect_fatal(&mut bad).await,
        fatal(
            "08P01",
            "invalid message: invalid message length 1 for message"
        )
    );
    bystander_works(&bystander, "after a good query").await;
    pooler_accepts(&pooler).await;
    assert_no_panics();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gigabyte_message_after_login_ends_that_client_only() {
    // 2^31 - 1 is within max_packet_size's default, so the header goes to a
    // server, which refuses it and hangs up; the client hears of it.
    let (pooler, bystander) = pooler_with_bystander("").await;
    let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
    send(&mut bad, &[b'Q', 0x7f, 0xff, 0xff, 0xff]).await;
    send(&mut bad, b"SELECT 1").await;
    assert_eq!(
        expect_fatal(&mut bad).await,
        fatal("08006", "server closed the connection unexpectedly")
    );
    bystander_works(&bystander, "after 2 GB").await;
    // With a max_packet_size the pooler refuses it itself.
    let (pooler, bystander) = {
        pooler.stop().await;
        pooler_with_bystander("max_packet_size = 1048576\n").await
    };
    let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
    send(&mut bad, &[b'Q', 0x7f, 0xff, 0xff, 0xff]).await;
    assert_eq!(
        expect_fatal(&mut bad).await,
        fatal(
            "08P01",
            "invalid message: invalid message length 2147483647 for message"
        )
    );
    bystander_works(&bystander, "after 2 GB, limited").await;
    pooler_accepts(&pooler).await;
    assert_no_panics();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_refused_by_the_server_and_the_client_closed() {
    let (pooler, bystander) = pooler_with_bystander("").await;
    // Random bytes behind a well-formed header of a type no one knows.
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let garbage: Vec<u8> = (0..64).map(|_| rng.u8(..)).collect();
    let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
    send(&mut bad, &message(b'!', &garbage)).await;
    let error = expect_fatal(&mut bad).await;
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        ("08P01", "invalid frontend message type 33"),
    );
    bystander_works(&bystander, "after an unknown type").await;
    pooler_accepts(&pooler).await;
    assert_no_panics();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_message_gives_its_server_back() {
    // One server for everyone: a client that left it half a message behind
    // must not keep it.
    let (pooler, bystander) = pooler_with_bystander("default_pool_size = 1\n").await;
    let sql = query("SELECT 'this query never ends because the client left'");
    for cut in [6, sql.len() / 2, sql.len() - 1] {
        let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
        send(&mut bad, &sql[..cut]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(bad);
        bystander_works(&bystander, &format!("cut at {cut}")).await;
    }
    // Extended protocol without the Sync that would end the batch.
    let mut parse = b"\0SELECT 1\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
    send(&mut bad, &message(b'P', &parse)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(bad);
    bystander_works(&bystander, "after a batch without Sync").await;
    // The same, saying Terminate instead of hanging up.
    let mut bad = login_trusted(pooler.port, "postgres", "postgres").await;
    let mut bytes = message(b'P', &parse);
    bytes.extend_from_slice(&message(b'X', b""));
    send(&mut bad, &bytes).await;
    assert!(read_to_close(&mut bad).await.is_empty());
    bystander_works(&bystander, "after Terminate mid-batch").await;
    pooler_accepts(&pooler).await;
    assert_no_panics();
    pooler.stop().await;
}

/// Variations on a valid startup packet and valid messages.
fn mutate(rng: &mut fastrand::Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    match rng.u8(0..5) {
        0 => {
            // Flip some bits.
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..bytes.len());
                bytes[i] ^= 1 << rng.u8(0..8);
            }
        }
        1 => bytes.truncate(rng.usize(..bytes.len())),
        2 => {
            // A random length field.
            let at = if bytes.len() > 5 && bytes[0].is_ascii_alphabetic() {
                1
            } else {
                0
            };
            if bytes.len() >= at + 4 {
                bytes[at..at + 4].copy_from_slice(&rng.i32(..).to_be_bytes());
            }
        }
        3 => {
            let extra: Vec<u8> = (0..rng.usize(1..64)).map(|_| rng.u8(..)).collect();
            let i = rng.usize(..=bytes.len());
            bytes.splice(i..i, extra);
        }
        _ => bytes = (0..rng.usize(1..128)).map(|_| rng.u8(..)).collect(),
    }
    bytes
}

fn valid_messages(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut parse = b"\0SELECT $1::int\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
    let pieces = [
        query("SELECT 1"),
        query("BEGIN"),
        message(b'P', &parse),
        message(b'B', &bind),
        message(b'E', b"\0\0\0\0\0"),
        message(b'S', b""),
        message(b'H', b""),
        message(b'd', b"copy data"),
        message(b'X', b""),
    ];
    let mut out = Vec::new();
    for _ in 0..rng.usize(1..5) {
        out.extend_from_slice(&pieces[rng.usize(..pieces.len())]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_bad_clients_never_disturb_others() {
    let (pooler, bystander) = pooler_with_bystander("default_pool_size = 2\n").await;
    let mut rng = fastrand::Rng::with_seed(20_240_601);
    let started = Instant::now();
    let budget = Duration::from_secs(90);
    let rounds = 300;
    let mut done = 0;
    for round in 0..rounds {
        if started.elapsed() > budget {
            break;
        }
        let after_login = rng.bool();
        let mut stream = if after_login {
            login_trusted(pooler.port, "postgres", "postgres").await
        } else {
            connect(pooler.port).await
        };
        let valid = if after_login {
            valid_messages(&mut rng)
        } else {
            startup_packet(&[("user", "postgres"), ("database", "postgres")])
        };
        let bytes = mutate(&mut rng, valid);
        send(&mut stream, &bytes).await;
        // Either hang up, or stop sending and see the pooler close.
        if rng.bool() {
            drop(stream);
        } else {
            let _ = stream.shutdown().await;
            let drain = async {
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            };
            assert!(
                tokio::time::timeout(wire::ANSWER_TIMEOUT, drain)
                    .await
                    .is_ok(),
                "round {round}: the pooler kept a client that stopped sending: {bytes:?}"
            );
        }
        if round % 10 == 0 {
            bystander_works(&bystander, &format!("round {round}")).await;
        }
        done += 1;
    }
    assert!(done >= 100, "only {done} rounds in {budget:?}");
    bystander_works(&bystander, "after the fuzz").await;
    pooler_accepts(&pooler).await;
    assert_no_panics();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_late_gets_every_byte_and_holds_no_one_up() {
    let (pooler, bystander) = pooler_with_bystander("").await;
    let mut slow = login_trusted(pooler.port, "postgres", "postgres").await;
    // Far more than the socket buffers between the pooler and the client
    // hold: the pooler's writes to the client find the socket full and
    // must wait for room, then go on when the client reads.
    const LEN: usize = 16 << 20;
    send(
        &mut slow,
        &query(&format!("SELECT repeat('z', {LEN}), 'end'")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bystander_works(&bystander, "while a client reads nothing").await;

    let mut value_len = None;
    loop {
        match wire::read_message(&mut slow).await {
            Some((b'D', body)) => {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                assert!(body[6..6 + len].iter().all(|&b| b == b'z'));
                assert_eq!(&body[6 + len + 4..], b"end");
                value_len = Some(len);
            }
            Some((b'Z', _)) => break,
            Some((b'E', body)) => panic!("the query failed: {body:?}"),
            Some(_) => {}
            None => panic!("the pooler closed the slow client's connection"),
        }
    }
    assert_eq!(value_len, Some(LEN));
    assert_eq!(raw_query(&mut slow, "SELECT 'after'").await, ["after"]);
    bystander_works(&bystander, "after").await;
    assert_no_panics();
    pooler.stop().await;
}
