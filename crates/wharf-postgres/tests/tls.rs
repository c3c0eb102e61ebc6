//! TLS to a real server with `ssl = on`, its certificate issued by a test
//! CA that the client trusts (or, to see verification bite, does not).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cluster, pool};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use wharf_postgres::rustls::pki_types::CertificateDer;
use wharf_postgres::{rustls, Error, PgManager, Pool, PoolExt};
use wharf_testkit::PgCluster;

/// A CA, and a server certificate for 127.0.0.1 signed by it.
struct Certificates {
    ca: CertificateDer<'static>,
    server_pem: String,
    server_key_pem: String,
}

fn issue(common_name: &str) -> Certificates {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();

    Certificates {
        ca: ca.der().clone(),
        server_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

async fn tls_cluster(certs: &Certificates) -> PgCluster {
    // ssl_cert_file and ssl_key_file default to these names in the data
    // directory.
    cluster(
        PgCluster::builder()
            .file("server.crt", certs.server_pem.clone())
            .file("server.key", certs.server_key_pem.clone())
            .setting("ssl", "on"),
    )
    .await
}

fn client_config(trusted: CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted).unwrap();
    // An explicit provider: the process-wide default is ambiguous when some
    // other crate in the build enables a second one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn encrypted(pool: &Pool) -> bool {
    pool.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_encrypted_and_verified() {
    let certs = issue("wharf test CA");
    let cluster = tls_cluster(&certs).await;

    let url = format!("{}?sslmode=require", cluster.url("postgres"));
    let manager = PgManager::from_url(&url)
        .unwrap()
        .with_tls(client_config(certs.ca.clone()))
        .statement_cache(4);
    assert!(manager.uses_tls());
    let pool = pool(manager, "tls", 2);

    assert!(encrypted(&pool).await);
    let row = pool
        .query_one(
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let version: String = row.get(0);
    assert!(version.starts_with("TLSv1."), "{version}");

    // The same server without TLS on the client side: the check above is
    // not vacuous.
    let plain = pool_for_plain(&cluster);
    assert!(!encrypted(&plain).await);

    plain.close().await;
    pool.close().await;
}

fn pool_for_plain(cluster: &PgCluster) -> Pool {
    pool(
        PgManager::from_url(&cluster.url("postgres")).unwrap(),
        "tls_plain",
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_an_unknown_ca_is_refused() {
    let certs = issue("wharf test CA");
    let stranger = issue("someone else's CA");
    let cluster = tls_cluster(&certs).await;

    let url = format!("{}?sslmode=require", cluster.url("postgres"));
    let manager = PgManager::from_url(&url)
        .unwrap()
        .with_tls(client_config(stranger.ca));
    let pool = Pool::builder(manager)
        .max_size(1)
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    let err = pool.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::Pool(wharf::Error::Timeout { .. })),
        "{err:?}"
    );
    // The pool's timeout names the cause, down to the certificate.
    let message = err.to_string();
    assert!(message.contains("TLS"), "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    pool.close().await;
}
