//! The service itself: its schema, routes and shutdown. Kept apart from
//! `main.rs` so that the tests can run it in-process against a throwaway
//! database.

use std::future::Future;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_postgres::error::SqlState;
use wharf_postgres::{transaction, PgManager, Pool, PoolExt};

/// How long a request waits for a connection before it is answered with
/// 503: a client would rather hear "busy" than hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// `/health` must answer quickly even when the database is gone, since a
/// load balancer probing it has its own, short timeout.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// Bounds on an order, so one request cannot write unbounded rows.
const MAX_ITEMS: usize = 100;
const MAX_PRODUCT_LEN: usize = 200;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS users (
        id         bigserial PRIMARY KEY,
        name       text NOT NULL,
        email      text NOT NULL UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS orders (
        id         bigserial PRIMARY KEY,
        user_id    bigint NOT NULL REFERENCES users (id),
        total      numeric(12, 2) NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS order_items (
        id       bigserial PRIMARY KEY,
        order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
        product  text NOT NULL,
        quantity integer NOT NULL CHECK (quantity > 0),
        price    numeric(12, 2) NOT NULL CHECK (price >= 0),
        UNIQUE (order_id, product)
    );
";

/// The pool the service runs on, for `database_url`.
///
/// # Errors
///
/// When the URL is unusable (its message never repeats the URL, which may
/// hold a password).
pub fn pool(database_url: &str) -> Result<Pool, Box<dyn std::error::Error + Send + Sync>> {
    let manager = PgManager::from_url(database_url)?.statement_cache(32);
    let pool = Pool::builder(manager)
        .name("service")
        .max_size(10)
        .min_idle(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        // Back within a couple of seconds of the database returning.
        .connect_backoff_max(Duration::from_secs(2))
        .leak_detection_threshold(Duration::from_secs(10))
        .build()?;
    Ok(pool)
}

/// Creates the tables if they are missing.
///
/// # Errors
///
/// When the database cannot be reached or refuses the DDL.
pub async fn migrate(pool: &Pool) -> Result<(), wharf_postgres::Error> {
    let conn = pool.get().await?;
    conn.batch_execute(SCHEMA).await?;
    Ok(())
}

/// The routes.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/users/{id}", get(get_user))
        .route("/orders", post(create_order))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(pool)
}

/// The pool's gauges, counters and latency histograms for Prometheus.
async fn metrics(State(pool): State<Pool>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            wharf_postgres::wharf::MetricsRegistry::CONTENT_TYPE,
        )],
        pool.metrics().to_prometheus(),
    )
        .into_response()
}

/// Serves on `listener` until `shutdown` resolves, lets the requests in
/// flight finish, then closes the pool (which waits for connections still
/// in use).
///
/// # Errors
///
/// When accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    pool: Pool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served = axum::serve(listener, router(pool.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    pool.close().await;
    served
}

/// An error answered as JSON `{"error": "..."}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<wharf_postgres::Error> for ApiError {
    fn from(error: wharf_postgres::Error) -> Self {
        match error {
            wharf_postgres::Error::Postgres(error) => error.into(),
            wharf_postgres::Error::Pool(error) => {
                // Busy or unreachable, but not the client's fault: worth a
                // retry later.
                tracing::warn!(error = %error, "no database connection for a request");
                unavailable()
            }
            other => internal(&other),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        let lost = connection_lost(&error);
        // tokio-postgres displays only "db error"; the adapter's error
        // carries the server's message into the log.
        let error = wharf_postgres::Error::from(error);
        if lost {
            tracing::warn!(error = %error, "lost the database connection during a request");
            return unavailable();
        }
        internal(&error)
    }
}

/// Whether the statement failed because the connection or the server went
/// away (a restart, a failover, an administrator's kill) rather than
/// because of the statement: a retry may well succeed.
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        // Class 08: connection exception; 57P0x: shutdown, crash, recovery.
        let code = code.code();
        return code.starts_with("08") || code.starts_with("57P");
    }
    std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database is unavailable, try again later",
    )
}

/// Logs the details, which may name tables or data, and tells the client
/// only that it was not its fault.
fn internal(error: &dyn std::error::Error) -> ApiError {
    tracing::error!(error = %error, "request failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

async fn get_user(
    State(pool): State<Pool>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) =
        id.map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the user id must be an integer"))?;
    let row = pool
        .query_opt(
            "SELECT id, name, email, \
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM users WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no user {id}")))?;
    Ok(Json(json!({
        "id": row.get::<_, i64>(0),
        "name": row.get::<_, String>(1),
        "email": row.get::<_, String>(2),
        "created_at": row.get::<_, String>(3),
    })))
}

/// `POST /orders` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    user_id: i64,
    items: Vec<NewItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    product: String,
    quantity: i32,
    /// A JSON number such as `9.99`; stored exactly as `numeric(12, 2)`.
    price: serde_json::Number,
}

impl NewOrder {
    /// Checks what the database would reject less clearly, and turns
    /// prices into the decimal text that `numeric` parses exactly.
    fn validate(&self) -> Result<Vec<(String, i32, String)>, ApiError> {
        if self.items.is_empty() {
            return Err(ApiError::invalid("an order needs at least one item"));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(ApiError::invalid(format!(
                "an order has at most {MAX_ITEMS} items"
            )));
        }
        self.items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let product = item.product.trim();
                if product.is_empty() || product.len() > MAX_PRODUCT_LEN {
                    return Err(ApiError::invalid(format!(
                        "items[{i}].product must be 1 to {MAX_PRODUCT_LEN} characters"
                    )));
                }
                if item.quantity <= 0 {
                    return Err(ApiError::invalid(format!(
                        "items[{i}].quantity must be positive"
                    )));
                }
                let price_ok = item
                    .price
                    .as_f64()
                    .is_some_and(|p| p.is_finite() && (0.0..1e10).contains(&p));
                if !price_ok {
                    return Err(ApiError::invalid(format!(
                        "items[{i}].price must be a number from 0 to 9999999999.99"
                    )));
                }
                // serde_json prints the shortest text that reads back as the
                // same number, so 9.99 reaches `numeric` as "9.99", exactly.
                Ok((product.to_owned(), item.quantity, item.price.to_string()))
            })
            .collect()
    }
}

/// What a failed statement inside the order transaction means for the
/// client.
fn order_error(error: tokio_postgres::Error, user_id: i64) -> ApiError {
    match error.code() {
        Some(code) if *code == SqlState::FOREIGN_KEY_VIOLATION => {
            ApiError::invalid(format!("no user {user_id}"))
        }
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => ApiError::new(
            StatusCode::CONFLICT,
            "each product may appear once per order",
        ),
        Some(code) if *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE => {
            ApiError::invalid("the order total is too large")
        }
        _ => error.into(),
    }
}

async fn create_order(
    State(pool): State<Pool>,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // axum already chose the status (400 malformed JSON, 415 wrong content
    // type, 422 wrong shape); only the body is made to match ours.
    let Json(order) =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let items = order.validate()?;
    let user_id = order.user_id;

    // Everything or nothing: a failure at any statement rolls back the order
    // and the items already inserted.
    let (order_id, total) = transaction(&pool, move |tx| {
        Box::pin(async move {
            let order_id: i64 = tx
                .query_one(
                    "INSERT INTO orders (user_id) VALUES ($1) RETURNING id",
                    &[&user_id],
                )
                .await
                .map_err(|e| order_error(e, user_id))?
                .get(0);
            let insert = tx
                .prepare(
                    "INSERT INTO order_items (order_id, product, quantity, price) \
                     VALUES ($1, $2, $3, $4::text::numeric)",
                )
                .await?;
            for (product, quantity, price) in &items {
                tx.execute(&insert, &[&order_id, product, quantity, price])
                    .await
                    .map_err(|e| order_error(e, user_id))?;
            }
            let total: String = tx
                .query_one(
                    "UPDATE orders SET total = \
                         (SELECT sum(quantity * price) FROM order_items WHERE order_id = $1) \
                     WHERE id = $1 RETURNING total::text",
                    &[&order_id],
                )
                .await
                .map_err(|e| order_error(e, user_id))?
                .get(0);
            Ok::<_, ApiError>((order_id, total))
        })
    })
    .await?;

    tracing::info!(order_id, user_id, "order created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": order_id, "user_id": user_id, "total": total })),
    ))
}

/// Pool gauges always; 503 when a trivial query cannot be run within
/// [`HEALTH_TIMEOUT`].
async fn health(State(pool): State<Pool>) -> (StatusCode, Json<Value>) {
    let check = async {
        let conn = pool.get_timeout(HEALTH_TIMEOUT).await?;
        conn.simple_query("SELECT 1").await?;
        Ok::<_, wharf_postgres::Error>(())
    };
    // The timeout also covers a query on a connection that hangs.
    let outcome = match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms",
            HEALTH_TIMEOUT.as_millis()
        )),
    };
    let status = pool.status();
    let pool_json = json!({
        "size": status.size,
        "idle": status.idle,
        "in_use": status.in_use,
        "waiting": status.waiting,
        "max_size": status.max_size,
    });
    match outcome {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "database": "up", "pool": pool_json })),
        ),
        Err(error) => {
            tracing::warn!(error = %error, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unavailable",
                    "database": "down",
                    "error": error,
                    "pool": pool_json,
                })),
            )
        }
    }
}
