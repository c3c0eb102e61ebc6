//! `https://` origins: a hyper server behind rustls with certificates made
//! by a test CA. The pool verifies the server against the roots it is
//! given, reuses its TLS connections, shows a client certificate to a
//! server that demands one, and fails clearly when the server cannot be
//! trusted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use wharf_http::{Error, Http2Pool, HttpPool, Tls};

/// A CA and what it signed, as PEM.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    /// A CA that signed nothing here.
    stranger_ca: String,
}

fn authority(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(ca: &(rcgen::Certificate, KeyPair), names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca.0, &ca.1)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let ca = authority("wharf-http test CA");
    let stranger = authority("another CA");
    Pki {
        ca: ca.0.pem(),
        server: leaf(&ca, &["localhost", "127.0.0.1"]),
        client: leaf(&ca, &["client"]),
        stranger_ca: stranger.0.pem(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTPS origin on 127.0.0.1 answering every request with its path;
/// with `client_ca`, it demands a client certificate that CA signed.
/// Returns its address and a count of the TLS connections it accepted.
async fn origin(pki: &Pki, client_ca: Option<&str>) -> (SocketAddr, Arc<AtomicUsize>) {
    origin_speaking(pki, client_ca, false).await
}

/// Like [`origin`], speaking HTTP/2 (ALPN `h2` only) when `h2`, else
/// HTTP/1.1 without ALPN.
async fn origin_speaking(
    pki: &Pki,
    client_ca: Option<&str>,
    h2: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let chain = CertificateDer::pem_slice_iter(pki.server.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    // An HTTP/1.1 origin that knows nothing of ALPN, as many do.
    config.alpn_protocols = if h2 { vec![b"h2".to_vec()] } else { Vec::new() };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                        request.uri().path().to_owned(),
                    ))))
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = http1::Builder::new().serve_connection(io, service).await;
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn requests_go_over_verified_tls_and_reuse_the_connection() {
    let pki = pki();
    let (addr, accepted) = origin(&pki, None).await;
    let tls = Tls::with_ca_pem(pki.ca.as_bytes()).unwrap();
    let url = format!("https://localhost:{}", addr.port());
    let http = HttpPool::with_tls(&url, HttpPool::default_config(), tls).unwrap();
    for path in ["/a", "/b", "/c"] {
        let response = http.get(path).await.unwrap();
        assert_eq!(response.body().as_ref(), path.as_bytes());
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one TLS connection, reused"
    );
    assert_eq!(http.origin(), url);
    // An absolute URL must name the same scheme and authority.
    let wrong = hyper::Request::get(format!("http://localhost:{}/a", addr.port()))
        .body(Bytes::new())
        .unwrap();
    assert!(matches!(
        http.request(wrong).await,
        Err(Error::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn a_server_the_roots_do_not_vouch_for_is_refused() {
    let pki = pki();
    let (addr, accepted) = origin(&pki, None).await;
    let tls = Tls::with_ca_pem(pki.stranger_ca.as_bytes()).unwrap();
    let url = format!("https://localhost:{}", addr.port());
    // Like any connect error, it is retried until the acquire timeout,
    // then reported with its cause.
    let config = wharf::Config {
        acquire_timeout: std::time::Duration::from_millis(500),
        ..HttpPool::default_config()
    };
    let http = HttpPool::with_tls(&url, config, tls).unwrap();
    let err = http.get("/").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("TLS with localhost"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let mut pki = pki();
    let ca = authority("names test CA");
    pki.ca = ca.0.pem();
    pki.server = leaf(&ca, &["elsewhere.test"]);
    let (addr, _) = origin(&pki, None).await;
    let url = format!("https://localhost:{}", addr.port());
    let config = wharf::Config {
        acquire_timeout: std::time::Duration::from_millis(500),
        ..HttpPool::default_config()
    };
    let tls = Tls::with_ca_pem(pki.ca.as_bytes()).unwrap();
    let http = HttpPool::with_tls(&url, config, tls).unwrap();
    let err = http.get("/").await.unwrap_err().to_string();
    assert!(
        err.contains("certificate not valid for name \"localhost\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_demanding_a_client_certificate_gets_one() {
    let pki = pki();
    let (addr, _) = origin(&pki, Some(&pki.ca)).await;
    let url = format!("https://localhost:{}", addr.port());
    let without = HttpPool::with_tls(
        &url,
        HttpPool::default_config(),
        Tls::with_ca_pem(pki.ca.as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(
        without.get("/").await.is_err(),
        "no client certificate, no answer"
    );
    let tls = Tls::with_ca_pem(pki.ca.as_bytes())
        .unwrap()
        .client_certificate(pki.client.0.as_bytes(), pki.client.1.as_bytes())
        .unwrap();
    let with = HttpPool::with_tls(&url, HttpPool::default_config(), tls).unwrap();
    assert_eq!(with.get("/in").await.unwrap().body().as_ref(), b"/in");
}

#[test]
fn bad_tls_settings_are_refused_with_the_reason() {
    let err = Tls::with_ca_pem(b"not a certificate").unwrap_err();
    assert!(matches!(err, Error::TlsConfig(_)), "{err:?}");
    let pki = pki();
    let err = Tls::with_ca_pem(pki.ca.as_bytes())
        .unwrap()
        .client_certificate(pki.client.0.as_bytes(), b"no key here")
        .unwrap_err();
    assert!(err.to_string().contains("client key"), "{err}");
    let tls = Tls::with_ca_pem(pki.ca.as_bytes()).unwrap();
    let err = wharf_http::HttpManager::with_tls("http://127.0.0.1:1", &tls).unwrap_err();
    assert!(matches!(err, Error::InvalidOrigin { .. }), "{err:?}");
}

#[tokio::test]
async fn http2_over_tls_is_chosen_by_alpn() {
    let pki = pki();
    let (addr, accepted) = origin_speaking(&pki, None, true).await;
    let url = format!("https://localhost:{}", addr.port());
    let tls = Tls::with_ca_pem(pki.ca.as_bytes()).unwrap();
    let http = Http2Pool::with_tls(&url, wharf::shared::SharedSettings::default(), tls)
        .await
        .unwrap();
    for path in ["/x", "/y"] {
        let response = http.get(path).await.unwrap();
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.body().as_ref(), path.as_bytes());
    }
    // min_connections (2) opened at start; the server finishes each
    // handshake in its own time.
    for _ in 0..500 {
        if accepted.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_tls_server_without_h2_is_refused_for_http2() {
    let pki = pki();
    let (addr, _) = origin_speaking(&pki, None, false).await;
    let url = format!("https://localhost:{}", addr.port());
    let tls = Tls::with_ca_pem(pki.ca.as_bytes()).unwrap();
    let settings = wharf::shared::SharedSettings {
        min_connections: 0,
        ..wharf::shared::SharedSettings::default()
    };
    let http = Http2Pool::with_tls(&url, settings, tls).await.unwrap();
    let err = http.get("/").await.unwrap_err().to_string();
    assert!(err.contains("did not agree to HTTP/2"), "{err}");
}
