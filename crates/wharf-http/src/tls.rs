//! HTTPS: which servers to trust and what certificate to show them, as a
//! rustls client configuration.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// Where Linux distributions and the BSDs keep their trusted root
/// certificates, as one PEM bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// TLS settings for an `https://` origin (node's `https.Agent` options
/// `ca`, `cert` and `key`): the roots that verify the server, and a
/// client certificate for servers that ask for one. Certificates are
/// always verified against the origin's host name; TLS 1.2 and 1.3 only.
///
/// ```no_run
/// # fn run() -> Result<(), wharf_http::Error> {
/// let tls = wharf_http::Tls::with_ca_pem(&std::fs::read("ca.pem").unwrap())?
///     .client_certificate(
///         &std::fs::read("client.pem").unwrap(),
///         &std::fs::read("client.key").unwrap(),
///     )?;
/// let http = wharf_http::HttpPool::with_tls(
///     "https://api.internal:8443",
///     wharf_http::HttpPool::default_config(),
///     tls,
/// )?;
/// # drop(http);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Tls {
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl Tls {
    /// The system's trusted roots (its CA bundle file).
    ///
    /// # Errors
    ///
    /// [`Error::TlsConfig`] when no bundle is found or none of its
    /// certificates loads.
    pub fn system() -> Result<Self, Error> {
        let bundle = SYSTEM_BUNDLES
            .iter()
            .find_map(|path| std::fs::read(path).ok())
            .ok_or_else(|| {
                Error::TlsConfig(format!(
                    "no system CA bundle found (looked for {}); give roots with Tls::with_ca_pem",
                    SYSTEM_BUNDLES.join(", ")
                ))
            })?;
        Self::with_ca_pem(&bundle)
    }

    /// Only the roots in `pem` (one or more PEM certificates): a private
    /// CA.
    ///
    /// # Errors
    ///
    /// [`Error::TlsConfig`] when `pem` holds no usable certificate.
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self, Error> {
        let mut tls = Self {
            roots: RootCertStore::empty(),
            identity: None,
        };
        tls.add_ca_pem(pem)?;
        Ok(tls)
    }

    /// Trusts the roots in `pem` too.
    ///
    /// # Errors
    ///
    /// [`Error::TlsConfig`] when `pem` holds no usable certificate.
    pub fn add_ca_pem(&mut self, pem: &[u8]) -> Result<&mut Self, Error> {
        let certs = certificates(pem, "CA")?;
        let (added, _ignored) = self.roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(Error::TlsConfig("no usable CA certificate".to_owned()));
        }
        Ok(self)
    }

    /// Shows this certificate chain (PEM, leaf first) and private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1) to servers that ask for one.
    ///
    /// # Errors
    ///
    /// [`Error::TlsConfig`] when either does not parse.
    pub fn client_certificate(mut self, chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let chain = certificates(chain_pem, "client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| Error::TlsConfig(format!("client key: {e}")))?;
        self.identity = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// The rustls configuration: these roots, this identity, offering
    /// `alpn`.
    pub(crate) fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsConfig(e.to_string()))?
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| Error::TlsConfig(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::TlsConfig(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::TlsConfig(format!(
            "{what}: no PEM certificate found"
        )));
    }
    Ok(certs)
}
