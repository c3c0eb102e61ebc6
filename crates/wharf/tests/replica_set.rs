//! Replica sets: reads on the least busy replica that takes reads (probed
//! reachable, a replica, within `max_lag`, circuit not open), the primary
//! when none does or every replica tried fails; read-your-writes within a
//! window; probe tasks that end with the set.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{settle, FakeConn, Script, ScriptError, ScriptedManager};
use parking_lot::Mutex;
use tokio::time::{sleep, Instant};
use wharf::{
    BreakerConfig, CircuitState, ConfigError, MemberState, Pool, Pooled, ReplicaSet, Role,
};

const INTERVAL: Duration = Duration::from_secs(1);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a server's probe answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Is(Option<Role>),
    Fails,
    Hangs,
}

/// A scripted server that also answers role probes as told, and tags its
/// connections with its name so a test sees where a read went.
#[derive(Clone)]
struct Server {
    name: &'static str,
    scripted: ScriptedManager,
    answer: Arc<Mutex<Answer>>,
    probes: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Tagged {
    server: &'static str,
    _conn: FakeConn,
}

impl wharf::Manager for Server {
    type Connection = Tagged;
    type Error = ScriptError;

    async fn connect(&self) -> Result<Tagged, ScriptError> {
        let conn = self.scripted.connect().await?;
        Ok(Tagged {
            server: self.name,
            _conn: conn,
        })
    }

    async fn check(&self, conn: &mut Tagged) -> Result<(), ScriptError> {
        self.scripted.check(&mut conn._conn).await
    }

    fn has_broken(&self, conn: &mut Tagged) -> bool {
        self.scripted.has_broken(&mut conn._conn)
    }

    async fn probe_role(&self, _conn: &mut Tagged) -> Result<Option<Role>, ScriptError> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        let answer = *self.answer.lock();
        match answer {
            Answer::Is(role) => Ok(role),
            Answer::Fails => Err(ScriptError("probe query failed".into())),
            Answer::Hangs => std::future::pending().await,
        }
    }
}

/// The test's handle on one server.
struct Handle {
    pool: Pool<Server>,
    script: Arc<Script>,
    answer: Arc<Mutex<Answer>>,
    probes: Arc<AtomicU64>,
}

impl Handle {
    fn answer(&self, answer: Answer) {
        *self.answer.lock() = answer;
    }

    fn lag(&self, lag: Duration) {
        self.answer(Answer::Is(Some(Role::Replica { lag })));
    }

    fn probes(&self) -> u64 {
        self.probes.load(Ordering::SeqCst)
    }
}

fn server(
    name: &'static str,
    answer: Answer,
    build: impl FnOnce(wharf::Builder<Server>) -> wharf::Builder<Server>,
) -> Handle {
    let (scripted, script) = ScriptedManager::new();
    let manager = Server {
        name,
        scripted,
        answer: Arc::new(Mutex::new(answer)),
        probes: Arc::new(AtomicU64::new(0)),
    };
    let (answer, probes) = (manager.answer.clone(), manager.probes.clone());
    let builder = Pool::builder(manager)
        .name(name)
        .max_size(4)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_backoff(Duration::from_millis(50))
        .connect_backoff_max(Duration::from_millis(50));
    Handle {
        pool: build(builder).build().unwrap(),
        script,
        answer,
        probes,
    }
}

fn primary() -> Handle {
    server("primary", Answer::Is(Some(Role::Primary)), |b| b)
}

fn replica(name: &'static str) -> Handle {
    replica_with(name, |b| b)
}

fn replica_with(
    name: &'static str,
    build: impl FnOnce(wharf::Builder<Server>) -> wharf::Builder<Server>,
) -> Handle {
    server(
        name,
        Answer::Is(Some(Role::Replica {
            lag: Duration::ZERO,
        })),
        build,
    )
}

/// A set of `primary` and `replicas`, probed every `INTERVAL` with a
/// `max_lag` of 1 s, after its first probes.
async fn set_of(primary: &Handle, replicas: &[&Handle]) -> ReplicaSet<Server> {
    let set = ReplicaSet::builder(primary.pool.clone())
        .replicas(replicas.iter().map(|r| r.pool.clone()))
        .max_lag(Duration::from_secs(1))
        .probe_interval(INTERVAL)
        .build()
        .unwrap();
    settle().await;
    set
}

async fn read_from(set: &ReplicaSet<Server>) -> &'static str {
    set.replica().await.expect("a read is served").server
}

/// Lets the next round of probes run.
async fn next_probe() {
    sleep(INTERVAL).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn reads_go_to_the_replica_with_the_fewest_connections_in_use() {
    let (p, a, b) = (primary(), replica("a"), replica("b"));
    let set = set_of(&p, &[&a, &b]).await;
    let held_on_a: Vec<Pooled<Server>> =
        vec![a.pool.get().await.unwrap(), a.pool.get().await.unwrap()];
    let on_b = set.replica().await.unwrap();
    assert_eq!(on_b.server, "b");
    // b has one in use, a two: still b.
    assert_eq!(read_from(&set).await, "b");
    drop(held_on_a);
    // Now a has none in use and b one.
    let on_a = set.replica().await.unwrap();
    assert_eq!(on_a.server, "a");
    let held_on_b = b.pool.get().await.unwrap();
    assert_eq!(read_from(&set).await, "a", "b has two in use, a one");
    drop((on_b, held_on_b));
    assert_eq!(read_from(&set).await, "b");
    assert_eq!(set.status().replica_reads, 5);
}

#[tokio::test(start_paused = true)]
async fn idle_replicas_take_reads_in_turn() {
    let (p, a, b) = (primary(), replica("a"), replica("b"));
    let set = set_of(&p, &[&a, &b]).await;
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(read_from(&set).await);
    }
    served.sort_unstable();
    assert_eq!(served, ["a", "a", "b", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_replica_whose_circuit_is_open_is_skipped_until_it_closes() {
    let breaker = BreakerConfig {
        min_calls: 2,
        open_for: Duration::from_secs(5),
        ..BreakerConfig::default()
    };
    let (p, b) = (primary(), replica("b"));
    let a = replica_with("a", |builder| builder.circuit_breaker(breaker));
    let set = set_of(&p, &[&a, &b]).await;
    // The probe's checkout was a call too.
    while a.pool.status().circuit != CircuitState::Open {
        a.pool.get().await.unwrap().report_failure();
    }
    for _ in 0..4 {
        assert_eq!(read_from(&set).await, "b");
    }
    assert!(!set.status().replicas[0].takes_reads());

    sleep(Duration::from_secs(5)).await; // half-open: its probe closes it
    settle().await;
    assert_eq!(a.pool.status().circuit, CircuitState::Closed);
    let mut served = Vec::new();
    for _ in 0..2 {
        served.push(read_from(&set).await);
    }
    assert!(served.contains(&"a"), "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn a_replica_over_max_lag_is_skipped_and_takes_reads_again_when_its_lag_drops() {
    let (p, a, b) = (primary(), replica("a"), replica("b"));
    let set = set_of(&p, &[&a, &b]).await;
    a.lag(Duration::from_secs(3));
    next_probe().await;
    let lagging = &set.status().replicas[0];
    assert_eq!(
        lagging.state,
        MemberState::Lagging {
            lag: Duration::from_secs(3)
        }
    );
    assert_eq!(
        lagging.role,
        Some(Role::Replica {
            lag: Duration::from_secs(3)
        })
    );
    for _ in 0..4 {
        assert_eq!(read_from(&set).await, "b");
    }

    a.lag(Duration::from_secs(1)); // at the limit: allowed
    next_probe().await;
    assert_eq!(set.status().replicas[0].state, MemberState::Ready);
    let mut served = Vec::new();
    for _ in 0..2 {
        served.push(read_from(&set).await);
    }
    assert!(served.contains(&"a"), "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn reads_fall_back_to_the_primary_when_no_replica_qualifies() {
    let (p, a, b) = (primary(), replica("a"), replica("b"));
    let set = set_of(&p, &[&a, &b]).await;
    a.lag(Duration::from_secs(30));
    b.answer(Answer::Fails);
    next_probe().await;
    assert_eq!(read_from(&set).await, "primary");
    let status = set.status();
    assert_eq!(status.replicas[1].state, MemberState::Unreachable);
    assert_eq!(
        status.replicas[1].last_error.as_deref(),
        Some("probe failed: probe query failed")
    );
    assert_eq!((status.replica_reads, status.primary_fallbacks), (0, 1));

    b.lag(Duration::ZERO);
    next_probe().await;
    assert_eq!(read_from(&set).await, "b");
    assert_eq!(set.status().replicas[1].last_error, None);
}

#[tokio::test(start_paused = true)]
async fn a_set_without_replicas_reads_from_the_primary() {
    let p = primary();
    let set = set_of(&p, &[]).await;
    assert_eq!(read_from(&set).await, "primary");
    assert_eq!(set.status().primary_fallbacks, 1);
}

#[tokio::test(start_paused = true)]
async fn a_replica_takes_no_reads_before_its_first_probe_answers() {
    let p = primary();
    let a = server("a", Answer::Hangs, |b| b);
    let set = set_of(&p, &[&a]).await;
    assert_eq!(set.status().replicas[0].state, MemberState::Unprobed);
    assert_eq!(read_from(&set).await, "primary");

    a.lag(Duration::ZERO);
    set.probe().await;
    assert_eq!(read_from(&set).await, "a");
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_does_not_answer_within_the_interval_fails_and_closes_its_connection() {
    let p = primary();
    let a = server("a", Answer::Hangs, |b| b);
    let set = set_of(&p, &[&a]).await;
    next_probe().await;
    let status = set.status().replicas[0].clone();
    assert_eq!(status.state, MemberState::Unreachable);
    assert_eq!(
        status.last_error.as_deref(),
        Some("probe did not answer within 1s")
    );
    let closed = a.pool.metrics().closed;
    assert!(
        closed.contains(&(wharf::CloseReason::Discarded, 1)),
        "{closed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_says_it_is_a_primary_takes_no_reads() {
    let (p, a) = (primary(), replica("a"));
    let set = set_of(&p, &[&a]).await;
    a.answer(Answer::Is(Some(Role::Primary)));
    next_probe().await;
    assert_eq!(set.status().replicas[0].state, MemberState::NotAReplica);
    assert_eq!(read_from(&set).await, "primary");
}

#[tokio::test(start_paused = true)]
async fn a_manager_that_cannot_tell_its_role_takes_reads_on_load_alone() {
    let (p, a) = (primary(), server("a", Answer::Is(None), |b| b));
    let set = set_of(&p, &[&a]).await;
    let status = &set.status().replicas[0];
    assert_eq!((status.state, status.role), (MemberState::Ready, None));
    assert_eq!(read_from(&set).await, "a");
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_cannot_connect_passes_the_read_to_the_next_and_leaves_the_reads() {
    let (p, b) = (primary(), replica("b"));
    let a = replica_with("a", |builder| builder.fail_fast(true));
    let set = set_of(&p, &[&a, &b]).await;
    // a goes down between two probes: its idle connection is gone, and
    // connecting fails.
    a.script.refuse(true);
    a.pool.close_idle(usize::MAX);
    let mut served = Vec::new();
    for _ in 0..2 {
        served.push(read_from(&set).await);
    }
    assert_eq!(served, ["b", "b"], "the read a failed went on to b");
    let status = set.status();
    assert_eq!(status.replicas[0].state, MemberState::Unreachable);
    assert!(status.replicas[0].last_error.is_some());
    let attempts = a.script.attempts();
    for _ in 0..4 {
        assert_eq!(read_from(&set).await, "b");
    }
    assert_eq!(a.script.attempts(), attempts, "later reads skip a");

    a.script.refuse(false);
    // The first probe may find a's pool still without a connection (a
    // fail_fast pool then answers at once, and asks for one); the next
    // finds it.
    next_probe().await;
    next_probe().await;
    assert_eq!(set.status().replicas[0].state, MemberState::Ready);
}

#[tokio::test(start_paused = true)]
async fn hanging_replicas_leave_the_primary_its_share_of_the_deadline() {
    let p = primary();
    let replicas = [replica("a"), replica("b"), replica("c")];
    let set = ReplicaSet::builder(p.pool.clone())
        .replicas(replicas.iter().map(|r| r.pool.clone()))
        .probe_interval(Duration::from_secs(60))
        .acquire_timeout(Duration::from_secs(1))
        .replica_wait(Duration::from_millis(250))
        .build()
        .unwrap();
    settle().await;
    for r in &replicas {
        r.script.hang(true);
        r.pool.close_idle(usize::MAX);
    }
    let start = Instant::now();
    assert_eq!(read_from(&set).await, "primary");
    // a, b and c 250 ms each; 250 ms were left for the primary.
    assert_eq!(start.elapsed(), Duration::from_millis(750));
    // Waiting on a hanging connect is no connect error: all stay in.
    let status = set.status();
    assert!(status
        .replicas
        .iter()
        .all(|r| r.state == MemberState::Ready));
    assert_eq!(status.primary_fallbacks, 1);
}

#[tokio::test(start_paused = true)]
async fn a_busy_replica_is_passed_over_but_stays_in_the_reads() {
    let p = primary();
    let a = replica_with("a", |builder| builder.max_size(1));
    let set = set_of(&p, &[&a]).await;
    let _held = a.pool.get().await.unwrap();
    assert_eq!(read_from(&set).await, "primary");
    assert_eq!(set.status().replicas[0].state, MemberState::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_finds_every_connection_in_use_leaves_the_state_as_it_was() {
    let p = primary();
    let a = replica_with("a", |builder| builder.max_size(1));
    let set = set_of(&p, &[&a]).await;
    let held = a.pool.get().await.unwrap();
    a.lag(Duration::from_secs(30)); // never seen: the probe gets no connection
    next_probe().await;
    next_probe().await;
    let status = set.status().replicas[0].clone();
    assert_eq!(status.state, MemberState::Ready);
    assert_eq!(status.last_error, None);
    assert_eq!(status.since_probe, Some(INTERVAL * 2));
    assert_eq!(a.probes(), 1);

    drop(held);
    next_probe().await;
    assert!(matches!(
        set.status().replicas[0].state,
        MemberState::Lagging { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn probes_stop_for_a_member_whose_pool_is_closed() {
    let (p, a) = (primary(), replica("a"));
    let set = set_of(&p, &[&a]).await;
    set.close().await;
    for _ in 0..3 {
        next_probe().await;
    }
    assert_eq!((p.probes(), a.probes()), (1, 1));
    assert_eq!(set.status().replicas[0].state, MemberState::Ready);
}

#[tokio::test(start_paused = true)]
async fn reads_after_a_write_go_to_the_primary_within_the_window_then_back_to_replicas() {
    let (p, a) = (primary(), replica("a"));
    let set = ReplicaSet::builder(p.pool.clone())
        .replica(a.pool.clone())
        .read_your_writes(Duration::from_secs(3))
        .build()
        .unwrap();
    settle().await;
    let token = set.wrote();
    assert_eq!(set.replica_after(&token).await.unwrap().server, "primary");
    assert_eq!(read_from(&set).await, "a", "reads without the token");
    sleep(Duration::from_millis(2999)).await;
    assert_eq!(set.replica_after(&token).await.unwrap().server, "primary");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(set.replica_after(&token).await.unwrap().server, "a");
    let status = set.status();
    assert_eq!(
        (
            status.fresh_reads,
            status.replica_reads,
            status.primary_fallbacks
        ),
        (2, 2, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_window_is_max_lag_plus_two_probe_intervals() {
    let (p, a) = (primary(), replica("a"));
    let set = set_of(&p, &[&a]).await; // max_lag 1 s, interval 1 s
    let token = set.wrote();
    sleep(Duration::from_millis(2999)).await;
    assert_eq!(set.replica_after(&token).await.unwrap().server, "primary");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(set.replica_after(&token).await.unwrap().server, "a");
}

#[tokio::test(start_paused = true)]
async fn every_member_is_probed_every_interval() {
    let (p, a) = (primary(), replica("a"));
    let set = set_of(&p, &[&a]).await;
    assert_eq!((p.probes(), a.probes()), (1, 1));
    for round in 2..=4 {
        next_probe().await;
        assert_eq!((p.probes(), a.probes()), (round, round));
    }
    let status = set.status();
    assert_eq!(status.primary.role, Some(Role::Primary));
    assert_eq!(status.primary.state, MemberState::Ready);
    assert_eq!(status.replicas[0].name, "a");
    assert_eq!(status.replicas[0].since_probe, Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn the_probe_tasks_stop_when_the_set_is_dropped() {
    let (p, a) = (primary(), replica("a"));
    let set = set_of(&p, &[&a]).await;
    let clone = set.clone();
    drop(set);
    next_probe().await;
    assert_eq!(a.probes(), 2, "a clone keeps the set");
    drop(clone);
    for _ in 0..5 {
        next_probe().await;
    }
    assert_eq!((p.probes(), a.probes()), (2, 2));
    // The pools are the caller's still.
    assert_eq!(a.pool.get().await.unwrap().server, "a");
}

#[tokio::test(start_paused = true)]
async fn a_zero_probe_interval_is_refused() {
    let p = primary();
    let err = ReplicaSet::builder(p.pool.clone())
        .probe_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::ZeroProbeInterval);
}

#[tokio::test(start_paused = true)]
async fn a_zero_replica_wait_is_refused_rather_than_sending_every_read_to_the_primary() {
    let p = primary();
    for builder in [
        ReplicaSet::builder(p.pool.clone()).replica_wait(Duration::ZERO),
        ReplicaSet::builder(p.pool.clone()).acquire_timeout(Duration::ZERO),
    ] {
        assert_eq!(builder.build().unwrap_err(), ConfigError::ZeroReplicaWait);
    }
}
