//! Peering (`peer_id`, `[peers]`): two poolers in front of one PostgreSQL,
//! configured as peers of each other, cancel each other's clients' queries
//! when a cancel request reaches the wrong one, on two ports or behind one
//! `so_reuseport` port; a request naming no known peer, or forwarded too
//! often, is dropped and harms nothing.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::console::show;
use common::{free_port, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use wharf_pooler::config;
use wharf_testkit::PgCluster;

/// How long a forwarded cancel may take to land, however it travels.
const PROMPTLY: Duration = Duration::from_secs(5);

/// Where the two poolers listen, known before either starts, so that each
/// one's `[peers]` can name the other.
struct Ends {
    ports: [u16; 2],
    dirs: [PathBuf; 2],
}

/// One pooler of the pair: `peer_id` 1 or 2.
struct Node {
    port: u16,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two peered poolers and their server.
struct Pair {
    cluster: PgCluster,
    nodes: [Node; 2],
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wharf-peers-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Starts poolers 1 and 2 on two ports, or on one port with
/// `so_reuseport`, with the `[peers]` sections `peers` writes for them.
async fn start_pair(reuse_port: bool, peers: impl Fn(&Ends) -> [String; 2]) -> Pair {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::builder().start())
        .await
        .expect("cluster task")
        .expect("throwaway PostgreSQL");
    let mut attempts = 0;
    loop {
        let first = free_port();
        let second = if reuse_port { first } else { free_port() };
        if first == second && !reuse_port {
            continue;
        }
        let ends = Ends {
            ports: [first, second],
            dirs: [temp_dir(), temp_dir()],
        };
        let sections = peers(&ends);
        let mut nodes = Vec::new();
        for (i, section) in sections.iter().enumerate() {
            match start_node(&cluster, &ends, i, section, reuse_port).await {
                Ok(node) => nodes.push(node),
                // A port free when picked may be taken by another test
                // before the pooler binds it: pick again.
                Err(wharf_pooler::StartError::Listen { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse && attempts < 5 =>
                {
                    break;
                }
                Err(err) => panic!("pooler {} binds: {err}", i + 1),
            }
        }
        if let Ok(nodes) = <[Node; 2]>::try_from(nodes) {
            return Pair { cluster, nodes };
        }
        for dir in &ends.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        attempts += 1;
    }
}

/// Pooler `index + 1` of `ends`, with `peers` as its `[peers]` section.
async fn start_node(
    cluster: &PgCluster,
    ends: &Ends,
    index: usize,
    peers: &str,
    reuse_port: bool,
) -> Result<Node, wharf_pooler::StartError> {
    let dir = ends.dirs[index].clone();
    let port = ends.ports[index];
    std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"postgres\"\n").expect("userlist");
    let ini = format!(
        "[databases]\n\
         postgres = host=127.0.0.1 port={pg} dbname=postgres\n\
         [peers]\n\
         {peers}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir = {dir}\n\
         so_reuseport = {reuse}\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         admin_users = postgres\n\
         pool_mode = transaction\n\
         default_pool_size = 12\n\
         peer_id = {id}\n",
        pg = cluster.port(),
        dir = dir.display(),
        reuse = u8::from(reuse_port),
        id = index + 1,
    );
    let path = dir.join("pgbouncer.ini");
    std::fs::write(&path, ini).expect("ini");
    let loaded = config::load(&path).expect("config loads");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let pooler = wharf_pooler::Pooler::bind(loaded.config).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(pooler.run(async {
        let _ = stopped.await;
    }));
    Ok(Node {
        port,
        dir,
        stop: Some(stop),
        task: Some(task),
    })
}

/// The group of the PgBouncer docs' example, over TCP, both processes with
/// the same section (each one's own entry is ignored), plus peer 3, which
/// does not exist: each process sends it to the other, as a group whose
/// sections disagree would.
fn tcp_group(ends: &Ends) -> [String; 2] {
    let [a, b] = ends.ports;
    let group = format!("1 = host=127.0.0.1 port={a}\n2 = host=127.0.0.1 port={b}\n");
    [
        format!("{group}3 = host=127.0.0.1 port={b}\n"),
        format!("{group}3 = host=127.0.0.1 port={a}\n"),
    ]
}

/// The group over each process's own Unix socket, as PgBouncer's docs
/// peer processes sharing one `so_reuseport` port.
fn socket_group(ends: &Ends) -> [String; 2] {
    let [a, b] = &ends.dirs;
    let port = ends.ports[0];
    let group = format!(
        "1 = host={} port={port}\n2 = host={} port={port}\n",
        a.display(),
        b.display()
    );
    [group.clone(), group]
}

/// Logs in over TCP (the poolers trust everyone) and returns the
/// connection, ready for a query, and the cancel key it was given, in wire
/// order.
async fn login(port: u16) -> (TcpStream, [u8; 8]) {
    let mut stream = wire::connect(port).await;
    stream
        .write_all(&wire::startup_packet(&[
            ("user", "postgres"),
            ("database", "postgres"),
        ]))
        .await
        .expect("startup packet sent");
    let mut key = None;
    loop {
        match wire::read_message(&mut stream).await {
            Some((b'R', body)) => assert_eq!(body, [0, 0, 0, 0], "AuthenticationOk"),
            Some((b'K', body)) => key = Some(<[u8; 8]>::try_from(body).expect("8-byte key")),
            Some((b'S', _)) => {}
            Some((b'Z', _)) => return (stream, key.expect("BackendKeyData")),
            other => panic!("unexpected message in the welcome: {other:?}"),
        }
    }
}

/// The peer id a key names: bytes 1 and 2, low byte first.
fn peer_of(key: [u8; 8]) -> u16 {
    u16::from_le_bytes([key[1], key[2]])
}

/// `key` naming `peer` instead.
fn naming(mut key: [u8; 8], peer: u16) -> [u8; 8] {
    key[1..3].copy_from_slice(&peer.to_le_bytes());
    key
}

/// `key` with its TTL spent, as after three forwards.
fn spent(mut key: [u8; 8]) -> [u8; 8] {
    key[7] &= !0b11;
    key
}

/// Sends a raw CancelRequest with `key` to the pooler on `port` and waits
/// for it to close the connection, which it does once it has passed the
/// request on (or dropped it); it never answers.
async fn send_cancel(port: u16, key: [u8; 8]) {
    let mut stream = wire::connect(port).await;
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&key);
    stream
        .write_all(&packet)
        .await
        .expect("cancel request sent");
    assert!(
        wire::read_to_close(&mut stream).await.is_empty(),
        "a cancel request gets no answer"
    );
}

/// How a query sent on a raw connection ended: its rows' first column, or
/// the SQLSTATE of its error. Waits for ReadyForQuery; a query still
/// running after `within` fails the test.
async fn outcome(stream: &mut TcpStream, within: Duration) -> Result<Vec<String>, String> {
    let read = async {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match wire::read_message(stream).await {
                Some((b'D', body)) => {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    rows.push(String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned());
                }
                Some((b'E', body)) => error = Some(wire::parse_error(&body).code),
                Some((b'Z', _)) => return error.map_or(Ok(rows), Err),
                Some(_) => {}
                None => panic!("connection closed during the query"),
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| panic!("the query still runs after {within:?}"))
}

/// A direct connection to the server, to watch what runs there.
async fn observer(cluster: &PgCluster) -> Client {
    let (client, connection) =
        tokio_postgres::connect(&cluster.connection_string("postgres"), NoTls)
            .await
            .expect("direct connection to the server");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Waits until the server runs `query` in `count` sessions.
async fn wait_until_running(observer: &Client, query: &str, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let running: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        if running >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{query:?} never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin console of the pooler on `port`.
async fn console(port: u16) -> Client {
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=pgbouncer");
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("console login");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_reaches_the_other_peer_cancels_the_query() {
    let pair = start_pair(false, tcp_group).await;
    let [a, b] = &pair.nodes;
    let watch = observer(&pair.cluster).await;

    let (mut client, key) = login(a.port).await;
    assert_eq!(peer_of(key), 1, "pooler 1's keys carry its peer id");
    assert_eq!(key[0] & 0x80, 0, "the process id part is positive");
    assert_eq!(key[7] & 0b11, 0b11, "a fresh key's TTL is full");
    let (_other, key_b) = login(b.port).await;
    assert_eq!(peer_of(key_b), 2);

    let long = "SELECT pg_sleep(30)";
    client.write_all(&wire::query(long)).await.unwrap();
    wait_until_running(&watch, long, 1).await;
    let sent = Instant::now();
    send_cancel(b.port, key).await;
    assert_eq!(
        outcome(&mut client, PROMPTLY).await,
        Err("57014".to_owned())
    );
    assert!(
        sent.elapsed() < PROMPTLY,
        "cancelled in {:?}",
        sent.elapsed()
    );
    assert_eq!(
        wire::raw_query(&mut client, "SELECT 'still here'").await,
        ["still here"]
    );

    // Pooler 2 lists the others (its own entry is ignored), and nothing
    // is on its way to them any more.
    let admin = console(b.port).await;
    let peers = show(&admin, "SHOW PEERS").await;
    assert_eq!(
        peers.columns,
        ["peer_id", "host", "port", "pool_size"].map(String::from)
    );
    let a_port = a.port.to_string();
    let row = |id: &str| {
        vec![
            Some(id.to_owned()),
            Some("127.0.0.1".to_owned()),
            Some(a_port.clone()),
            Some("12".to_owned()),
        ]
    };
    assert_eq!(peers.rows, vec![row("1"), row("3")]);
    let pools = show(&admin, "SHOW PEER_POOLS").await;
    assert_eq!(pools.rows.len(), 2, "{pools:?}");
    for column in [
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active_cancel",
        "sv_login",
    ] {
        assert_eq!(pools.number("peer_id", "1", column), 0, "{column}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_naming_no_known_peer_or_forwarded_too_often_are_dropped() {
    let pair = start_pair(false, tcp_group).await;
    let [a, b] = &pair.nodes;
    let watch = observer(&pair.cluster).await;
    let (mut client, key) = login(a.port).await;
    let query = "SELECT pg_sleep(3)::text || 'slept'";
    client.write_all(&wire::query(query)).await.unwrap();
    wait_until_running(&watch, query, 1).await;

    // Peer 7 is in neither [peers]: dropped by whichever pooler gets it.
    send_cancel(b.port, naming(key, 7)).await;
    send_cancel(a.port, naming(key, 7)).await;
    // The client's own key with its TTL spent: pooler 2 must not pass it
    // on to pooler 1, which would cancel the query.
    send_cancel(b.port, spent(key)).await;
    // Peer 3 is each pooler's name for the other: the request goes back
    // and forth three times, then is dropped, quickly.
    let sent = Instant::now();
    send_cancel(a.port, naming(key, 3)).await;
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "a forwarding loop took {:?} to end",
        sent.elapsed()
    );

    assert_eq!(
        outcome(&mut client, Duration::from_secs(10)).await,
        Ok(vec!["slept".to_owned()]),
        "the query was not cancelled"
    );
    // Both poolers go on serving.
    assert_eq!(wire::raw_query(&mut client, "SELECT 'a'").await, ["a"]);
    let (mut other, _) = login(b.port).await;
    assert_eq!(wire::raw_query(&mut other, "SELECT 'b'").await, ["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_poolers_behind_one_reuseport_port_cancel_each_others_queries() {
    let pair = start_pair(true, socket_group).await;
    let port = pair.nodes[0].port;
    let watch = observer(&pair.cluster).await;
    // The kernel spreads connections to the port over both poolers, the
    // clients' and the cancel requests' alike: with eight clients, some
    // cancel requests reach the other pooler (all but surely).
    let long = "SELECT pg_sleep(30)";
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (mut stream, key) = login(port).await;
        stream.write_all(&wire::query(long)).await.unwrap();
        clients.push((stream, key));
    }
    wait_until_running(&watch, long, 8).await;
    let landed: Vec<u16> = clients.iter().map(|(_, key)| peer_of(*key)).collect();
    eprintln!("clients landed on peers {landed:?}");
    for (stream, key) in &mut clients {
        let sent = Instant::now();
        send_cancel(port, *key).await;
        assert_eq!(outcome(stream, PROMPTLY).await, Err("57014".to_owned()));
        assert!(sent.elapsed() < PROMPTLY);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_is_the_same_cancel_request_one_ttl_lower() {
    // Peer 3 is the test itself, taking at most one request at a time.
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let pair = start_pair(false, |ends| {
        tcp_group(ends).map(|group| {
            let others: String = group
                .lines()
                .filter(|l| !l.starts_with("3 "))
                .map(|l| format!("{l}\n"))
                .collect();
            format!("{others}3 = host=127.0.0.1 port={fake_port} pool_size=1\n")
        })
    })
    .await;
    let a = &pair.nodes[0];
    let (_client, key) = login(a.port).await;
    let for_three = naming(key, 3);
    let first = tokio::spawn(send_cancel(a.port, for_three));
    let (mut held, _) = tokio::time::timeout(PROMPTLY, fake.accept())
        .await
        .expect("the request forwarded to peer 3")
        .unwrap();
    let second = tokio::spawn(send_cancel(a.port, for_three));

    let mut packet = [0u8; 16];
    held.read_exact(&mut packet).await.unwrap();
    let mut expected = 16i32.to_be_bytes().to_vec();
    expected.extend_from_slice(&80_877_102i32.to_be_bytes());
    let mut lower = for_three;
    lower[7] -= 1;
    expected.extend_from_slice(&lower);
    assert_eq!(packet.to_vec(), expected);

    // One request sent and held by the peer, the other waiting for the
    // only slot (pool_size = 1).
    let admin = console(a.port).await;
    let counts = |pools: &common::console::Table| {
        [
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active_cancel",
            "sv_login",
        ]
        .map(|c| pools.number("peer_id", "3", c))
    };
    common::console::eventually("the second request waiting", || async {
        counts(&show(&admin, "SHOW PEER_POOLS").await) == [1, 1, 1, 0]
    })
    .await;
    assert!(
        !first.is_finished(),
        "the pooler waits for the peer to take it"
    );

    // The peer takes the first: the pooler closes its client's connection
    // and sends the second.
    drop(held);
    tokio::time::timeout(PROMPTLY, first)
        .await
        .unwrap()
        .unwrap();
    let (mut held, _) = tokio::time::timeout(PROMPTLY, fake.accept())
        .await
        .expect("the second request forwarded")
        .unwrap();
    held.read_exact(&mut packet).await.unwrap();
    assert_eq!(packet.to_vec(), expected);
    drop(held);
    tokio::time::timeout(PROMPTLY, second)
        .await
        .unwrap()
        .unwrap();
    common::console::eventually("nothing on its way to peer 3", || async {
        counts(&show(&admin, "SHOW PEER_POOLS").await) == [0, 0, 0, 0]
    })
    .await;
}
