//! The server side of a login: the pooler answers a server's
//! authentication requests with the configured password (cleartext, md5,
//! SCRAM-SHA-256).

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

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
