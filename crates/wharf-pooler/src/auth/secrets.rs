//! Secrets: checking a password or an md5 response against what the auth
//! file holds, and deriving SCRAM keys, as PostgreSQL does.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

use crate::config::Secret;

pub(super) fn md5_hex(parts: &[&[u8]]) -> String {
    let mut md5 = Md5::new();
    for part in parts {
        md5.update(part);
    }
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL's stored md5 secret: md5(password || user).
pub(super) fn md5_secret(password: &str, user: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

pub(super) fn verify_cleartext(secret: &Secret, user: &str, password: &str) -> bool {
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

pub(super) fn verify_md5(secret: &Secret, user: &str, salt: [u8; 4], response: &str) -> bool {
    let stored = match secret {
        Secret::Plain(password) => md5_secret(password, user),
        Secret::Md5(stored) => hex(stored),
        Secret::Scram { .. } => return false,
    };
    let expected = format!("md5{}", md5_hex(&[stored.as_bytes(), &salt]));
    constant_time_eq(expected.as_bytes(), response.as_bytes())
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
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

/// The key salts are made under, drawn from the system's randomness once
/// per process.
fn salt_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        use rustls::crypto::ring::default_provider;
        let mut key = [0u8; 32];
        if default_provider().secure_random.fill(&mut key).is_err() {
            // No system randomness: a time-seeded key still differs per
            // process, which is all a decoy needs to stay unguessable
            // from outside.
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            key = sha256(&seed.to_le_bytes());
        }
        key
    })
}

pub(super) fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    Sha256::digest(data).into()
}

pub(super) fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
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

/// A SCRAM secret for a plain-text password (or a decoy for a user with
/// no usable secret), with a salt made from the user name under a key
/// drawn at start: the same user gets the same salt on every attempt, and
/// no one outside can compute it, so a decoy's salt does not tell an
/// unknown user from a known one (PostgreSQL's mock salt works the same
/// way).
pub fn scram_secret_from_password(password: &str, user: &str) -> Secret {
    let salt = hmac(salt_key(), &[b"wharf scram salt", user.as_bytes()])[..16].to_vec();
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

/// `len` random letters and digits from a CSPRNG, for a SCRAM nonce:
/// whoever could predict one could replay an exchange.
pub(crate) fn nonce(len: usize) -> String {
    use rand::RngExt as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nonces_are_letters_and_digits_and_never_repeat() {
        let a = super::nonce(24);
        let b = super::nonce(24);
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;

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
