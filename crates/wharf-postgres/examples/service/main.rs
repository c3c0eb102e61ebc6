//! An HTTP service on a wharf PostgreSQL pool, after the Express example in
//! the pooling guides: users, orders in a transaction, a health check that
//! reports the pool, and a graceful shutdown.
//!
//! ```sh
//! DATABASE_URL=postgres://app:secret@localhost/app \
//! LISTEN=127.0.0.1:3000 \
//! cargo run -p wharf-postgres --example service
//!
//! curl localhost:3000/health
//! curl localhost:3000/users/1
//! curl -X POST localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"user_id": 1, "items": [{"product": "tea", "quantity": 2, "price": 4.5}]}'
//! ```
//!
//! SIGTERM or Ctrl-C stops accepting connections, lets requests in flight
//! finish, then closes the pool.

mod app;

use std::process::ExitCode;

use tokio::net::TcpListener;

const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let database_url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL, e.g. postgres://app:secret@localhost:5432/app")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| DEFAULT_LISTEN.to_owned());

    let pool = app::pool(&database_url)?;
    app::migrate(&pool)
        .await
        .map_err(|e| format!("creating the tables: {e}"))?;
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    tracing::info!(address = %listener.local_addr()?, "listening");

    app::serve(listener, pool, shutdown_signal()).await?;
    tracing::info!("shut down");
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what `docker stop` and
/// Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
