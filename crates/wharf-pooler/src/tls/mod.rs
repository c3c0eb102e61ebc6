//! The TLS contexts the settings describe: the acceptor clients' TLS
//! connections are answered with (`client_tls_*`) and the connector the
//! pooler opens servers' with (`server_tls_*`), built with rustls (ring).
//!
//! They are built whole from the settings at start, on RELOAD and on a
//! console `SET`; a file that cannot be read or a value rustls cannot
//! honour is an error, and the configuration in force stays.

mod files;
mod suites;
mod verify;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{Settings, SslMode};
use crate::net::{
    Encrypted, ServerAddr, ServerStream, TcpOptions, TlsClientStream, TlsServerStream,
};
use files::Fingerprint;

/// Why a TLS setting cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file a setting names cannot be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        /// The setting.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file a setting names holds no usable certificate or key.
    #[error("{key}: {}: {reason}", path.display())]
    File {
        /// The setting.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Servers are to be verified, no CA file is set and the system has
    /// no CA bundle either.
    #[error("{key}: not set, and no system CA bundle found to verify servers with")]
    NoRoots {
        /// The setting.
        key: &'static str,
    },
    /// A mode that needs files that are not set.
    #[error("{key} = {mode} needs {needs}")]
    Needs {
        /// The mode's setting.
        key: &'static str,
        /// The mode.
        mode: SslMode,
        /// What must be set.
        needs: &'static str,
    },
    /// A value rustls cannot honour.
    #[error("{key} = \"{value}\": {reason}")]
    Value {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination (a certificate that does not match
    /// its key, protocols without suites).
    #[error("{key}: {source}")]
    Rustls {
        /// The setting most likely at fault.
        key: &'static str,
        /// rustls's reason.
        source: rustls::Error,
    },
}

impl TlsError {
    /// The setting the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::File { key, .. }
            | TlsError::NoRoots { key }
            | TlsError::Needs { key, .. }
            | TlsError::Value { key, .. }
            | TlsError::Rustls { key, .. } => key,
        }
    }
}

/// SSLRequest: length 8, then the request code 1234/5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Why a server connection could not be opened as `server_tls_sslmode`
/// asks.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Connecting, writing or reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// TLS was required and could not be had, or the server failed the
    /// certificate check.
    #[error("{0}")]
    Refused(String),
    /// The server answered the SSLRequest with neither 'S' nor 'N'.
    #[error("the server answered the SSLRequest with neither S nor N")]
    BadAnswer,
}

/// Both sides' TLS, as the settings in force describe them.
#[derive(Debug, Clone)]
pub struct TlsContexts {
    client: ClientTls,
    server: ServerTls,
    warnings: Vec<String>,
}

impl TlsContexts {
    /// Builds both sides from `settings`, reading every file they name.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed, a mode without the files it
    /// needs, or a protocol or cipher list rustls has nothing for.
    pub fn from_settings(settings: &Settings) -> Result<Self, TlsError> {
        let mut warnings = Vec::new();
        if settings.auth_type == crate::config::AuthType::Cert
            && !matches!(
                settings.client_tls_sslmode,
                SslMode::VerifyCa | SslMode::VerifyFull
            )
        {
            warnings.push(format!(
                "auth_type = cert with client_tls_sslmode = {}: no client certificate is verified, so every login will fail (use verify-ca or verify-full)",
                settings.client_tls_sslmode
            ));
        }
        let client = ClientTls::from_settings(settings, &mut warnings)?;
        let server = ServerTls::from_settings(settings, &mut warnings)?;
        Ok(TlsContexts {
            client,
            server,
            warnings,
        })
    }

    /// The client side.
    pub fn client(&self) -> &ClientTls {
        &self.client
    }

    /// The server side.
    pub fn server(&self) -> &ServerTls {
        &self.server
    }

    /// Settings accepted that rustls honours only in part.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// How clients' TLS is answered (`client_tls_sslmode` and its files).
#[derive(Clone)]
pub struct ClientTls {
    mode: SslMode,
    acceptor: Option<TlsAcceptor>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ClientTls {
    fn from_settings(settings: &Settings, warnings: &mut Vec<String>) -> Result<Self, TlsError> {
        let mode = settings.client_tls_sslmode;
        if mode == SslMode::Disable {
            return Ok(ClientTls {
                mode,
                acceptor: None,
            });
        }
        let (Some(key_file), Some(cert_file)) = (
            nonempty(&settings.client_tls_key_file),
            nonempty(&settings.client_tls_cert_file),
        ) else {
            return Err(TlsError::Needs {
                key: "client_tls_sslmode",
                mode,
                needs: "client_tls_key_file and client_tls_cert_file",
            });
        };
        let mut seen = Fingerprint::default();
        let chain = files::certificates("client_tls_cert_file", cert_file, &mut seen)?;
        let key = files::private_key("client_tls_key_file", key_file, &mut seen)?;
        let (provider, versions) = provider(Side::Client, settings, warnings)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|source| rustls_error("client_tls_protocols", source))?;
        let builder = if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            let ca_file = nonempty(&settings.client_tls_ca_file).ok_or(TlsError::Needs {
                key: "client_tls_sslmode",
                mode,
                needs: "client_tls_ca_file to verify client certificates with",
            })?;
            let roots = files::roots("client_tls_ca_file", Some(ca_file), &mut seen)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|err| TlsError::Value {
                    key: "client_tls_ca_file",
                    value: ca_file.display().to_string(),
                    reason: err.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|source| rustls_error("client_tls_key_file", source))?;
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(ClientTls {
            mode,
            acceptor: Some(TlsAcceptor::from(Arc::new(config))),
        })
    }

    /// Whether an SSLRequest is answered 'S'.
    pub fn offered(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Whether a TCP client must use TLS (`require` and stronger).
    pub fn required(&self) -> bool {
        demands_tls(self.mode)
    }

    /// The TLS handshake with a client that asked for it and was told 'S'.
    ///
    /// # Errors
    ///
    /// The handshake failed (a bad or missing client certificate, no
    /// common protocol, the client went away).
    pub(crate) async fn accept(&self, stream: TcpStream) -> io::Result<TlsClientStream> {
        let acceptor = self
            .acceptor
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "TLS is not configured"))?;
        Ok(Encrypted::new(acceptor.accept(stream).await?))
    }
}

/// How servers' TLS is asked for (`server_tls_sslmode` and its files).
#[derive(Clone)]
pub struct ServerTls {
    mode: SslMode,
    connector: Option<TlsConnector>,
    /// The settings and file contents it was built from: RELOAD closes
    /// servers only when these change.
    fingerprint: u64,
    /// The TCP options of server sockets: kept here, with how to open a
    /// server connection, so that a RELOAD changes both at once (for new
    /// connections; open ones keep theirs, as in PgBouncer).
    tcp: TcpOptions,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.fingerprint == other.fingerprint
    }
}

impl Eq for ServerTls {}

impl ServerTls {
    fn from_settings(settings: &Settings, warnings: &mut Vec<String>) -> Result<Self, TlsError> {
        let mode = settings.server_tls_sslmode;
        let mut seen = Fingerprint::default();
        seen.add(mode.as_str());
        // allow: PgBouncer asks for TLS only from servers that refuse
        // plain text, which no PostgreSQL does; it opens plain ones.
        if matches!(mode, SslMode::Disable | SslMode::Allow) {
            return Ok(ServerTls {
                mode,
                connector: None,
                fingerprint: seen.finish(),
                tcp: TcpOptions::from_settings(settings),
            });
        }
        for value in [
            &settings.server_tls_protocols,
            &settings.server_tls_ciphers,
            settings.server_tls13_ciphers.as_deref().unwrap_or(""),
        ] {
            seen.add(value);
        }
        let (provider, versions) = provider(Side::Server, settings, warnings)?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|source| rustls_error("server_tls_protocols", source))?;
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let ca_file = nonempty(&settings.server_tls_ca_file);
                let roots = files::roots("server_tls_ca_file", ca_file, &mut seen)?;
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|err| TlsError::Value {
                        key: "server_tls_ca_file",
                        value: ca_file.map(|p| p.display().to_string()).unwrap_or_default(),
                        reason: err.to_string(),
                    })?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(verify::ChainOnly::new(webpki))
                }
            }
            _ => Arc::new(verify::AnyCertificate::new(provider)),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (
            nonempty(&settings.server_tls_key_file),
            nonempty(&settings.server_tls_cert_file),
        ) {
            (Some(key_file), Some(cert_file)) => {
                let chain = files::certificates("server_tls_cert_file", cert_file, &mut seen)?;
                let key = files::private_key("server_tls_key_file", key_file, &mut seen)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| rustls_error("server_tls_key_file", source))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Needs {
                    key: "server_tls_key_file",
                    mode,
                    needs: "both server_tls_key_file and server_tls_cert_file, or neither",
                })
            }
        };
        Ok(ServerTls {
            mode,
            connector: Some(TlsConnector::from(Arc::new(config))),
            fingerprint: seen.finish(),
            tcp: TcpOptions::from_settings(settings),
        })
    }

    /// The TCP options of server sockets.
    pub(crate) fn tcp(&self) -> &TcpOptions {
        &self.tcp
    }

    /// Opens a connection to `host` as the mode says: the SSLRequest and
    /// handshake on TCP (Unix sockets stay plain: PostgreSQL offers no TLS
    /// there, and libpq ignores `sslmode` there too). Under `prefer` a
    /// server that answers 'N', or fails the handshake, gets plain text,
    /// as libpq does; under `require` and stronger neither does.
    ///
    /// # Errors
    ///
    /// The connection failed, or TLS was required and could not be had.
    pub(crate) async fn open(&self, host: &ServerAddr) -> Result<ServerStream, OpenError> {
        self.negotiate(host.connect(&self.tcp).await?, host).await
    }

    /// [`open`](Self::open) on a connection to `host` already made.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub(crate) async fn negotiate(
        &self,
        stream: ServerStream,
        host: &ServerAddr,
    ) -> Result<ServerStream, OpenError> {
        let ServerAddr::Tcp { host: name, .. } = host else {
            return Ok(stream);
        };
        let ServerStream::Tcp(mut tcp) = stream else {
            return Ok(stream);
        };
        if self.connector.is_none() {
            return Ok(ServerStream::Tcp(tcp));
        }
        tcp.write_all(&SSL_REQUEST).await?;
        // One byte and no more: anything the server sent after it before
        // the handshake would be unencrypted bytes passed off as encrypted.
        match tcp.read_u8().await? {
            b'S' => match self.connect(tcp, name).await {
                Ok(encrypted) => Ok(ServerStream::encrypted(encrypted)),
                Err(err) if self.mode == SslMode::Prefer => {
                    tracing::warn!(server = %host, error = %err,
                        "TLS handshake failed; server_tls_sslmode = prefer goes on in plain text");
                    Ok(host.connect(&self.tcp).await?)
                }
                Err(err) => Err(OpenError::Refused(format!("TLS handshake failed: {err}"))),
            },
            b'N' if demands_tls(self.mode) => Err(OpenError::Refused(format!(
                "the server does not accept TLS connections, and server_tls_sslmode = {}",
                self.mode
            ))),
            b'N' => Ok(ServerStream::Tcp(tcp)),
            _ => Err(OpenError::BadAnswer),
        }
    }

    /// The TLS handshake with a server that answered 'S', verifying it as
    /// the mode says; `host` is the name it is checked against.
    async fn connect(&self, stream: TcpStream, host: &str) -> io::Result<TlsServerStream> {
        let connector = self
            .connector
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "TLS is not configured"))?;
        let name = match ServerName::try_from(host.to_owned()) {
            Ok(name) => name,
            Err(_) if self.mode != SslMode::VerifyFull => ServerName::try_from("localhost")
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?,
            Err(err) => return Err(io::Error::new(io::ErrorKind::InvalidInput, err)),
        };
        Ok(Encrypted::new(connector.connect(name, stream).await?))
    }
}

fn demands_tls(mode: SslMode) -> bool {
    matches!(
        mode,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
    )
}

fn nonempty(path: &Option<PathBuf>) -> Option<&Path> {
    path.as_deref().filter(|p| !p.as_os_str().is_empty())
}

fn rustls_error(key: &'static str, source: rustls::Error) -> TlsError {
    TlsError::Rustls { key, source }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// The crypto provider and protocol versions one side's settings allow.
fn provider(
    side: Side,
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Result<(Arc<CryptoProvider>, Vec<&'static SupportedProtocolVersion>), TlsError> {
    let (prefix, protocols, ciphers, ciphers13) = match side {
        Side::Client => (
            "client",
            &settings.client_tls_protocols,
            &settings.client_tls_ciphers,
            &settings.client_tls13_ciphers,
        ),
        Side::Server => (
            "server",
            &settings.server_tls_protocols,
            &settings.server_tls_ciphers,
            &settings.server_tls13_ciphers,
        ),
    };
    let keys: [&'static str; 3] = match side {
        Side::Client => [
            "client_tls_protocols",
            "client_tls_ciphers",
            "client_tls13_ciphers",
        ],
        Side::Server => [
            "server_tls_protocols",
            "server_tls_ciphers",
            "server_tls13_ciphers",
        ],
    };
    let key = |which: usize, value: &str| {
        let (key, value) = (keys[which], value.to_owned());
        move |reason: String| TlsError::Value { key, value, reason }
    };
    let mut provider = rustls::crypto::ring::default_provider();
    let versions = suites::protocols(protocols).map_err(key(0, protocols))?;
    note_ignored(warnings, prefix, "tls_protocols", &versions.ignored);
    let tls12 = suites::tls12_ciphers(ciphers, &provider).map_err(key(1, ciphers))?;
    note_ignored(warnings, prefix, "tls_ciphers", &tls12.ignored);
    let mut suites = tls12.items;
    match ciphers13.as_deref().filter(|v| !v.trim().is_empty()) {
        Some(value) => {
            let tls13 = suites::tls13_ciphers(value, &provider).map_err(key(2, value))?;
            note_ignored(warnings, prefix, "tls13_ciphers", &tls13.ignored);
            suites.extend(tls13.items);
        }
        None => suites.extend(
            provider
                .cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13),
        ),
    }
    provider.cipher_suites = suites;
    if side == Side::Client {
        client_key_exchange(settings, &mut provider, warnings)?;
    }
    Ok((Arc::new(provider), versions.items))
}

/// `client_tls_ecdhcurve` and `client_tls_dheparams`.
fn client_key_exchange(
    settings: &Settings,
    provider: &mut CryptoProvider,
    warnings: &mut Vec<String>,
) -> Result<(), TlsError> {
    let dhe = settings.client_tls_dheparams.trim();
    if !matches!(dhe.to_ascii_lowercase().as_str(), "auto" | "none" | "") {
        warnings.push(format!(
            "client_tls_dheparams = {dhe}: rustls offers no DHE key exchange; ECDHE is used"
        ));
    }
    let curve = settings.client_tls_ecdhcurve.trim();
    if matches!(curve.to_ascii_lowercase().as_str(), "auto" | "secure" | "") {
        return Ok(());
    }
    let mut groups = Vec::new();
    for name in curve
        .split([':', ','])
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let wanted = match name.to_ascii_lowercase().as_str() {
            "x25519" => rustls::NamedGroup::X25519,
            "p-256" | "secp256r1" | "prime256v1" => rustls::NamedGroup::secp256r1,
            "p-384" | "secp384r1" => rustls::NamedGroup::secp384r1,
            _ => {
                return Err(TlsError::Value {
                    key: "client_tls_ecdhcurve",
                    value: curve.to_owned(),
                    reason: format!("unknown curve \"{name}\" (rustls has X25519, P-256, P-384)"),
                })
            }
        };
        if let Some(group) = provider.kx_groups.iter().find(|g| g.name() == wanted) {
            groups.push(*group);
        }
    }
    provider.kx_groups = groups;
    Ok(())
}

fn note_ignored(warnings: &mut Vec<String>, prefix: &str, name: &str, ignored: &[String]) {
    if !ignored.is_empty() {
        warnings.push(format!(
            "{prefix}_{name}: rustls has nothing for {}; it offers the rest",
            ignored.join(", ")
        ));
    }
}
