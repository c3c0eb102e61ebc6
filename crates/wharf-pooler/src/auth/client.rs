//! The client side of a login: the pooler asks for a password (or runs a
//! SCRAM exchange) and checks it against the user's secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::passthrough::ClientKey;
use super::secrets::{
    constant_time_eq, hmac, scram_secret_from_password, sha256, verify_cleartext, verify_md5,
};
use crate::config::{AuthType, Secret};
use crate::proto::messages;
use crate::proto::{cstr, read_message, ProtocolError};

/// The largest password or SASL message body taken: PostgreSQL's
/// `PG_MAX_AUTH_TOKEN_LENGTH`. Cleartext passwords can be long (cloud IAM
/// and OAuth tokens are sent as passwords); a smaller limit turned such a
/// login into a protocol error instead of a password check.
const MAX_AUTH_MESSAGE: usize = 65_535;

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
/// On success the caller sends AuthenticationOk and the rest of the welcome;
/// a SCRAM login against a SCRAM secret also gives the client's key, for
/// logging in to servers with the same secret.
/// `AuthType::Hba` and `AuthType::Cert` are not password exchanges: the
/// caller picks a method from the hba rules or checks the certificate, and
/// passing either fails the login.
pub async fn authenticate_client<S>(
    stream: &mut S,
    method: AuthType,
    user: &str,
    secret: Option<&Secret>,
) -> Result<Option<ClientKey>, ClientAuthError>
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
        AuthType::Trust => listed.then_some(None).ok_or_else(failed),
        AuthType::Any => Ok(None),
        // Not password exchanges: the caller checks these itself.
        AuthType::Hba | AuthType::Cert => Err(failed()),
        AuthType::Plain => {
            let mut out = BytesMut::new();
            messages::auth_cleartext(&mut out);
            stream.write_all(&out).await.map_err(ProtocolError::from)?;
            let password = read_password(stream).await?;
            let secret = secret.ok_or_else(failed)?.clone();
            let user_name = user.to_owned();
            off_thread(move || verify_cleartext(&secret, &user_name, &password))
                .await
                .unwrap_or(false)
                .then_some(None)
                .ok_or_else(failed)
        }
        AuthType::Md5 => {
            // PostgreSQL upgrades md5 to SCRAM when it only has a SCRAM
            // secret; so does the pooler.
            if let Some(secret @ Secret::Scram { .. }) = secret {
                let key = scram_exchange(stream, secret).await?.ok_or_else(failed)?;
                return Ok(Some(key));
            }
            let salt: [u8; 4] = rand::random();
            let mut out = BytesMut::new();
            messages::auth_md5(&mut out, salt);
            stream.write_all(&out).await.map_err(ProtocolError::from)?;
            let response = read_password(stream).await?;
            let secret = secret.ok_or_else(failed)?;
            verify_md5(secret, user, salt, &response)
                .then_some(None)
                .ok_or_else(failed)
        }
        AuthType::ScramSha256 => {
            // `true` with a SCRAM secret as PostgreSQL stores it: its key
            // may open servers (pass-through); one the pooler made up opens
            // none.
            let usable = match secret {
                Some(Secret::Plain(password)) => scram_secret_off_thread(password.clone(), user)
                    .await
                    .map(|secret| (secret, false)),
                Some(scram @ Secret::Scram { .. }) => Some((scram.clone(), true)),
                // No SCRAM secret comes from an md5 hash.
                Some(Secret::Md5(_)) | None => None,
            };
            let Some((secret, stored)) = usable else {
                // Run the exchange anyway, with a made-up password and the
                // salt this user name always gets, so that an unknown user
                // (or one without a SCRAM secret) looks like a wrong
                // password, attempt after attempt.
                if let Some(decoy) =
                    scram_secret_off_thread(rand::random::<u64>().to_string(), user).await
                {
                    scram_exchange(stream, &decoy).await?;
                }
                return Err(failed());
            };
            let key = scram_exchange(stream, &secret).await?.ok_or_else(failed)?;
            Ok(stored.then_some(key))
        }
    }
}

/// A SCRAM secret for `password`, derived off the runtime's threads.
async fn scram_secret_off_thread(password: String, user: &str) -> Option<Secret> {
    let user = user.to_owned();
    off_thread(move || scram_secret_from_password(&password, &user)).await
}

/// Runs `work` (a PBKDF2 of 4096 rounds: milliseconds) on the blocking
/// pool: on a runtime of one thread, every other client would wait for it.
/// `None` if it could not finish (the runtime shutting down), which fails
/// the login.
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
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

/// The server side of SCRAM-SHA-256 (RFC 5802/7677, no channel binding):
/// the client's key when its proof matched, `None` when it did not.
async fn scram_exchange<S>(
    stream: &mut S,
    secret: &Secret,
) -> Result<Option<ClientKey>, ClientAuthError>
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
        return Ok(None);
    };
    let malformed = || ClientAuthError::Protocol(ProtocolError::Malformed("SCRAM message"));
    let mut out = BytesMut::new();
    messages::auth_sasl(&mut out);
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

    let server_nonce = super::secrets::nonce(18);
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
    let mut out = BytesMut::new();
    messages::auth_sasl_continue(&mut out, server_first.as_bytes());
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
        return Ok(None);
    }
    let proof = B64.decode(proof).map_err(|_| malformed())?;
    if proof.len() != 32 {
        return Ok(None);
    }
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_signature = hmac(stored_key, &[auth_message.as_bytes()]);
    let mut client_key = [0u8; 32];
    for ((k, p), s) in client_key.iter_mut().zip(&proof).zip(client_signature) {
        *k = p ^ s;
    }
    if !constant_time_eq(&sha256(&client_key), stored_key) {
        return Ok(None);
    }
    let server_signature = hmac(server_key, &[auth_message.as_bytes()]);
    let server_final = format!("v={}", B64.encode(server_signature));
    let mut out = BytesMut::new();
    messages::auth_sasl_final(&mut out, server_final.as_bytes());
    stream.write_all(&out).await.map_err(ProtocolError::from)?;
    Ok(Some(ClientKey::new(client_key)))
}
