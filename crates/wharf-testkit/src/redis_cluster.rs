//! Throwaway Redis Clusters for tests: several [`RedisServer`]s in
//! cluster mode, joined with `redis-cli --cluster create`, each a master
//! of a share of the 16384 slots (no replicas).
//!
//! ```no_run
//! use wharf_testkit::redis_cluster::RedisCluster;
//!
//! let mut cluster = RedisCluster::start(3)?;
//! let nodes = cluster.urls(); // redis://127.0.0.1:<port>/ each
//! cluster.node(0).kill()?; // its slots fail
//! cluster.node(0).start_again()?; // it rejoins with its slots (and no data)
//! cluster.wait_ok()?;
//! # let _ = nodes;
//! # Ok::<(), wharf_testkit::Error>(())
//! ```
//!
//! Needs `redis-cli` (Debian package `redis-tools`, installed with
//! `redis-server`) beside the server binary or on `PATH`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::redis::RedisServer;
use crate::{io_context, Error};

/// How long the nodes get to agree that the cluster is whole.
const OK_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Redis Cluster of masters on `127.0.0.1`. Dropping it kills
/// every node and deletes their directories.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, as `redis-cli --cluster
    /// create` requires), spreads the slots over them and waits until
    /// every node reports `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// Fails if a node does not start, `redis-cli` is missing or fails, or
    /// the cluster is not whole within 30 seconds.
    pub fn start(masters: usize) -> Result<RedisCluster, Error> {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        let nodes = (0..masters)
            .map(|_| RedisServer::start_with_args(&args))
            .collect::<Result<Vec<_>, _>>()?;
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let output = Command::new(redis_cli())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(io_context(
                "running redis-cli --cluster create (install the Debian package `redis-tools`)"
                    .to_owned(),
            ))?;
        if !output.status.success() {
            return Err(Error::Unexpected {
                what: "redis-cli --cluster create".to_owned(),
                detail: String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr),
            });
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// Each node's URL, `redis://127.0.0.1:<port>/`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Node `i`, to kill, stop or start again (it keeps its `nodes.conf`,
    /// so it rejoins with the same slots).
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Waits until every node (all of them running) reports
    /// `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// Fails if that does not happen within 30 seconds.
    pub fn wait_ok(&self) -> Result<(), Error> {
        let deadline = Instant::now() + OK_TIMEOUT;
        loop {
            let whole = self.nodes.iter().all(|node| {
                node.command(&["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if whole {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Unexpected {
                    what: "Redis Cluster".to_owned(),
                    detail: format!("not cluster_state:ok within {OK_TIMEOUT:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `redis-cli` beside `$WHARF_REDIS_SERVER`, else from `PATH`.
fn redis_cli() -> PathBuf {
    std::env::var_os("WHARF_REDIS_SERVER")
        .map(PathBuf::from)
        .and_then(|server| server.parent().map(|dir| dir.join("redis-cli")))
        .filter(|cli| cli.exists())
        .unwrap_or_else(|| PathBuf::from("redis-cli"))
}
