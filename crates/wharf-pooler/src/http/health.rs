//! `GET /health`: whether every database can be served right now.
//!
//! A pool is unhealthy while its server connects are failing (the engine's
//! count of connects failed since the last success) or while its database
//! is paused (PAUSE, SUSPEND): clients would wait or fail. HTTP 503 then,
//! 200 otherwise, with the figures per pool either way.

use serde::Serialize;

use crate::state::PoolerState;
use crate::views;

/// The `/health` document.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `ok`, or `degraded` when a pool is unreachable or paused.
    pub status: &'static str,
    /// Seconds since the pooler started.
    pub uptime_seconds: f64,
    /// wharf's version.
    pub version: &'static str,
    /// Every pool (the admin console's aside).
    pub pools: Vec<PoolHealth>,
}

impl Health {
    /// Whether every pool can serve (HTTP 200).
    pub fn is_healthy(&self) -> bool {
        self.status == "ok"
    }
}

/// One pool's health.
#[derive(Debug, Clone, Serialize)]
pub struct PoolHealth {
    /// The database.
    pub database: String,
    /// The pool's user.
    pub user: String,
    /// `session`, `transaction` or `statement`.
    pub mode: &'static str,
    /// Clients linked to a server or idle (`cl_active`).
    pub clients_active: usize,
    /// Clients waiting for a server (`cl_waiting`).
    pub clients_waiting: usize,
    /// Servers linked to a client (`sv_active`).
    pub servers_active: usize,
    /// Servers idle (`sv_idle` + `sv_used`).
    pub servers_idle: usize,
    /// The pool's maximum size.
    pub max_size: usize,
    /// PAUSE or SUSPEND in force for its database.
    pub paused: bool,
    /// DISABLE in force for its database.
    pub disabled: bool,
    /// No server connect failed since the last that succeeded.
    pub reachable: bool,
    /// The last connect error, while connects fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The health of every pool now.
pub fn report(state: &PoolerState) -> Health {
    let rows = views::pool_rows(state);
    let pools: Vec<PoolHealth> = state
        .router()
        .pools()
        .iter()
        .map(|p| {
            let row = rows
                .iter()
                .find(|r| r.database == p.database() && r.user == p.user());
            let (failures, last_error) = p.connect_failures();
            PoolHealth {
                database: p.database().to_owned(),
                user: p.user().to_owned(),
                mode: p.mode().as_str(),
                clients_active: row.map_or(0, |r| r.cl_active),
                clients_waiting: row.map_or(0, |r| r.cl_waiting),
                servers_active: row.map_or(0, |r| r.sv_active),
                servers_idle: row.map_or(0, |r| r.sv_idle + r.sv_used),
                max_size: p.status().max_size,
                paused: p.control().is_paused(),
                disabled: p.control().is_disabled(),
                reachable: failures == 0,
                last_error: (failures > 0).then(|| {
                    last_error.map_or_else(|| "connect failed".to_owned(), |e| e.to_string())
                }),
            }
        })
        .collect();
    let healthy = pools.iter().all(|p| p.reachable && !p.paused);
    Health {
        status: if healthy { "ok" } else { "degraded" },
        uptime_seconds: state.router().stats().uptime().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION"),
        pools,
    }
}
