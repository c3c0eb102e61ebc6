//! Reading the PEM files the TLS settings name: certificate chains,
//! private keys and root certificates, each error naming the setting and
//! the file.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::TlsError;

/// Where a system's trusted root certificates usually are, for servers
/// verified without `server_tls_ca_file` (as libtls falls back to them).
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The bytes of every file read, hashed: two configurations with the same
/// settings and the same file contents build the same TLS context.
#[derive(Default)]
pub(super) struct Fingerprint(std::collections::hash_map::DefaultHasher);

impl Fingerprint {
    pub(super) fn add(&mut self, part: impl Hash) {
        part.hash(&mut self.0);
    }

    pub(super) fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// Reads `path`, the value of `key`.
pub(super) fn read(
    key: &'static str,
    path: &Path,
    seen: &mut Fingerprint,
) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })?;
    seen.add(&bytes);
    Ok(bytes)
}

/// The certificate chain in `key`'s file.
pub(super) fn certificates(
    key: &'static str,
    path: &Path,
    seen: &mut Fingerprint,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path, seen)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad(key, path, &format!("not a PEM certificate file: {err}")))?;
    if chain.is_empty() {
        return Err(bad(key, path, "no certificate found"));
    }
    Ok(chain)
}

/// The private key in `key`'s file.
pub(super) fn private_key(
    key: &'static str,
    path: &Path,
    seen: &mut Fingerprint,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(key, path, seen)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|err| bad(key, path, &format!("no private key found: {err}")))
}

/// The root certificates in `key`'s file, or the system's when `path` is
/// `None`.
pub(super) fn roots(
    key: &'static str,
    path: Option<&Path>,
    seen: &mut Fingerprint,
) -> Result<Arc<RootCertStore>, TlsError> {
    let path: PathBuf = match path {
        Some(path) => path.to_owned(),
        None => SYSTEM_ROOTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(TlsError::NoRoots { key })?,
    };
    let mut store = RootCertStore::empty();
    for cert in certificates(key, &path, seen)? {
        store
            .add(cert)
            .map_err(|err| bad(key, &path, &format!("unusable CA certificate: {err}")))?;
    }
    Ok(Arc::new(store))
}

fn bad(key: &'static str, path: &Path, reason: &str) -> TlsError {
    TlsError::File {
        key,
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}
