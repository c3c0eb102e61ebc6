//! The server side of a login: the pooler answers a server's
//! authentication requests with the configured password (cleartext, md5,
//! SCRAM-SHA-256), or with a SCRAM ClientKey a client revealed
//! (pass-through).

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use super::passthrough::{ClientKey, KeyExchange, PassThroughError};
use super::secrets::{hex, md5_hex, md5_secret};
use crate::config::Secret;

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
    /// The server wants SCRAM but only an md5 secret is known, or a SCRAM
    /// secret no client has logged in with yet.
    #[error("server requested SCRAM-SHA-256 for user \"{0}\", which needs a plain-text password in the configuration, or a SCRAM secret that a client has logged in with (pass-through)")]
    NeedsPlainPassword(String),
    /// Pass-through: the server's SCRAM secret is not the auth file's.
    #[error("SCRAM pass-through for user \"{0}\" failed: the server's secret {1}")]
    PassThrough(String, &'static str),
    /// A method the pooler does not implement.
    #[error("server requested an unsupported authentication method (code {0})")]
    Unsupported(i32),
    /// The SCRAM exchange failed.
    #[error("SCRAM authentication with the server failed: {0}")]
    Scram(std::io::Error),
}

/// A SCRAM exchange with a server in progress.
enum Scram {
    /// From a plain-text password.
    Password(ScramSha256),
    /// From a client's key (pass-through).
    Keys(KeyExchange),
}

/// Answers a server's authentication requests during login, one at a time.
pub struct ServerLogin<'a> {
    user: &'a str,
    password: Option<&'a Secret>,
    client_key: Option<&'a ClientKey>,
    scram: Option<Scram>,
    /// The server's SCRAM signature has been checked.
    scram_verified: bool,
}

impl<'a> ServerLogin<'a> {
    /// Prepares to log in as `user`, with `password` if one is configured
    /// and the ClientKey a client revealed for a SCRAM `password`.
    pub fn new(
        user: &'a str,
        password: Option<&'a Secret>,
        client_key: Option<&'a ClientKey>,
    ) -> Self {
        Self {
            user,
            password,
            client_key,
            scram: None,
            scram_verified: false,
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
            // A server that skips SCRAM's last step never proved it holds
            // the secret.
            0 if self.scram.is_some() && !self.scram_verified => {
                return Err(ServerAuthError::Scram(std::io::Error::other(
                    "the server ended SCRAM before proving itself",
                )))
            }
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
                let password = self.password.ok_or_else(no_password)?;
                let (scram, first) = match (password, self.client_key) {
                    (Secret::Plain(password), _) => {
                        let scram =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        let first = scram.message().to_vec();
                        (Scram::Password(scram), first)
                    }
                    (secret, Some(key)) => {
                        let exchange = KeyExchange::new(secret, key).ok_or_else(|| {
                            ServerAuthError::NeedsPlainPassword(self.user.to_owned())
                        })?;
                        let first = exchange.client_first();
                        (Scram::Keys(exchange), first)
                    }
                    _ => return Err(ServerAuthError::NeedsPlainPassword(self.user.to_owned())),
                };
                frontend::sasl_initial_response("SCRAM-SHA-256", &first, &mut out)
                    .map_err(ServerAuthError::Scram)?;
                self.scram = Some(scram);
            }
            11 => {
                let user = self.user;
                let reply = match self.scram.as_mut() {
                    Some(Scram::Password(scram)) => {
                        scram.update(data).map_err(ServerAuthError::Scram)?;
                        scram.message().to_vec()
                    }
                    Some(Scram::Keys(exchange)) => exchange
                        .client_final(data)
                        .map_err(|err| pass_through_error(user, err))?,
                    None => return Err(ServerAuthError::Unsupported(code)),
                };
                frontend::sasl_response(&reply, &mut out).map_err(ServerAuthError::Scram)?;
            }
            12 => {
                match self.scram.as_mut() {
                    Some(Scram::Password(scram)) => {
                        scram.finish(data).map_err(ServerAuthError::Scram)?
                    }
                    Some(Scram::Keys(exchange)) => exchange
                        .verify_server_final(data)
                        .map_err(|err| pass_through_error(self.user, err))?,
                    None => return Err(ServerAuthError::Unsupported(code)),
                }
                self.scram_verified = true;
                return Ok(ServerAuth::Reply(out));
            }
            other => return Err(ServerAuthError::Unsupported(other)),
        }
        Ok(ServerAuth::Reply(out))
    }
}

fn pass_through_error(user: &str, err: PassThroughError) -> ServerAuthError {
    let why = match err {
        PassThroughError::OtherSecret => "has another salt or iteration count than the auth file's",
        PassThroughError::Malformed => "sent a malformed SCRAM message",
        PassThroughError::BadServerSignature => "is not the auth file's (wrong server signature)",
    };
    ServerAuthError::PassThrough(user.to_owned(), why)
}
