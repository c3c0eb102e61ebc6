//! `wharf serve` and Unix signals, as PgBouncer: SIGHUP reloads, SIGTERM
//! waits for clients, SIGINT waits for servers, a second one (or SIGQUIT)
//! exits at once, SIGUSR1/SIGUSR2 pause and resume; and two processes
//! sharing a port with `so_reuseport`; and the log lines of `log_pooler_errors`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use wharf_testkit::PgCluster;

#[path = "../../wharf-pooler/tests/common/pgbench.rs"]
mod pgbench;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A throwaway PostgreSQL and a `wharf serve` in front of it.
struct Served {
    cluster: PgCluster,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Served {
    fn new(name: &str, pgbouncer: &str) -> Self {
        let cluster = PgCluster::start().expect("throwaway PostgreSQL");
        let dir =
            std::env::temp_dir().join(format!("wharf-cli-signals-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"postgres\"\n").expect("userlist");
        let port = free_port();
        let served = Self {
            cluster,
            dir,
            port,
            child: None,
        };
        served.write_ini(pgbouncer);
        served
    }

    fn ini(&self) -> PathBuf {
        self.dir.join("pgbouncer.ini")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wharf.log")).unwrap_or_default()
    }

    fn write_ini(&self, pgbouncer: &str) {
        let ini = format!(
            "[databases]\n\
             postgres = host=127.0.0.1 port={pg} dbname=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = md5\n\
             auth_file = {dir}/userlist.txt\n\
             logfile = {dir}/wharf.log\n\
             pool_mode = transaction\n\
             {pgbouncer}\n",
            pg = self.cluster.port(),
            port = self.port,
            dir = self.dir.display(),
        );
        std::fs::write(self.ini(), ini).expect("ini");
    }

    /// Starts `wharf serve` and waits until it accepts connections.
    async fn serve(&mut self) {
        self.child = Some(spawn_wharf(&self.ini()));
        wait_listening(self.port).await;
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    async fn client(&self) -> Result<Client, tokio_postgres::Error> {
        connect(self.port).await
    }

    /// Waits up to `within` for the process to exit; its success if it did.
    async fn exited(&mut self, within: Duration) -> Option<bool> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.success());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pgbench_init(&self) {
        pgbench::init(&self.cluster.bin("pgbench"), self.cluster.port());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_wharf(ini: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("serve")
        .arg(ini)
        // The log level must come from the ini (`verbose`), not the caller.
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wharf serve starts")
}

fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "wharf never listened on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let url = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres connect_timeout=5"
    );
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn value(client: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

/// Waits up to 10 s for the log to contain `needle`.
async fn log_shows(served: &Served, needle: &str) -> bool {
    for _ in 0..100 {
        if served.log().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn server_connections(served: &Served) -> usize {
    served
        .cluster
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND application_name <> 'psql'",
        )
        .expect("psql")
        .parse()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_broken_file_is_logged_and_ignored() {
    let mut served = Served::new("hup", "default_pool_size = 1");
    served.serve().await;
    let client = served.client().await.expect("login");
    value(&client, "SELECT 1").await.expect("query");

    served.write_ini("default_pool_size = many");
    served.signal("HUP");
    let expected = format!("{}:11: default_pool_size", served.ini().display());
    assert!(
        log_shows(&served, &expected).await,
        "no error naming the file, line and key:\n{}",
        served.log()
    );
    assert!(served.log().contains("RELOAD failed"), "{}", served.log());
    value(&client, "SELECT 1")
        .await
        .expect("still served with the old configuration");

    served.write_ini("default_pool_size = 3");
    served.signal("HUP");
    assert!(
        log_shows(&served, "configuration reloaded").await,
        "{}",
        served.log()
    );
    // Three clients in transactions at once need the three servers now allowed.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = served.client().await.expect("login");
        c.batch_execute("BEGIN; SELECT 1").await.expect("begin");
        clients.push(c);
    }
    assert_eq!(server_connections(&served), 3);
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    assert!(served.exited(Duration::ZERO).await.is_none(), "wharf died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_clients_finish_then_exits() {
    let mut served = Served::new("term", "default_pool_size = 4");
    served.pgbench_init();
    served.serve().await;
    let bench = pgbench::spawn(
        served.cluster.bin("pgbench"),
        served.port,
        &["-c", "4", "-T", "3"],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    served.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        served.exited(Duration::ZERO).await.is_none(),
        "exited with clients connected"
    );
    assert!(served.client().await.is_err(), "still accepting clients");
    pgbench::assert_clean(&bench.await.expect("pgbench task"));
    assert_eq!(
        served.exited(Duration::from_secs(5)).await,
        Some(true),
        "did not exit cleanly after the last client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_cuts_no_transaction_then_exits() {
    let mut served = Served::new("int", "");
    served.serve().await;
    let busy = served.client().await.expect("login");
    busy.batch_execute("BEGIN; CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
        .await
        .expect("begin");
    served.signal("INT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served.exited(Duration::ZERO).await.is_none());
    busy.batch_execute("INSERT INTO kept VALUES (2); COMMIT")
        .await
        .expect("the transaction in flight completes");
    assert_eq!(served.exited(Duration::from_secs(5)).await, Some(true));
    let rows = served
        .cluster
        .psql("postgres", "SELECT count(*) FROM kept")
        .expect("psql");
    assert_eq!(rows, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let mut served = Served::new("term2", "");
    served.serve().await;
    let client = served.client().await.expect("login");
    value(&client, "SELECT 1").await.expect("query");
    served.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        served.exited(Duration::ZERO).await.is_none(),
        "exited with a client connected"
    );
    served.signal("TERM");
    assert!(
        served.exited(Duration::from_secs(3)).await.is_some(),
        "a second SIGTERM did not end it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_pauses_and_sigusr2_resumes() {
    let mut served = Served::new("usr", "");
    served.serve().await;
    let client = served.client().await.expect("login");
    value(&client, "SELECT 1").await.expect("query");
    served.signal("USR1");
    assert!(log_shows(&served, "PAUSE").await, "{}", served.log());
    let query = tokio::spawn(async move { value(&client, "SELECT 2").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished(), "a query ran while paused");
    served.signal("USR2");
    let answer = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("resumed")
        .expect("task")
        .expect("query");
    assert_eq!(answer, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_port_with_so_reuseport() {
    let mut served = Served::new("reuse", "so_reuseport = 1");
    served.serve().await;
    let mut second = spawn_wharf(&served.ini());
    // Both serve: the second bound the same port instead of failing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(second.try_wait(), Ok(None)),
        "the second process could not share the port"
    );
    for _ in 0..8 {
        let client = served.client().await.expect("login");
        value(&client, "SELECT 1").await.expect("query");
    }
    // With the first gone, the second still answers on the port.
    served.signal("QUIT");
    assert!(served.exited(Duration::from_secs(5)).await.is_some());
    for _ in 0..4 {
        let client = served.client().await.expect("the second process serves");
        value(&client, "SELECT 1").await.expect("query");
    }
    send_signal(second.id(), "QUIT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(second.try_wait(), Ok(Some(_))) {
        assert!(Instant::now() < deadline, "the second process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_turns_on_debug_lines() {
    for (verbose, debug_expected) in [("verbose = 0", false), ("verbose = 1", true)] {
        let mut served = Served::new(if debug_expected { "v1" } else { "v0" }, verbose);
        served.serve().await;
        let client = served.client().await.expect("login");
        value(&client, "SELECT 1").await.expect("query");
        // Opening a server connection is logged at debug level; the query
        // above needed one, so by now the line is there or never will be.
        let shown = if debug_expected {
            log_shows(&served, "opened connection").await
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            served.log().contains("opened connection")
        };
        assert_eq!(shown, debug_expected, "{verbose}:\n{}", served.log());
        assert!(served.log().contains("INFO"), "{}", served.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_pooler_errors_logs_what_refused_clients_are_told() {
    let mut served = Served::new("poolererr", "log_pooler_errors = 1");
    served.serve().await;
    let wrong = |port: u16| async move {
        let url = format!(
            "host=127.0.0.1 port={port} user=postgres password=wrong dbname=postgres connect_timeout=5"
        );
        tokio_postgres::connect(&url, NoTls).await.map(drop)
    };
    assert!(wrong(served.port).await.is_err());
    let line = "pooler error: password authentication failed for user \"postgres\"";
    assert!(log_shows(&served, line).await, "{}", served.log());

    served.write_ini("log_pooler_errors = 0");
    served.signal("HUP");
    assert!(log_shows(&served, "configuration reloaded").await);
    assert!(wrong(served.port).await.is_err());
    // The refusal itself is still logged as the reason the client closed.
    let reason = "closing client: password authentication failed";
    for _ in 0..50 {
        if served.log().matches(reason).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = served.log();
    assert_eq!(log.matches(reason).count(), 2, "{log}");
    assert_eq!(log.matches(line).count(), 1, "{log}");
}
