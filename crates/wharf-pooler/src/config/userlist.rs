//! PgBouncer's `auth_file` (`userlist.txt`): `"user" "secret"` lines.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{read_text, ConfigError};

/// A user's secret from `auth_file`. Its `Debug` output hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plain-text password.
    Plain(String),
    /// PostgreSQL's MD5 hash: `md5(password || username)`, written
    /// `md5` followed by 32 hex digits.
    Md5([u8; 16]),
    /// A SCRAM-SHA-256 verifier, written
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` in base64.
    Scram {
        /// PBKDF2 iterations.
        iterations: u32,
        /// The salt.
        salt: Vec<u8>,
        /// `H(ClientKey)`.
        stored_key: [u8; 32],
        /// `HMAC(SaltedPassword, "Server Key")`.
        server_key: [u8; 32],
    },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<hidden>)"),
            Secret::Md5(_) => f.write_str("Md5(<hidden>)"),
            Secret::Scram { iterations, .. } => {
                write!(f, "Scram {{ iterations: {iterations}, .. }}")
            }
        }
    }
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

impl Secret {
    /// Reads a secret as PgBouncer does: `md5` and 32 hex digits is an MD5
    /// hash, `SCRAM-SHA-256$...` a SCRAM verifier, anything else a plain
    /// password. A malformed hash or verifier is an error rather than a
    /// password nobody could type.
    pub fn parse(text: &str) -> Result<Secret, String> {
        if let Some(hex) = text.strip_prefix("md5") {
            if hex.len() == 32 {
                return parse_hex(hex)
                    .map(Secret::Md5)
                    .ok_or_else(|| "an md5 secret needs 32 hex digits after \"md5\"".to_owned());
            }
        }
        if let Some(rest) = text.strip_prefix(SCRAM_PREFIX) {
            return parse_scram(rest).map_err(|e| format!("malformed SCRAM secret: {e}"));
        }
        Ok(Secret::Plain(text.to_owned()))
    }
}

fn parse_hex(hex: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let bytes = hex.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(bytes.get(2 * i..2 * i + 2)?).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn parse_scram(rest: &str) -> Result<Secret, String> {
    let (iterations_salt, keys) = rest
        .split_once('$')
        .ok_or("expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")?;
    let (iterations, salt) = iterations_salt
        .split_once(':')
        .ok_or("expected <iterations>:<salt> after \"SCRAM-SHA-256$\"")?;
    let (stored_key, server_key) = keys
        .split_once(':')
        .ok_or("expected <StoredKey>:<ServerKey>")?;
    let iterations: u32 = iterations
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| format!("iterations {iterations:?} is not a positive integer"))?;
    let salt = STANDARD
        .decode(salt)
        .map_err(|e| format!("salt is not base64: {e}"))?;
    if salt.is_empty() {
        return Err("empty salt".to_owned());
    }
    let key = |what: &str, text: &str| -> Result<[u8; 32], String> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|e| format!("{what} is not base64: {e}"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| format!("{what} is {} bytes, expected 32", bytes.len()))
    };
    Ok(Secret::Scram {
        iterations,
        salt,
        stored_key: key("StoredKey", stored_key)?,
        server_key: key("ServerKey", server_key)?,
    })
}

/// Reads one `"quoted"` field at the start of `s` (`""` stands for `"`);
/// returns it and the rest of the line.
fn quoted_field(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('"')?;
    let mut field = String::new();
    loop {
        let end = rest.find('"')?;
        field.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after) => {
                field.push('"');
                rest = after;
            }
            None => return Some((field, rest)),
        }
    }
}

/// Reads an `auth_file`: see [`parse_auth_file`].
pub fn load_auth_file(path: &Path) -> Result<HashMap<String, Secret>, ConfigError> {
    let text = read_text(path, None, None, path)?;
    parse_auth_file(&text, path)
}

/// Parses `auth_file` text read from `path`. Each line is
/// `"username" "secret"`, anything after the second field ignored; blank
/// lines and lines starting with `;` or `#` are skipped. A user listed
/// twice keeps the later secret. A malformed line is an error naming its
/// file and line (PgBouncer stops reading there).
pub fn parse_auth_file(text: &str, path: &Path) -> Result<HashMap<String, Secret>, ConfigError> {
    let mut users = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let error = |message: String| ConfigError::Syntax {
            file: path.to_owned(),
            line: Some(index + 1),
            message,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if !line.starts_with('"') {
            return Err(error("expected \"username\" \"secret\"".to_owned()));
        }
        let (user, rest) =
            quoted_field(line).ok_or_else(|| error("unterminated quoted user name".to_owned()))?;
        let rest = rest.trim_start();
        if !rest.starts_with('"') {
            return Err(error(format!(
                "expected a quoted secret after user \"{user}\""
            )));
        }
        let (secret, _) = quoted_field(rest)
            .ok_or_else(|| error(format!("unterminated quoted secret for user \"{user}\"")))?;
        if user.is_empty() {
            return Err(error("empty user name".to_owned()));
        }
        let secret = Secret::parse(&secret).map_err(|e| error(format!("user \"{user}\": {e}")))?;
        users.insert(user, secret);
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        assert_eq!(
            Secret::parse("hunter2"),
            Ok(Secret::Plain("hunter2".into()))
        );
        assert_eq!(
            Secret::parse("md5short"),
            Ok(Secret::Plain("md5short".into()))
        );
        let md5 = Secret::parse("md545f2603610af569b6155c45067268c6b").unwrap();
        assert!(matches!(md5, Secret::Md5(bytes) if bytes[0] == 0x45 && bytes[15] == 0x6b));
        assert!(Secret::parse("md5zzf2603610af569b6155c45067268c6b").is_err());
        assert!(Secret::parse("SCRAM-SHA-256$4096:c2FsdA==$bad").is_err());
        assert_eq!(
            format!("{:?}", Secret::Plain("hunter2".into())),
            "Plain(<hidden>)"
        );
    }

    #[test]
    fn fields() {
        assert_eq!(
            quoted_field(r#""a""b" "c""#),
            Some(("a\"b".to_owned(), r#" "c""#))
        );
        assert_eq!(quoted_field(r#""""#), Some((String::new(), "")));
        assert_eq!(quoted_field(r#""open"#), None);
    }
}
