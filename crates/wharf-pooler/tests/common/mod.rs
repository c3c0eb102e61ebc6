//! A pooler in front of a throwaway PostgreSQL, for end-to-end tests with
//! real clients (tokio-postgres, psql, pgbench).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use wharf_pooler::config;
use wharf_testkit::PgCluster;

pub struct TestPooler {
    pub cluster: PgCluster,
    pub port: u16,
    /// The HTTP endpoint's port, when `http_listen_port` is set.
    pub http_port: Option<u16>,
    pub dir: PathBuf,
    /// The pooler's shared state (its lifecycle: reload, shutdown).
    pub shared: std::sync::Arc<wharf_pooler::PoolerState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Options for the pooler under test.
pub struct Setup<'a> {
    /// Extra lines for the `[pgbouncer]` section.
    pub pgbouncer: &'a str,
    /// Extra lines for `[databases]`.
    pub databases: &'a str,
    /// The auth file's lines.
    pub userlist: &'a str,
    /// Server `max_connections`.
    pub max_connections: u32,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            pgbouncer: "",
            databases: "",
            userlist: "\"postgres\" \"postgres\"\n",
            max_connections: 100,
        }
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wharf-pooler-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub async fn start(setup: Setup<'_>) -> TestPooler {
    let max = setup.max_connections;
    let cluster =
        tokio::task::spawn_blocking(move || PgCluster::builder().max_connections(max).start())
            .await
            .expect("cluster task")
            .expect("throwaway PostgreSQL");
    start_with(cluster, setup).await
}

pub async fn start_with(cluster: PgCluster, setup: Setup<'_>) -> TestPooler {
    let dir = temp_dir();
    let pg = cluster.port();
    std::fs::write(dir.join("userlist.txt"), setup.userlist).expect("userlist");
    let mut pgbouncer = setup.pgbouncer.to_owned();
    // A port free when picked may be taken by another test before the
    // pooler binds it: pick again (the HTTP port too) and retry.
    let mut attempts = 0;
    let (pooler, port) = loop {
        let port = free_port();
        let ini = format!(
            "[databases]\n\
             postgres = host=127.0.0.1 port={pg} dbname=postgres\n\
             {databases}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir = {dir}\n\
             auth_type = md5\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = 5\n\
             {pgbouncer}\n",
            databases = setup.databases,
            dir = dir.display(),
        );
        let path = dir.join("pgbouncer.ini");
        std::fs::write(&path, ini).expect("ini");
        let loaded = config::load(&path).expect("config loads");
        match wharf_pooler::Pooler::bind(loaded.config).await {
            Ok(pooler) => break (pooler, port),
            Err(wharf_pooler::StartError::Listen { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && attempts < 5 =>
            {
                attempts += 1;
                pgbouncer = pgbouncer
                    .lines()
                    .map(|line| match line.split_once('=') {
                        Some((key, _)) if key.trim() == "http_listen_port" => {
                            format!("http_listen_port = {}", free_port())
                        }
                        _ => line.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            Err(err) => panic!("pooler binds: {err:?}"),
        }
    };
    let http_port = pooler.http_addr().map(|addr| addr.port());
    let shared = pooler.state();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(pooler.run(async {
        let _ = stopped.await;
    }));
    TestPooler {
        cluster,
        port,
        http_port,
        dir,
        shared,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestPooler {
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=10",
            self.port
        )
    }

    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.url(user, password, db), NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Logs in through the pooler; a login that hangs fails the test.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        tokio::time::timeout(Duration::from_secs(30), self.connect(user, password, db))
            .await
            .unwrap_or_else(|_| panic!("login of {user} to {db} hung"))
    }

    pub async fn client(&self) -> Client {
        self.connect("postgres", "postgres", "postgres")
            .await
            .expect("client connects through the pooler")
    }

    /// Asserts that a new client gets a query through.
    pub async fn serves_a_new_client(&self) {
        self.client()
            .await
            .simple_query("SELECT 1")
            .await
            .expect("a new client's query is served");
    }

    /// Server-side connections that are not psql's: neither the asking
    /// one nor earlier ones, whose backends may still be exiting.
    pub fn server_connections(&self) -> usize {
        self.cluster
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND application_name <> 'psql'",
            )
            .expect("psql")
            .parse()
            .expect("a count")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration file the pooler was started with.
    pub fn ini(&self) -> PathBuf {
        self.dir.join("pgbouncer.ini")
    }

    /// Waits up to `within` for `Pooler::run` to return (after a
    /// shutdown); `true` if it did.
    pub async fn finished(&mut self, within: Duration) -> bool {
        let Some(task) = self.task.as_mut() else {
            return true;
        };
        if tokio::time::timeout(within, task).await.is_ok() {
            self.task = None;
            true
        } else {
            false
        }
    }

    /// Runs a client program (psql, pgbench) against the pooler.
    pub fn run_client(&self, program: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(self.cluster.bin(program))
            .args(args)
            .env("PGPASSWORD", "postgres")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("client program runs")
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for TestPooler {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tokio-postgres client whose connection task reports the notices it
/// receives and how the connection ended.
pub struct Watched {
    pub client: Client,
    pub notices: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
    pub ended: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl TestPooler {
    /// A client as `postgres` whose notices and connection end are watched.
    pub async fn watched_client(&self) -> Watched {
        let (client, mut connection) =
            tokio_postgres::connect(&self.url("postgres", "postgres", "postgres"), NoTls)
                .await
                .expect("client connects through the pooler");
        let (tx, notices) = tokio::sync::mpsc::unbounded_channel();
        let ended = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                        let _ = tx.send(notice);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Err(err),
                    None => return Ok(()),
                }
            }
        });
        Watched {
            client,
            notices,
            ended,
        }
    }

    /// Runs psql through the pooler as `postgres` with `-X -A -t` and
    /// `ON_ERROR_STOP`, then `args`.
    pub fn psql(&self, args: &[&str]) -> std::process::Output {
        let port = self.port.to_string();
        let mut all = vec![
            "-h",
            "127.0.0.1",
            "-p",
            port.as_str(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
        ];
        all.extend_from_slice(args);
        self.run_client("psql", &all)
    }
}

/// The first column of the first row `sql` returns by the simple protocol;
/// a panic if it takes longer than `within` or returns no row.
pub async fn first_text(
    client: &Client,
    sql: &str,
    within: Duration,
) -> Result<String, tokio_postgres::Error> {
    let messages = tokio::time::timeout(within, client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql:?} hung"))?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some(row.get(0).unwrap_or_default().to_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql:?} returned no row")))
}

pub mod certs;
pub mod console;
pub mod pgbench;
pub mod shows;
pub mod wire;
