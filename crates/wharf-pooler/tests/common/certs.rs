//! Certificates made at test time: a CA, a server certificate it signs, a
//! client certificate it signs, and a second CA that signs nothing the
//! others trust.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// PEM files in a directory of their own.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate the other CA signed.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
    /// The server certificate and key, for a cluster's data directory.
    pub server_pem: String,
    pub server_key_pem: String,
}

impl Drop for Certs {
    /// The files go with the test that issued them: each test run made a
    /// directory in the temporary directory and left it there.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn authority(name: &str) -> Authority {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Authority {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

fn leaf(by: &Authority, names: &[&str], common_name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.signed_by(&key, &by.cert, &by.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    // libpq refuses a private key others can read.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Issues a server certificate for `server_names` and a client
/// certificate for the user `client_cn`.
pub fn issue(server_names: &[&str], client_cn: &str) -> Certs {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wharf-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = authority("wharf test CA");
    let other = authority("some other CA");
    let (server_pem, server_key_pem) = leaf(&ca, server_names, server_names[0]);
    let (client_pem, client_key_pem) = leaf(&ca, &[], client_cn);
    let (stranger_pem, stranger_key_pem) = leaf(&other, &[], client_cn);
    let certs = Certs {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        stranger_cert: dir.join("stranger.pem"),
        stranger_key: dir.join("stranger.key"),
        dir,
        server_pem,
        server_key_pem,
    };
    write(&certs.ca, &ca.cert.pem());
    write(&certs.other_ca, &other.cert.pem());
    write(&certs.server_cert, &certs.server_pem);
    write(&certs.server_key, &certs.server_key_pem);
    write(&certs.client_cert, &client_pem);
    write(&certs.client_key, &client_key_pem);
    write(&certs.stranger_cert, &stranger_pem);
    write(&certs.stranger_key, &stranger_key_pem);
    certs
}
