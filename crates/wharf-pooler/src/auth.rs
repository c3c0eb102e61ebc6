//! Authentication, both ways: the pooler checks clients' passwords against
//! the auth file (trust, plain, md5, SCRAM-SHA-256), and logs in to servers
//! with the configured password (cleartext, md5, SCRAM-SHA-256).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::BytesMut;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest as _, Md5};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::{AuthType, Secret};
use crate::proto::{backend, cstr, read_message, ProtocolError};

/// Passwords and SASL messages are small; anything bigger is an attack.
const MAX_AUTH_MESSAGE: usize = 4096;

/// Why a client could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// Wrong password, unknown user, or a method the secret cannot serve.
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// The client broke the protocol or went away.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Runs the client side of the login for `user` with `method`, against the
/// user's secret from the auth file (`None` if the user is not there).
/// On success the caller sends AuthenticationOk and the rest of the welcome.
pub async fn authenticate_client<S>(
    stream: &mut S,
    method: AuthType,
    user: &str,
    secret: Option<&Secret>,
) -> Result<(), ClientAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = || ClientAuthError::Failed(user.to_owned());
    let listed = secret.is_some();
    // An empty password in the auth file matches nothing (PgBouncer:
    // "disallow empty passwords"; PostgreSQL never takes one either).
    let secret = secret.filter(|s| !matches!(s, Secret::Plain(p) if p.is_empty()));
    match method {
        // PgBouncer: "No authentication is done. The user name must still
        // exist in auth_file." (`any` ignores the name: the database's
        // forced user logs in.)
        AuthType::Trust => listed.then_some(()).ok_or_else(failed),
        AuthType::Any => Ok(()),
        AuthType::Plain => {
            let mut out = BytesMut::new();
            backend::auth_cleartext(&mut out);
            stream.write_all(&out).await.map_err(ProtocolError::from)?;
            let password = read_password(stream).await?;
            let secret = secret.ok_or_else(failed)?;
            verify_cleartext(secret, user, &password)
                .then_some(())
                .ok_or_else(failed)
        }
        AuthType::Md5 => {
            // PostgreSQL upgrades md5 to SCRAM when it only has a SCRAM
            // secret; so does the pooler.
            if let Some(secret @ Secret::Scram { .. }) = secret {
                return scram_exchange(stream, secret)
                    .await?
                    .then_some(())
                    .ok_or_else(failed);
            }
            let salt: [u8; 4] = fastrand::u32(..).to_be_bytes();
            let mut out = BytesMut::new();
            backend::auth_md5(&mut out, salt);
            stream.write_all(&out).await.map_err(ProtocolError::from)?;
            let response = read_password(stream).await?;
            let secret = secret.ok_or_else(failed)?;
            verify_md5(secret, user, salt, &response)
                .then_some(())
                .ok_or_else(failed)
        }
        AuthType::ScramSha256 => {
            let Some(secret) = secret else {
                // Run the exchange anyway with a made-up secret, so an
                // unknown user looks the same as a wrong password.
                let decoy = scram_secret_from_password("", &fastrand::u64(..).to_string());
                scram_exchange(stream, &decoy).await?;
                return Err(failed());
            };
            let secret = match secret {
                Secret::Plain(password) => scram_secret_from_password(password, user),
                Secret::Md5(_) => return Err(failed()),
                scram => scram.clone(),
            };
            scram_exchange(stream, &secret)
                .await?
                .then_some(())
                .ok_or_else(failed)
        }
    }
}

async fn read_password<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, ProtocolError> {
    let (tag, body) = read_message(stream, MAX_AUTH_MESSAGE).await?;
    if tag != b'p' {
        return Err(ProtocolError::Malformed("password message"));
    }
    let (password, rest) = cstr(&body).ok_or(ProtocolError::Malformed("password message"))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed("password message"));
    }
    Ok(password.to_owned())
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut md5 = Md5::new();
    for part in parts {
        md5.update(part);
    }
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL's stored md5 secret: md5(password || user).
fn md5_secret(password: &str, user: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

fn verify_cleartext(secret: &Secret, user: &str, password: &str) -> bool {
    match secret {
        Secret::Plain(expected) => constant_time_eq(expected.as_bytes(), password.as_bytes()),
        Secret::Md5(stored) => constant_time_eq(
            md5_secret(password, user).as_bytes(),
            hex(stored).as_bytes(),
        ),
        Secret::Scram {
            iterations,
            salt,
            stored_key,
            ..
        } => {
            let derived = scram_keys(password, salt, *iterations);
            constant_time_eq(&derived.stored_key, stored_key)
        }
    }
}

fn verify_md5(secret: &Secret, user: &str, salt: [u8; 4], response: &str) -> bool {
    let stored = match secret {
        Secret::Plain(password) => md5_secret(password, user),
        Secret::Md5(stored) => hex(stored),
        Secret::Scram { .. } => return false,
    };
    let expected = format!("md5{}", md5_hex(&[stored.as_bytes(), &salt]));
    constant_time_eq(expected.as_bytes(), response.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

struct ScramKeys {
    stored_key: [u8; 32],
}

/// Derives StoredKey from a password the way the server did when it made
/// the secret (SASLprep is skipped: it only matters for non-ASCII passwords,
/// for which PostgreSQL itself falls back to the raw bytes when invalid).
fn scram_keys(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
    let salted = pbkdf2_sha256(password.as_bytes(), salt, iterations);
    let client_key = hmac(&salted, &[b"Client Key"]);
    ScramKeys {
        stored_key: sha256(&client_key),
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    Sha256::digest(data).into()
}

fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &[0, 0, 0, 1]]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// A SCRAM secret for a plain-text password, with a salt derived from the
/// user name so the same user always gets the same secret (the pooler keeps
/// no state between logins).
pub fn scram_secret_from_password(password: &str, user: &str) -> Secret {
    let salt = sha256(format!("wharf scram salt for {user}").as_bytes())[..16].to_vec();
    let iterations = 4096;
    let salted = pbkdf2_sha256(password.as_bytes(), &salt, iterations);
    let client_key = hmac(&salted, &[b"Client Key"]);
    Secret::Scram {
        iterations,
        stored_key: sha256(&client_key),
        server_key: hmac(&salted, &[b"Server Key"]),
        salt,
    }
}

/// The server side of SCRAM-SHA-256 (RFC 5802/7677, no channel binding).
/// `Ok(false)` means the proof did not match.
async fn scram_exchange<S>(stream: &mut S, secret: &Secret) -> Result<bool, ClientAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Secret::Scram {
        iterations,
        salt,
        stored_key,
        server_key,
    } = secret
    else {
        return Ok(false);
    };
    let malformed = || ClientAuthError::Protocol(ProtocolError::Malformed("SCRAM message"));
    let mut out = BytesMut::new();
    backend::auth_sasl(&mut out);
    stream.write_all(&out).await.map_err(ProtocolError::from)?;

    // SASLInitialResponse: mechanism, length, client-first-message.
    let (tag, body) = read_message(stream, MAX_AUTH_MESSAGE).await?;
    if tag != b'p' {
        return Err(malformed());
    }
    let (mechanism, rest) = cstr(&body).ok_or_else(malformed)?;
    if mechanism != "SCRAM-SHA-256" || rest.len() < 4 {
        return Err(malformed());
    }
    let client_first = std::str::from_utf8(&rest[4..]).map_err(|_| malformed())?;
    // gs2 header: "n,," (no channel binding) or "y,," (client could but we
    // did not offer it). Anything else is refused.
    let bare = client_first
        .strip_prefix("n,,")
        .or_else(|| client_first.strip_prefix("y,,"))
        .ok_or_else(malformed)?;
    let gs2_header = &client_first[..client_first.len() - bare.len()];
    let client_nonce = bare
        .split(',')
        .find_map(|part| part.strip_prefix("r="))
        .filter(|n| !n.is_empty())
        .ok_or_else(malformed)?;

    let server_nonce: String = (0..18).map(|_| fastrand::alphanumeric()).collect();
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
    let mut out = BytesMut::new();
    backend::auth_sasl_continue(&mut out, server_first.as_bytes());
    stream.write_all(&out).await.map_err(ProtocolError::from)?;

    // SASLResponse: client-final-message "c=…,r=…,p=…".
    let (tag, body) = read_message(stream, MAX_AUTH_MESSAGE).await?;
    if tag != b'p' {
        return Err(malformed());
    }
    let client_final = std::str::from_utf8(&body).map_err(|_| malformed())?;
    let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or_else(malformed)?;
    let mut channel = None;
    let mut final_nonce = None;
    for part in without_proof.split(',') {
        if let Some(c) = part.strip_prefix("c=") {
            channel = Some(c);
        } else if let Some(r) = part.strip_prefix("r=") {
            final_nonce = Some(r);
        }
    }
    if channel != Some(B64.encode(gs2_header).as_str()) || final_nonce != Some(nonce.as_str()) {
        return Ok(false);
    }
    let proof = B64.decode(proof).map_err(|_| malformed())?;
    if proof.len() != 32 {
        return Ok(false);
    }
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_signature = hmac(stored_key, &[auth_message.as_bytes()]);
    let client_key: Vec<u8> = proof
        .iter()
        .zip(client_signature)
        .map(|(p, s)| p ^ s)
        .collect();
    if !constant_time_eq(&sha256(&client_key), stored_key) {
        return Ok(false);
    }
    let server_signature = hmac(server_key, &[auth_message.as_bytes()]);
    let server_final = format!("v={}", B64.encode(server_signature));
    let mut out = BytesMut::new();
    backend::auth_sasl_final(&mut out, server_final.as_bytes());
    stream.write_all(&out).await.map_err(ProtocolError::from)?;
    Ok(true)
}

/// The pooler's side of a server's authentication request.
pub enum ServerAuth {
    /// Reply with this (already framed) message and wait for the next
    /// request.
    Reply(BytesMut),
    /// Nothing to send; authentication is complete.
    Done,
}

/// Why the pooler could not log in to a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerAuthError {
    /// The server wants a password and none is configured.
    #[error("server requested a password for user \"{0}\" but none is configured (set password= in [databases] or add the user to auth_file)")]
    NoPassword(String),
    /// The server wants SCRAM but only an md5 secret is known.
    #[error("server requested SCRAM-SHA-256 for user \"{0}\", which needs a plain-text password in the configuration")]
    NeedsPlainPassword(String),
    /// A method the pooler does not implement.
    #[error("server requested an unsupported authentication method (code {0})")]
    Unsupported(i32),
    /// The SCRAM exchange failed.
    #[error("SCRAM authentication with the server failed: {0}")]
    Scram(std::io::Error),
}

/// Answers a server's authentication requests during login, one at a time.
pub struct ServerLogin<'a> {
    user: &'a str,
    password: Option<&'a Secret>,
    scram: Option<ScramSha256>,
}

impl<'a> ServerLogin<'a> {
    /// Prepares to log in as `user`, with `password` if one is configured.
    pub fn new(user: &'a str, password: Option<&'a Secret>) -> Self {
        Self {
            user,
            password,
            scram: None,
        }
    }

    /// Handles one AuthenticationXxx message body (after the `R` header).
    pub fn respond(&mut self, body: &[u8]) -> Result<ServerAuth, ServerAuthError> {
        let code = body
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(ServerAuthError::Unsupported(-1))?;
        let data = &body[4..];
        let no_password = || ServerAuthError::NoPassword(self.user.to_owned());
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(ServerAuth::Done),
            3 => match self.password.ok_or_else(no_password)? {
                Secret::Plain(password) => {
                    frontend::password_message(password.as_bytes(), &mut out)
                        .map_err(ServerAuthError::Scram)?
                }
                _ => return Err(ServerAuthError::NeedsPlainPassword(self.user.to_owned())),
            },
            5 => {
                let salt: [u8; 4] = data
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(ServerAuthError::Unsupported(code))?;
                let stored = match self.password.ok_or_else(no_password)? {
                    Secret::Plain(password) => md5_secret(password, self.user),
                    Secret::Md5(stored) => hex(stored),
                    Secret::Scram { .. } => {
                        return Err(ServerAuthError::NeedsPlainPassword(self.user.to_owned()))
                    }
                };
                let response = format!("md5{}", md5_hex(&[stored.as_bytes(), &salt]));
                frontend::password_message(response.as_bytes(), &mut out)
                    .map_err(ServerAuthError::Scram)?;
            }
            10 => {
                let Secret::Plain(password) = self.password.ok_or_else(no_password)? else {
                    return Err(ServerAuthError::NeedsPlainPassword(self.user.to_owned()));
                };
                let scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                    .map_err(ServerAuthError::Scram)?;
                self.scram = Some(scram);
            }
            11 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(ServerAuthError::Unsupported(code))?;
                scram.update(data).map_err(ServerAuthError::Scram)?;
                frontend::sasl_response(scram.message(), &mut out)
                    .map_err(ServerAuthError::Scram)?;
            }
            12 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(ServerAuthError::Unsupported(code))?;
                scram.finish(data).map_err(ServerAuthError::Scram)?;
                return Ok(ServerAuth::Reply(out));
            }
            other => return Err(ServerAuthError::Unsupported(other)),
        }
        Ok(ServerAuth::Reply(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_and_md5_verify_against_every_secret_kind() {
        let plain = Secret::Plain("s3cret".into());
        let md5 = {
            let hex = md5_secret("s3cret", "alice");
            let mut bytes = [0u8; 16];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
            }
            Secret::Md5(bytes)
        };
        let scram = scram_secret_from_password("s3cret", "alice");
        for secret in [&plain, &md5, &scram] {
            assert!(verify_cleartext(secret, "alice", "s3cret"));
            assert!(!verify_cleartext(secret, "alice", "wrong"));
        }
        let salt = [1, 2, 3, 4];
        let response = format!(
            "md5{}",
            md5_hex(&[md5_secret("s3cret", "alice").as_bytes(), &salt])
        );
        assert!(verify_md5(&plain, "alice", salt, &response));
        assert!(verify_md5(&md5, "alice", salt, &response));
        assert!(!verify_md5(&md5, "alice", [9, 9, 9, 9], &response));
    }

    #[test]
    fn scram_secret_matches_postgres_protocols_derivation() {
        // postgres-protocol makes secrets the way PostgreSQL does; parsing
        // one and checking a password against it proves the key derivation.
        let made = postgres_protocol::password::scram_sha_256(b"pa55");
        let (_, rest) = made.split_once('$').unwrap();
        let (iter_salt, keys) = rest.split_once('$').unwrap();
        let (iterations, salt) = iter_salt.split_once(':').unwrap();
        let (stored, _server) = keys.split_once(':').unwrap();
        let derived = scram_keys(
            "pa55",
            &B64.decode(salt).unwrap(),
            iterations.parse().unwrap(),
        );
        assert_eq!(B64.encode(derived.stored_key), stored);
    }
}
