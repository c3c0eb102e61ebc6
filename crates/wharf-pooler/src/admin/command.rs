//! Console commands, parsed from the text of one simple query: the words
//! are case-insensitive, a database may be a double-quoted identifier, and
//! a trailing `;` is dropped before this.

use crate::lifecycle::ShutdownMode;

/// Why a console command failed: sent as an ErrorResponse, the session
/// goes on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum CommandError {
    #[error("invalid command '{0}', use SHOW HELP;")]
    Syntax(String),
    #[error("admin access needed")]
    AdminNeeded,
    #[error("no such database: {0}")]
    NoDatabase(String),
    #[error("client not found")]
    NoClient,
    #[error("invalid client pointer supplied")]
    BadClientId,
    #[error("{0}")]
    Failed(String),
}

/// One console command. A database argument is `None` where the command
/// takes "every database" without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    /// `SHOW what`, `what` in upper case.
    Show(String),
    /// `SET key = value`, `key` in lower case.
    Set {
        key: String,
        value: String,
    },
    Pause(Option<String>),
    Resume(Option<String>),
    Suspend,
    /// DISABLE needs a database; a missing one is refused once the user's
    /// rights are known, as PgBouncer does.
    Disable(Option<String>),
    Enable(Option<String>),
    Reconnect(Option<String>),
    Kill(Option<String>),
    /// The client id as written (checked when run).
    KillClient(Option<String>),
    WaitClose(Option<String>),
    Reload,
    Shutdown(ShutdownMode),
}

impl Command {
    /// Parses a command; any shape it does not know is a syntax error
    /// naming the whole text.
    pub(super) fn parse(text: &str) -> Result<Command, CommandError> {
        let syntax = || CommandError::Syntax(text.to_owned());
        let mut words = text.split_whitespace();
        let verb = words.next().ok_or_else(syntax)?.to_ascii_uppercase();
        if verb == "SET" {
            return parse_set(text).ok_or_else(syntax);
        }
        let arg = words.next().map(unquote);
        if words.next().is_some() {
            return Err(syntax());
        }
        Ok(match (verb.as_str(), arg) {
            ("SHOW", Some(what)) => Command::Show(what.to_ascii_uppercase()),
            ("PAUSE", db) => Command::Pause(db),
            ("RESUME", db) => Command::Resume(db),
            ("SUSPEND", None) => Command::Suspend,
            ("DISABLE", db) => Command::Disable(db),
            ("ENABLE", db) => Command::Enable(db),
            ("RECONNECT", db) => Command::Reconnect(db),
            ("KILL", db) => Command::Kill(db),
            ("KILL_CLIENT", id) => Command::KillClient(id),
            ("WAIT_CLOSE", db) => Command::WaitClose(db),
            ("RELOAD", None) => Command::Reload,
            ("SHUTDOWN", mode) => Command::Shutdown(
                match mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
                    None => ShutdownMode::Immediate,
                    Some("WAIT_FOR_SERVERS") => ShutdownMode::WaitForServers,
                    Some("WAIT_FOR_CLIENTS") => ShutdownMode::WaitForClients,
                    Some(_) => return Err(syntax()),
                },
            ),
            _ => return Err(syntax()),
        })
    }

    /// Whether only `admin_users` may run it (everything but SHOW).
    pub(super) fn needs_admin(&self) -> bool {
        !matches!(self, Command::Show(_))
    }
}

/// A word of a command: a bare name (compared case-insensitively by the
/// caller) or a double-quoted identifier.
fn unquote(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => word.to_owned(),
    }
}

/// `SET key = value` / `SET key TO value`, the value bare or quoted
/// `'like ''this'''`.
fn parse_set(text: &str) -> Option<Command> {
    let rest = text.get(3..)?.trim_start();
    let key_end = rest.find(|c: char| c.is_whitespace() || c == '=')?;
    let key = rest[..key_end].to_ascii_lowercase();
    let rest = rest[key_end..].trim_start();
    let rest = match rest.strip_prefix('=') {
        Some(rest) => rest,
        None if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("to") => &rest[2..],
        None => return None,
    }
    .trim();
    let value = match rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None if !rest.is_empty() && !rest.contains(char::is_whitespace) => rest.to_owned(),
        None => return None,
    };
    Some(Command::Set { key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Command {
        Command::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn commands_parse_case_insensitively_with_quoted_databases() {
        let cases = [
            ("show pools", Command::Show("POOLS".into())),
            ("PAUSE", Command::Pause(None)),
            ("pause app", Command::Pause(Some("app".into()))),
            (
                "RESUME \"My\"\"Db\"",
                Command::Resume(Some("My\"Db".into())),
            ),
            ("suspend", Command::Suspend),
            ("DISABLE", Command::Disable(None)),
            ("kill_client 12", Command::KillClient(Some("12".into()))),
            ("RELOAD", Command::Reload),
            ("shutdown", Command::Shutdown(ShutdownMode::Immediate)),
            (
                "SHUTDOWN wait_for_clients",
                Command::Shutdown(ShutdownMode::WaitForClients),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Command::parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn set_takes_equals_or_to_and_quoted_values() {
        assert_eq!(
            Command::parse("SET max_client_conn = 5"),
            Ok(set("max_client_conn", "5"))
        );
        assert_eq!(Command::parse("set Verbose to 1"), Ok(set("verbose", "1")));
        assert_eq!(
            Command::parse("SET admin_users='a, b''c'"),
            Ok(set("admin_users", "a, b'c"))
        );
    }

    #[test]
    fn unknown_shapes_are_syntax_errors_naming_the_text() {
        for text in [
            "SELECT 1",
            "SHOW",
            "PAUSE a b",
            "SUSPEND now",
            "RELOAD x",
            "SHUTDOWN NOW",
            "SET x",
            "SET x = a b",
        ] {
            assert_eq!(
                Command::parse(text),
                Err(CommandError::Syntax(text.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn only_show_is_open_to_stats_users() {
        assert!(!Command::Show("POOLS".into()).needs_admin());
        assert!(Command::Pause(None).needs_admin());
        assert!(set("verbose", "1").needs_admin());
    }
}
