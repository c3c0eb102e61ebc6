//! `PgManager::from_url`: what it accepts, and clear errors for what it
//! does not, without echoing passwords.

use wharf_postgres::tokio_postgres::config::Host;
use wharf_postgres::{Error, PgManager};

fn config_error(url: &str) -> String {
    match PgManager::from_url(url) {
        Err(Error::Config(message)) => message,
        other => panic!("{url:?} should be rejected, got {other:?}"),
    }
}

#[test]
fn accepts_urls_and_key_value_strings() {
    let manager = PgManager::from_url("postgres://app:s3cret@db.internal:6432/orders").unwrap();
    let config = manager.config();
    assert_eq!(config.get_user(), Some("app"));
    assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
    assert_eq!(config.get_dbname(), Some("orders"));
    assert_eq!(config.get_ports(), [6432]);
    assert_eq!(config.get_hosts(), [Host::Tcp("db.internal".into())]);
    assert!(!manager.uses_tls());
    assert_eq!(manager.statement_cache_capacity(), 0);

    let manager =
        PgManager::from_url("host=/run/postgresql user=app dbname=orders application_name=api")
            .unwrap()
            .statement_cache(16);
    assert_eq!(manager.config().get_application_name(), Some("api"));
    assert_eq!(manager.statement_cache_capacity(), 16);
}

#[test]
fn rejects_what_does_not_parse_without_echoing_it() {
    let message = config_error("postgres://app:hunter2@db:notaport/orders");
    assert!(
        message.starts_with("invalid PostgreSQL connection URL"),
        "{message}"
    );
    assert!(
        message.contains("postgres://user:password@host:port/dbname"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");

    let message = config_error("host=db user=app password=hunter2 sslmode=sometimes");
    assert!(
        message.starts_with("invalid PostgreSQL connection URL"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");

    let message = config_error("just some words");
    assert!(
        message.starts_with("invalid PostgreSQL connection URL"),
        "{message}"
    );
}

#[test]
fn rejects_a_missing_host_or_user_up_front() {
    let message = config_error("user=app dbname=orders");
    assert!(message.contains("no host"), "{message}");

    let message = config_error("postgres://db.internal/orders");
    assert!(message.contains("no user"), "{message}");
}

#[test]
fn debug_output_leaves_the_password_out() {
    let manager = PgManager::from_url("postgres://app:hunter2@db.internal/orders").unwrap();
    let debug = format!("{manager:?}");
    assert!(debug.contains("db.internal"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
}
