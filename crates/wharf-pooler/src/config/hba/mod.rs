//! PgBouncer's `auth_hba_file`: records in PostgreSQL's pg_hba.conf
//! syntax, read into [`HbaRules`] when `auth_type = hba`.
//!
//! What is read, as PgBouncer documents it:
//!
//! - connection types `local`, `host`, `hostssl`, `hostnossl`
//!   (`hostgssenc` and `hostnogssenc` are refused: there is no GSSAPI
//!   encryption);
//! - databases: names, comma lists, `all`, `sameuser`, `replication`
//!   (physical replication connections, which match nothing else) and
//!   `@file`; `samerole`/`samegroup` are refused (the pooler knows no
//!   roles);
//! - users: names, comma lists, `all` and `@file`; `+group` is refused for
//!   the same reason;
//! - addresses: `all`, an IPv4 or IPv6 address with a CIDR mask
//!   (`10.0.0.0/8`, `::1/128`) or followed by a mask column
//!   (`10.0.0.0 255.0.0.0`); `samehost`, `samenet`, host names and domain
//!   suffixes are refused;
//! - methods `trust`, `reject`, `md5`, `scram-sha-256`, `password` (also
//!   written `plain`), `cert` (not on `local` or `hostnossl` lines) and
//!   `peer` (only on `local` lines); other methods are refused, `any` and
//!   `pam` because they only work as `auth_type`;
//! - no options after the method: `map=` (user name maps from
//!   `auth_ident_file`) is refused, as is any other.
//!
//! Words in double quotes keep blanks and commas and lose their keyword
//! meaning; `#` starts a comment; a line ending in `\` continues on the
//! next. `@file` reads names (blank- or comma-separated, `#` comments) from
//! a file relative to the directory of the file that names it. Anything
//! else is an error naming the file, the line and what is wrong.

mod lex;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::{read_text, AuthType, Config, ConfigError};
use lex::{records, Record, Word};

/// How deep `@file` may nest.
const MAX_INCLUDE_DEPTH: usize = 10;

/// The rules of an hba file, in file order: the first that matches a
/// client decides how it authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRules {
    path: PathBuf,
    rules: Vec<HbaRule>,
}

/// One record of an hba file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    /// The line it starts on (1-based).
    pub line: usize,
    /// Which connections it is for.
    pub connection: HbaConnection,
    /// The databases it is for (any of them).
    pub databases: Vec<HbaDatabase>,
    /// The users it is for (any of them).
    pub users: Vec<HbaUser>,
    /// The client addresses it is for; [`HbaAddress::Any`] on `local`
    /// lines.
    pub address: HbaAddress,
    /// What to do with a client it matches.
    pub method: HbaMethod,
}

/// The connection type column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaConnection {
    /// `local`: the Unix socket.
    Local,
    /// `host`: TCP, with or without TLS.
    Host,
    /// `hostssl`: TCP with TLS.
    HostSsl,
    /// `hostnossl`: TCP without TLS.
    HostNoSsl,
}

/// One item of the database column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HbaDatabase {
    /// `all`.
    All,
    /// `sameuser`: the database named like the user.
    SameUser,
    /// `replication`: physical replication connections (which no other
    /// database entry matches, as in PostgreSQL).
    Replication,
    /// A database name.
    Name(String),
}

/// One item of the user column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HbaUser {
    /// `all`.
    All,
    /// A user name.
    Name(String),
}

/// The address column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaAddress {
    /// `all`, or no address (a `local` line).
    Any,
    /// Addresses equal to `addr` in the bits set in `mask` (same family).
    Net {
        /// The address as written.
        addr: IpAddr,
        /// The mask, from a CIDR length or the mask column.
        mask: IpAddr,
    },
}

/// The method column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    /// No password; the user must be in `auth_file`.
    Trust,
    /// Refused ("login rejected").
    Reject,
    /// MD5 password exchange, SCRAM for users whose secret is SCRAM.
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// Clear-text password (`password`, or `plain` as in `auth_type`).
    Password,
    /// The TLS client certificate's common name must be the user name.
    Cert,
    /// The Unix socket peer's OS user name must be the user name.
    Peer,
}

impl HbaRules {
    /// Reads and checks an hba file.
    pub fn load(path: &Path) -> Result<HbaRules, ConfigError> {
        let text = read_text(path, None, None, path)?;
        Self::parse(&text, path)
    }

    /// Parses hba text read from `path` (which names it in messages and
    /// anchors relative `@file` names).
    pub fn parse(text: &str, path: &Path) -> Result<HbaRules, ConfigError> {
        let rules = records(text)
            .map_err(|(line, message)| syntax(path, line, message))?
            .into_iter()
            .map(|record| rule(record, path))
            .collect::<Result<_, _>>()?;
        Ok(HbaRules {
            path: path.to_owned(),
            rules,
        })
    }

    /// The file the rules were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[HbaRule] {
        &self.rules
    }
}

impl Config {
    /// Reads `auth_hba_file` into [`Config::hba`] when `auth_type = hba`
    /// (and empties it otherwise). Loading a configuration file does this;
    /// call it after changing either setting in code. `auth_type = hba`
    /// without `auth_hba_file` is an error, as is a broken hba file (naming
    /// its file and line).
    pub fn load_hba(&mut self) -> Result<(), ConfigError> {
        if self.pgbouncer.auth_type != AuthType::Hba {
            self.hba = None;
            return Ok(());
        }
        let Some(path) = &self.pgbouncer.auth_hba_file else {
            return Err(ConfigError::Invalid {
                file: self.path.clone(),
                line: None,
                key: "auth_hba_file".to_owned(),
                message: "not set, and auth_type = hba takes its rules from it".to_owned(),
            });
        };
        // A file that cannot be read is reported against the setting; a
        // bad record against the hba file's own line.
        let (file, line) = self.setting_position("auth_hba_file");
        let text = read_text(path, line, Some("auth_hba_file"), file)?;
        self.hba = Some(std::sync::Arc::new(HbaRules::parse(&text, path)?));
        Ok(())
    }
}

impl HbaRule {
    /// Whether the rule can apply to some client of `database` (for
    /// reports: `sameuser` can, for the user named like it).
    pub fn may_apply_to_database(&self, database: &str) -> bool {
        self.databases.iter().any(|d| match d {
            HbaDatabase::All | HbaDatabase::SameUser => true,
            HbaDatabase::Replication => false,
            HbaDatabase::Name(name) => name == database,
        })
    }
}

fn syntax(file: &Path, line: usize, message: String) -> ConfigError {
    ConfigError::Syntax {
        file: file.to_owned(),
        line: Some(line),
        message,
    }
}

/// One record into a rule.
fn rule(record: Record, file: &Path) -> Result<HbaRule, ConfigError> {
    let line = record.line;
    let err = |message: String| syntax(file, line, message);
    let mut fields = record.fields.into_iter();
    let mut column = |what: &str| {
        fields
            .next()
            .ok_or_else(|| format!("missing the {what} column"))
    };
    let connection = column("connection type")
        .and_then(|f| one(f, "connection type"))
        .and_then(|w| connection(&w))
        .map_err(err)?;
    let databases = expand(column("database").map_err(err)?, file, line, 0)?
        .into_iter()
        .map(database)
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let users = expand(column("user").map_err(err)?, file, line, 0)?
        .into_iter()
        .map(user)
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let address = match connection {
        HbaConnection::Local => HbaAddress::Any,
        _ => column("address")
            .and_then(|f| one(f, "address"))
            .and_then(|w| address(&w, &mut column))
            .map_err(err)?,
    };
    let method = column("method")
        .and_then(|f| one(f, "method"))
        .and_then(|w| method(&w))
        .map_err(err)?;
    if let Ok(option) = column("option") {
        return Err(err(refuse_option(&option)));
    }
    let refusal = match (method, connection) {
        (HbaMethod::Peer, HbaConnection::Local) => None,
        (HbaMethod::Peer, _) => Some("peer authentication is only for local (Unix socket) lines"),
        (HbaMethod::Cert, HbaConnection::Local | HbaConnection::HostNoSsl) => {
            Some("cert authentication needs TLS: use it on hostssl or host lines")
        }
        _ => None,
    };
    if let Some(refusal) = refusal {
        return Err(err(refusal.to_owned()));
    }
    Ok(HbaRule {
        line,
        connection,
        databases,
        users,
        address,
        method,
    })
}

/// The only word of a column that takes no list.
fn one(field: Vec<Word>, what: &str) -> Result<Word, String> {
    let mut words = field.into_iter();
    match (words.next(), words.next()) {
        (Some(word), None) => Ok(word),
        _ => Err(format!("the {what} column takes one word, not a list")),
    }
}

fn connection(word: &Word) -> Result<HbaConnection, String> {
    match word.text.as_str() {
        "local" => Ok(HbaConnection::Local),
        "host" => Ok(HbaConnection::Host),
        "hostssl" => Ok(HbaConnection::HostSsl),
        "hostnossl" => Ok(HbaConnection::HostNoSsl),
        "hostgssenc" | "hostnogssenc" => Err(format!(
            "connection type \"{}\" is not supported (GSSAPI encryption is not; PgBouncer reads local, host, hostssl and hostnossl)",
            word.text
        )),
        "include" | "include_if_exists" | "include_dir" => Err(format!(
            "\"{}\" is not supported in an hba file (PgBouncer neither); use @file in the database or user column",
            word.text
        )),
        other => Err(format!(
            "unknown connection type \"{other}\" (expected local, host, hostssl or hostnossl)"
        )),
    }
}

/// Replaces each unquoted `@file` word by the words of that file.
fn expand(
    words: Vec<Word>,
    file: &Path,
    line: usize,
    depth: usize,
) -> Result<Vec<Word>, ConfigError> {
    let mut out = Vec::new();
    for word in words {
        let Some(name) = word.text.strip_prefix('@').filter(|_| !word.quoted) else {
            out.push(word);
            continue;
        };
        if name.is_empty() {
            return Err(syntax(file, line, "\"@\" needs a file name".to_owned()));
        }
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(syntax(
                file,
                line,
                format!("@{name}: @file nested more than {MAX_INCLUDE_DEPTH} deep"),
            ));
        }
        let path = file.parent().unwrap_or(Path::new("")).join(name);
        let text = read_text(&path, Some(line), None, file)?;
        for record in records(&text).map_err(|(l, m)| syntax(&path, l, m))? {
            for field in record.fields {
                out.extend(expand(field, &path, record.line, depth + 1)?);
            }
        }
    }
    Ok(out)
}

fn database(word: Word) -> Result<HbaDatabase, String> {
    if word.quoted {
        return Ok(HbaDatabase::Name(word.text));
    }
    match word.text.as_str() {
        "all" => Ok(HbaDatabase::All),
        "sameuser" => Ok(HbaDatabase::SameUser),
        "replication" => Ok(HbaDatabase::Replication),
        "samerole" | "samegroup" => Err(format!(
            "\"{}\" is not supported (PgBouncer neither): the pooler knows no roles",
            word.text
        )),
        text if text.starts_with('/') => Err(format!(
            "regular expressions (\"{text}\") are not supported (PgBouncer neither)"
        )),
        _ => Ok(HbaDatabase::Name(word.text)),
    }
}

fn user(word: Word) -> Result<HbaUser, String> {
    if word.quoted {
        return Ok(HbaUser::Name(word.text));
    }
    match word.text.as_str() {
        "all" => Ok(HbaUser::All),
        text if text.starts_with('+') => Err(format!(
            "group membership (\"{text}\") is not supported (PgBouncer neither): the pooler knows no roles; list the users or use @file"
        )),
        text if text.starts_with('/') => Err(format!(
            "regular expressions (\"{text}\") are not supported (PgBouncer neither)"
        )),
        _ => Ok(HbaUser::Name(word.text)),
    }
}

/// The address column; `column` gives the mask column after an address
/// without a CIDR length.
fn address(
    word: &Word,
    column: &mut impl FnMut(&str) -> Result<Vec<Word>, String>,
) -> Result<HbaAddress, String> {
    let text = word.text.as_str();
    if word.is("all") {
        return Ok(HbaAddress::Any);
    }
    if word.is("samehost") || word.is("samenet") {
        return Err(format!(
            "\"{text}\" is not supported (PgBouncer neither): write the addresses with CIDR masks"
        ));
    }
    if let Some((ip, bits)) = text.split_once('/') {
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("\"{ip}\" is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits: u32 = bits.parse().ok().filter(|b| *b <= max).ok_or_else(|| {
            format!("invalid CIDR mask in \"{text}\": expected a length from 0 to {max}")
        })?;
        return Ok(HbaAddress::Net {
            addr,
            mask: mask_of_length(addr, bits),
        });
    }
    let Ok(addr) = text.parse::<IpAddr>() else {
        return Err(format!(
            "\"{text}\" is not an IP address: host names and domain suffixes are not supported (PgBouncer neither); write an address with a CIDR mask, like 10.0.0.0/8"
        ));
    };
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let mask = column("mask").and_then(|f| one(f, "mask"));
    match mask.as_ref().map(|w| w.text.parse::<IpAddr>()) {
        Ok(Ok(mask)) if mask.is_ipv4() == addr.is_ipv4() => Ok(HbaAddress::Net { addr, mask }),
        _ => Err(format!(
            "address \"{text}\" needs a CIDR length (\"{text}/{width}\") or a mask of the same family in the next column{}",
            mask.map(|w| format!(", not \"{}\"", w.text)).unwrap_or_default()
        )),
    }
}

/// The mask with the first `bits` bits set, in `addr`'s family.
fn mask_of_length(addr: IpAddr, bits: u32) -> IpAddr {
    match addr {
        IpAddr::V4(_) => Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0)).into(),
        IpAddr::V6(_) => Ipv6Addr::from(u128::MAX.checked_shl(128 - bits).unwrap_or(0)).into(),
    }
}

const METHODS: &str = "trust, reject, md5, scram-sha-256, password, cert, peer";

fn method(word: &Word) -> Result<HbaMethod, String> {
    match word.text.as_str() {
        "trust" => Ok(HbaMethod::Trust),
        "reject" => Ok(HbaMethod::Reject),
        "md5" => Ok(HbaMethod::Md5),
        "scram-sha-256" => Ok(HbaMethod::ScramSha256),
        "password" | "plain" => Ok(HbaMethod::Password),
        "cert" => Ok(HbaMethod::Cert),
        "peer" => Ok(HbaMethod::Peer),
        "any" | "pam" => Err(format!(
            "method \"{}\" only works as auth_type, not in the hba file (as in PgBouncer)",
            word.text
        )),
        "ldap" | "ident" | "gss" | "sspi" | "radius" | "bsd" | "oauth" => Err(format!(
            "method \"{}\" is not supported by wharf (supported: {METHODS})",
            word.text
        )),
        other => Err(format!(
            "unknown authentication method \"{other}\" (supported: {METHODS})"
        )),
    }
}

/// Why an option after the method is refused.
fn refuse_option(field: &[Word]) -> String {
    let text = field.first().map(|w| w.text.as_str()).unwrap_or_default();
    match text.split_once('=') {
        Some(("map", _)) => {
            "option map= (user name maps from auth_ident_file) is not supported by wharf yet"
                .to_owned()
        }
        Some(("clientcert", _)) => {
            "option clientcert= is not supported: use the cert method on a hostssl line".to_owned()
        }
        Some((name, _)) => format!("unknown option \"{name}\" after the method"),
        None => format!("unexpected \"{text}\" after the method (options are name=value)"),
    }
}

impl fmt::Display for HbaRule {
    /// The record as it would be written: `host all app 10.0.0.0/8 md5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: Vec<String>| items.join(",");
        let databases = list(self.databases.iter().map(ToString::to_string).collect());
        let users = list(self.users.iter().map(ToString::to_string).collect());
        write!(f, "{} {databases} {users}", self.connection)?;
        if self.connection != HbaConnection::Local {
            write!(f, " {}", self.address)?;
        }
        write!(f, " {}", self.method)
    }
}

impl fmt::Display for HbaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HbaConnection::Local => "local",
            HbaConnection::Host => "host",
            HbaConnection::HostSsl => "hostssl",
            HbaConnection::HostNoSsl => "hostnossl",
        })
    }
}

/// A name in double quotes when it would otherwise read as something else.
fn name(f: &mut fmt::Formatter<'_>, name: &str, keywords: &[&str]) -> fmt::Result {
    let plain = !name.is_empty()
        && !keywords.contains(&name)
        && !name.starts_with(['@', '+', '/'])
        && !name.contains(|c: char| c.is_whitespace() || c == ',' || c == '#' || c == '"');
    if plain {
        f.write_str(name)
    } else {
        write!(f, "\"{name}\"")
    }
}

impl fmt::Display for HbaDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HbaDatabase::All => f.write_str("all"),
            HbaDatabase::SameUser => f.write_str("sameuser"),
            HbaDatabase::Replication => f.write_str("replication"),
            HbaDatabase::Name(n) => name(
                f,
                n,
                &["all", "sameuser", "replication", "samerole", "samegroup"],
            ),
        }
    }
}

impl fmt::Display for HbaUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HbaUser::All => f.write_str("all"),
            HbaUser::Name(n) => name(f, n, &["all"]),
        }
    }
}

impl fmt::Display for HbaAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HbaAddress::Any => f.write_str("all"),
            HbaAddress::Net { addr, mask } => {
                let bits = match mask {
                    IpAddr::V4(m) => u128::from(u32::from(*m)) << 96,
                    IpAddr::V6(m) => u128::from(*m),
                };
                if bits.leading_ones() + bits.trailing_zeros() == 128 || bits == 0 {
                    let width = if addr.is_ipv4() { 32 } else { 128 };
                    write!(f, "{addr}/{}", bits.leading_ones().min(width))
                } else {
                    write!(f, "{addr} {mask}")
                }
            }
        }
    }
}

impl fmt::Display for HbaMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HbaMethod::Trust => "trust",
            HbaMethod::Reject => "reject",
            HbaMethod::Md5 => "md5",
            HbaMethod::ScramSha256 => "scram-sha-256",
            HbaMethod::Password => "password",
            HbaMethod::Cert => "cert",
            HbaMethod::Peer => "peer",
        })
    }
}

#[cfg(test)]
mod tests;
