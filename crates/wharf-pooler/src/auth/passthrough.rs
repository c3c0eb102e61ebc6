//! SCRAM pass-through: a client that proved itself with SCRAM against a
//! SCRAM secret revealed its ClientKey, and with it (and the secret's
//! ServerKey) the pooler can log in to a server holding the same secret,
//! with no plain-text password anywhere (PgBouncer does the same).

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::secrets::{constant_time_eq, hmac, sha256};
use crate::config::Secret;

/// A user's SCRAM ClientKey, learned from a successful client login.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey([u8; 32]);

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(..)")
    }
}

impl ClientKey {
    pub(super) fn new(key: [u8; 32]) -> Self {
        ClientKey(key)
    }

    /// Whether this key is the one behind `secret`'s StoredKey.
    pub fn opens(&self, secret: &Secret) -> bool {
        matches!(secret, Secret::Scram { stored_key, .. }
            if constant_time_eq(&sha256(&self.0), stored_key))
    }
}

/// Why a pass-through login failed on the pooler's side.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PassThroughError {
    /// The server's secret has another salt or iteration count.
    OtherSecret,
    /// The server's message was not SCRAM.
    Malformed,
    /// The server's signature is wrong: it does not hold the secret.
    BadServerSignature,
}

/// The client side of SCRAM-SHA-256 from keys instead of a password.
pub(super) struct KeyExchange {
    client_key: [u8; 32],
    stored_key: [u8; 32],
    server_key: [u8; 32],
    salt: Vec<u8>,
    iterations: u32,
    nonce: String,
    /// Set once the client-final message is made.
    auth_message: Option<String>,
}

impl KeyExchange {
    /// `None` unless `secret` is a SCRAM secret `key` opens.
    pub(super) fn new(secret: &Secret, key: &ClientKey) -> Option<Self> {
        let Secret::Scram {
            iterations,
            salt,
            stored_key,
            server_key,
        } = secret
        else {
            return None;
        };
        key.opens(secret).then(|| KeyExchange {
            client_key: key.0,
            stored_key: *stored_key,
            server_key: *server_key,
            salt: salt.clone(),
            iterations: *iterations,
            nonce: super::secrets::nonce(24),
            auth_message: None,
        })
    }

    fn client_first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// client-first-message (no channel binding).
    pub(super) fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    /// client-final-message, from the server-first-message.
    pub(super) fn client_final(
        &mut self,
        server_first: &[u8],
    ) -> Result<Vec<u8>, PassThroughError> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| PassThroughError::Malformed)?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in server_first.split(',') {
            if let Some(r) = part.strip_prefix("r=") {
                nonce = Some(r);
            } else if let Some(s) = part.strip_prefix("s=") {
                salt = B64.decode(s).ok();
            } else if let Some(i) = part.strip_prefix("i=") {
                iterations = i.parse::<u32>().ok();
            }
        }
        let nonce = nonce
            .filter(|n| n.starts_with(&self.nonce) && n.len() > self.nonce.len())
            .ok_or(PassThroughError::Malformed)?;
        let (salt, iterations) = salt.zip(iterations).ok_or(PassThroughError::Malformed)?;
        if salt != self.salt || iterations != self.iterations {
            return Err(PassThroughError::OtherSecret);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let signature = hmac(&self.stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = self
            .client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message's signature.
    pub(super) fn verify_server_final(&self, server_final: &[u8]) -> Result<(), PassThroughError> {
        let auth_message = self
            .auth_message
            .as_ref()
            .ok_or(PassThroughError::Malformed)?;
        let text = std::str::from_utf8(server_final).map_err(|_| PassThroughError::Malformed)?;
        let signature = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v.trim_end()).ok())
            .ok_or(PassThroughError::Malformed)?;
        let expected = hmac(&self.server_key, &[auth_message.as_bytes()]);
        if constant_time_eq(&signature, &expected) {
            Ok(())
        } else {
            Err(PassThroughError::BadServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secrets::scram_secret_from_password;

    /// A server's side of the exchange, from the same secret.
    fn server_first(client_first: &[u8], secret: &Secret) -> String {
        let Secret::Scram {
            salt, iterations, ..
        } = secret
        else {
            unreachable!()
        };
        let client_first = std::str::from_utf8(client_first).unwrap();
        let nonce = client_first.split("r=").nth(1).unwrap();
        format!("r={nonce}SERVER,s={},i={iterations}", B64.encode(salt))
    }

    fn key_of(password: &str, secret: &Secret) -> ClientKey {
        let Secret::Scram {
            salt, iterations, ..
        } = secret
        else {
            unreachable!()
        };
        let salted = super::super::secrets::pbkdf2_sha256(password.as_bytes(), salt, *iterations);
        ClientKey(hmac(&salted, &[b"Client Key"]))
    }

    #[test]
    fn a_learned_client_key_proves_what_the_password_would() {
        let secret = scram_secret_from_password("pa55", "alice");
        let key = key_of("pa55", &secret);
        assert!(key.opens(&secret));
        assert!(!key_of("other", &secret).opens(&secret));

        let mut exchange = KeyExchange::new(&secret, &key).unwrap();
        let first = server_first(&exchange.client_first(), &secret);
        let client_final =
            String::from_utf8(exchange.client_final(first.as_bytes()).unwrap()).unwrap();
        // The server's check: ClientKey = proof XOR HMAC(StoredKey, AuthMessage).
        let Secret::Scram {
            stored_key,
            server_key,
            ..
        } = &secret
        else {
            unreachable!()
        };
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
        let auth_message = format!("n=,r={},{first},{without_proof}", exchange.nonce);
        let signature = hmac(stored_key, &[auth_message.as_bytes()]);
        let recovered: Vec<u8> = B64
            .decode(proof)
            .unwrap()
            .iter()
            .zip(signature)
            .map(|(p, s)| p ^ s)
            .collect();
        assert_eq!(sha256(&recovered), *stored_key);
        let server_final = format!(
            "v={}",
            B64.encode(hmac(server_key, &[auth_message.as_bytes()]))
        );
        assert_eq!(
            exchange.verify_server_final(server_final.as_bytes()),
            Ok(())
        );
        assert_eq!(
            exchange.verify_server_final(b"v=AAAA"),
            Err(PassThroughError::BadServerSignature)
        );
    }

    #[test]
    fn garbage_from_a_server_is_an_error_never_a_panic() {
        let secret = scram_secret_from_password("pa55", "alice");
        let key = key_of("pa55", &secret);
        let mut rng = fastrand::Rng::with_seed(7);
        for len in 0..200 {
            let mut exchange = KeyExchange::new(&secret, &key).unwrap();
            let mut junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if len % 3 == 0 {
                // Well-formed prefixes with junk after them.
                let prefix = format!("r={}x,s=", exchange.nonce);
                junk.splice(0..0, prefix.bytes());
            }
            assert!(exchange.client_final(&junk).is_err());
            assert!(exchange.verify_server_final(&junk).is_err());
        }
    }

    #[test]
    fn a_server_with_another_salt_is_refused_before_any_proof() {
        let secret = scram_secret_from_password("pa55", "alice");
        let other = scram_secret_from_password("pa55", "bob");
        let mut exchange = KeyExchange::new(&secret, &key_of("pa55", &secret)).unwrap();
        let first = server_first(&exchange.client_first(), &other);
        assert_eq!(
            exchange.client_final(first.as_bytes()),
            Err(PassThroughError::OtherSecret)
        );
        assert_eq!(
            exchange.client_final(b"r=someone-elses-nonce,s=AAAA,i=4096"),
            Err(PassThroughError::Malformed)
        );
    }
}
