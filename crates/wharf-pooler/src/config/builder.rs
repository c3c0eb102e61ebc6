//! Collecting a configuration from either file format: each section's
//! entries checked and applied, with the file and line of every error.

use super::*;

/// Collects a configuration from either format.
pub(crate) struct Builder {
    pub(super) config: Config,
    pub(super) warnings: Vec<ConfigWarning>,
}

/// A position in a file, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) file: PathBuf,
    pub(crate) line: Option<usize>,
}

impl Pos {
    pub(super) fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line,
            key: key.to_owned(),
            message,
        }
    }

    pub(super) fn value_error(
        &self,
        key: &str,
        raw: &Raw<'_>,
        error: ValueError,
        context: &str,
    ) -> ConfigError {
        match error {
            ValueError::Invalid(expected) => {
                let hint = match raw {
                    Raw::Str(s) if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') => {
                        " (quotes are not removed from values in pgbouncer.ini)"
                    }
                    Raw::Str(s) if s.contains(" ;") || s.contains(" #") => {
                        " (comments must be on a line of their own)"
                    }
                    _ => "",
                };
                self.invalid(
                    key,
                    format!("invalid value {raw}{context}: {expected}{hint}"),
                )
            }
            ValueError::Unsupported(message) => ConfigError::Unsupported {
                file: self.file.clone(),
                line: self.line,
                key: key.to_owned(),
                message,
            },
        }
    }
}

impl Builder {
    pub(crate) fn new(path: &Path) -> Self {
        Builder {
            config: Config {
                path: path.to_owned(),
                ..Config::default()
            },
            warnings: Vec::new(),
        }
    }

    pub(crate) fn warn(&mut self, pos: &Pos, key: Option<&str>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: pos.file.clone(),
            line: pos.line,
            key: key.map(str::to_owned),
            message: message.into(),
        });
    }

    /// Sets a `[pgbouncer]` key; `shown` is how the key is named in
    /// messages (its dotted path in TOML).
    pub(crate) fn set_setting(
        &mut self,
        pos: &Pos,
        key: &str,
        shown: &str,
        raw: &Raw<'_>,
    ) -> Result<(), ConfigError> {
        match self.config.pgbouncer.apply(key, raw) {
            None => {
                let hint = suggest::suggest(key, Settings::keys())
                    .map(|k| format!(" (did you mean \"{k}\"?)"))
                    .unwrap_or_default();
                self.warn(pos, Some(shown), format!("unknown setting, ignored{hint}"));
                Ok(())
            }
            Some(Err(e)) => Err(pos.value_error(shown, raw, e, "")),
            Some(Ok(())) => {
                if let Some(message) = self.config.pgbouncer.key_refusal(key) {
                    return Err(ConfigError::Unsupported {
                        file: pos.file.clone(),
                        line: pos.line,
                        key: shown.to_owned(),
                        message,
                    });
                }
                self.config.positions.0.insert(key.to_owned(), pos.clone());
                if let Some(warning) = self.config.pgbouncer.key_warning(key) {
                    self.warn(pos, Some(shown), warning);
                }
                if let Raw::Str(s) = raw {
                    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') && !is_toml(&pos.file)
                    {
                        self.warn(
                            pos,
                            Some(shown),
                            "the value keeps its double quotes: pgbouncer.ini values are taken literally",
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Applies an entry's `key=value` pairs with `apply`: warnings it
    /// gives are kept, a bad value is the error, an unknown key is an error
    /// or a warning as `unknown_is_error` says.
    pub(crate) fn apply_entry_keys<'r, E>(
        &mut self,
        target: &mut E,
        pairs: impl IntoIterator<Item = (Pos, String, Raw<'r>)>,
        apply: impl Fn(&mut E, &str, &Raw<'_>) -> Result<Option<String>, KeyError>,
        entry: &EntryKind,
        shown: &impl Fn(&str) -> String,
        unknown_is_error: bool,
    ) -> Result<(), ConfigError> {
        for (key_pos, key, raw) in pairs {
            match apply(target, &key, &raw) {
                Ok(None) => {}
                Ok(Some(warning)) => self.warn(&key_pos, Some(&shown(&key)), warning),
                Err(KeyError::Value(e)) => {
                    return Err(key_pos.value_error(&shown(&key), &raw, e, &entry.context))
                }
                Err(KeyError::Unknown) => self.unknown_entry_key(
                    &key_pos,
                    &key,
                    &shown(&key),
                    entry.keys,
                    &format!("{}{}", entry.unknown, entry.context),
                    unknown_is_error,
                )?,
            }
        }
        Ok(())
    }

    pub(super) fn check_entry_name(pos: &Pos, name: &str, shown: &str) -> Result<(), ConfigError> {
        if name.is_empty() {
            return Err(pos.invalid(shown, "empty name".to_owned()));
        }
        Ok(())
    }

    /// Adds a `[databases]` entry from its pairs. `shown(key)` names a key
    /// in messages.
    pub(crate) fn add_database<'r>(
        &mut self,
        pos: &Pos,
        name: &str,
        pairs: impl IntoIterator<Item = (Pos, String, Raw<'r>)>,
        shown: impl Fn(&str) -> String,
        unknown_is_error: bool,
    ) -> Result<(), ConfigError> {
        Self::check_entry_name(pos, name, &shown(""))?;
        if name == "pgbouncer" {
            return Err(pos.invalid(
                &shown(""),
                "database name \"pgbouncer\" is reserved for the admin console".to_owned(),
            ));
        }
        let mut db = Database {
            name: name.to_owned(),
            ..Database::default()
        };
        let entry = EntryKind {
            context: format!(" for database \"{name}\""),
            unknown: "unknown connection parameter",
            keys: DATABASE_KEYS,
        };
        self.apply_entry_keys(
            &mut db,
            pairs,
            apply_database_key,
            &entry,
            &shown,
            unknown_is_error,
        )?;
        if let Err(message) = db.host_ports() {
            return Err(pos.invalid(&shown("port"), message));
        }
        if let Some(message) = db.read_routing_problem() {
            return Err(pos.invalid(&shown("read_routing"), message));
        }
        if replace_or_push(&mut self.config.databases, db, |d| d.name == name) {
            self.warn(
                pos,
                Some(&shown("")),
                "database defined again; the later definition is used",
            );
        }
        Ok(())
    }

    /// An unknown key in a `[databases]` or `[users]` entry: an error where
    /// PgBouncer refuses it (ini), else a warning; either way with the
    /// closest known key as a hint.
    pub(super) fn unknown_entry_key(
        &mut self,
        key_pos: &Pos,
        key: &str,
        shown_key: &str,
        known: &[&str],
        message: &str,
        unknown_is_error: bool,
    ) -> Result<(), ConfigError> {
        let hint = suggest::suggest(key, known.iter().copied())
            .map(|k| format!(" (did you mean \"{k}\"?)"))
            .unwrap_or_default();
        let message = format!("{message}{hint}");
        if unknown_is_error {
            return Err(key_pos.invalid(shown_key, message));
        }
        self.warn(key_pos, Some(shown_key), format!("{message}, ignored"));
        Ok(())
    }

    /// Adds a `[users]` entry from its pairs.
    pub(crate) fn add_user<'r>(
        &mut self,
        pos: &Pos,
        name: &str,
        pairs: impl IntoIterator<Item = (Pos, String, Raw<'r>)>,
        shown: impl Fn(&str) -> String,
        unknown_is_error: bool,
    ) -> Result<(), ConfigError> {
        Self::check_entry_name(pos, name, &shown(""))?;
        let mut user = User {
            name: name.to_owned(),
            ..User::default()
        };
        let entry = EntryKind {
            context: format!(" for user \"{name}\""),
            unknown: "unknown user parameter",
            keys: USER_KEYS,
        };
        let apply = |user: &mut User, key: &str, raw: &Raw<'_>| {
            apply_user_key(user, key, raw).map(|()| None)
        };
        self.apply_entry_keys(&mut user, pairs, apply, &entry, &shown, unknown_is_error)?;
        if replace_or_push(&mut self.config.users, user, |u| u.name == name) {
            self.warn(
                pos,
                Some(&shown("")),
                "user defined again; the later definition is used",
            );
        }
        Ok(())
    }

    /// Whole-configuration checks, then the result.
    pub(crate) fn finish(mut self) -> Loaded {
        let pos = Pos {
            file: self.config.path.clone(),
            line: None,
        };
        let s = &self.config.pgbouncer;
        let mut late = Vec::new();
        if s.auth_type != AuthType::Any && s.auth_file.is_none() {
            late.push((
                "auth_file",
                format!(
                    "not set, so no user can log in with auth_type = {}",
                    s.auth_type
                ),
            ));
        }
        if s.auth_type == AuthType::Any {
            for db in self.config.databases.iter().filter(|d| d.user.is_none()) {
                late.push((
                    "auth_type",
                    format!("auth_type = any needs every database to force a user=, and \"{}\" does not", db.name),
                ));
            }
        }
        // The line itself refuses a pool_mode other than transaction; the
        // [pgbouncer] default is only known once every section is read.
        for db in self.config.databases.iter().filter(|d| {
            d.read_routing == Some(true)
                && d.pool_mode.is_none()
                && s.pool_mode != PoolMode::Transaction
        }) {
            late.push((
                "read_routing",
                format!(
                    "database \"{}\" has read_routing = on, but pool_mode = {}: only \
                     transaction-mode pools route reads",
                    db.name,
                    s.pool_mode.as_str()
                ),
            ));
        }
        if s.listen_addr.is_empty() && s.unix_socket_dir.is_none() {
            late.push((
                "listen_addr",
                "empty, and unix_socket_dir is empty too: nothing to listen on".to_owned(),
            ));
        }
        let unused_hba = (s.auth_type != AuthType::Hba && s.auth_hba_file.is_some()).then(|| {
            format!(
                "not read: auth_type = {}, and only auth_type = hba uses it",
                s.auth_type
            )
        });
        if let Some(message) = unused_hba {
            let at = self.config.positions.0.get("auth_hba_file").cloned();
            self.warn(
                &at.unwrap_or_else(|| pos.clone()),
                Some("auth_hba_file"),
                message,
            );
        }
        for (key, message) in late {
            self.warn(&pos, Some(key), message);
        }
        self.check_peers(&pos);
        Loaded {
            config: self.config,
            warnings: self.warnings,
        }
    }
}

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Replaces the entry `same` finds with `item`, or appends `item`; `true`
/// when an entry was replaced (a later definition wins, as in PgBouncer).
pub(super) fn replace_or_push<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) -> bool {
    match list.iter_mut().find(|existing| same(existing)) {
        Some(existing) => {
            *existing = item;
            true
        }
        None => {
            list.push(item);
            false
        }
    }
}
