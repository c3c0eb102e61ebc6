//! The TOML form of the configuration: `[pgbouncer]`, `[databases.NAME]`,
//! `[users.NAME]` and `[peers.ID]` tables with PgBouncer's keys.

use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::database::split_connstring;
use super::value::Raw;
use super::{line_of, Builder, ConfigError, Pos};

struct Reader<'t> {
    text: &'t str,
    path: &'t Path,
}

impl Reader<'_> {
    fn pos(&self, offset: usize) -> Pos {
        Pos {
            file: self.path.to_owned(),
            line: Some(line_of(self.text, offset)),
        }
    }
}

/// A TOML value as a [`Raw`] one.
fn raw<'a>(value: &'a DeValue<'_>) -> Raw<'a> {
    match value {
        DeValue::String(s) => Raw::Str(s),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(i) => Raw::Int(i),
            Err(_) => Raw::Other("integer out of range"),
        },
        DeValue::Float(f) => match f.as_str().parse::<f64>() {
            Ok(f) => Raw::Float(f),
            Err(_) => Raw::Other("float"),
        },
        DeValue::Boolean(b) => Raw::Bool(*b),
        DeValue::Array(items) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect();
            strings.map_or(Raw::Other("array of non-strings"), Raw::List)
        }
        DeValue::Datetime(_) => Raw::Other("datetime"),
        DeValue::Table(_) => Raw::Other("table"),
    }
}

/// A table's entries in file order.
fn entries<'a, 'i>(
    table: &'a DeTable<'i>,
) -> Vec<(
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// Quotes a TOML key for a dotted path if it needs it.
fn path_part(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Reads TOML `text` that came from `path`.
pub(crate) fn load(text: &str, path: &Path) -> Result<Builder, ConfigError> {
    let document = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        file: path.to_owned(),
        line: e.span().map(|span| line_of(text, span.start)),
        message: format!("invalid TOML: {}", e.message()),
    })?;
    let reader = Reader { text, path };
    let mut builder = Builder::new(path);
    for (key, value) in entries(document.get_ref()) {
        let pos = reader.pos(key.span().start);
        let name: &str = key.get_ref();
        let not_table = || ConfigError::Invalid {
            file: path.to_owned(),
            line: pos.line,
            key: path_part(name),
            message: format!("expected a table, found {}", value.get_ref().type_str()),
        };
        match name {
            "pgbouncer" => {
                let table = value.get_ref().as_table().ok_or_else(not_table)?;
                for (k, v) in entries(table) {
                    let shown = format!("pgbouncer.{}", path_part(k.get_ref()));
                    builder.set_setting(
                        &reader.pos(v.span().start),
                        k.get_ref(),
                        &shown,
                        &raw(v.get_ref()),
                    )?;
                }
            }
            "databases" | "users" | "peers" => {
                let table = value.get_ref().as_table().ok_or_else(not_table)?;
                for (k, v) in entries(table) {
                    read_entry(&reader, &mut builder, name, k.get_ref(), k.span().start, v)?;
                }
            }
            _ => builder.warn(&pos, Some(&path_part(name)), "unknown key, ignored"),
        }
    }
    Ok(builder)
}

/// One `[databases]` or `[users]` entry: a table, or a connection string.
fn read_entry(
    reader: &Reader<'_>,
    builder: &mut Builder,
    section: &str,
    name: &str,
    name_offset: usize,
    value: &Spanned<DeValue<'_>>,
) -> Result<(), ConfigError> {
    let pos = reader.pos(name_offset);
    let prefix = format!("{section}.{}", path_part(name));
    let shown = |k: &str| {
        if k.is_empty() {
            prefix.clone()
        } else {
            format!("{prefix}.{}", path_part(k))
        }
    };
    let owned: Vec<(Pos, String, String)>;
    let pairs: Vec<(Pos, String, Raw<'_>)> = match value.get_ref() {
        DeValue::Table(table) => entries(table)
            .into_iter()
            .map(|(k, v)| {
                (
                    reader.pos(v.span().start),
                    k.get_ref().to_string(),
                    raw(v.get_ref()),
                )
            })
            .collect(),
        DeValue::String(connstring) => {
            let value_pos = reader.pos(value.span().start);
            owned = split_connstring(connstring)
                .map_err(|message| ConfigError::Invalid {
                    file: reader.path.to_owned(),
                    line: value_pos.line,
                    key: prefix.clone(),
                    message: format!("syntax error in connection string: {message}"),
                })?
                .into_iter()
                .map(|(k, v)| (value_pos.clone(), k, v))
                .collect();
            owned
                .iter()
                .map(|(p, k, v)| (p.clone(), k.clone(), Raw::Str(v)))
                .collect()
        }
        other => {
            return Err(ConfigError::Invalid {
                file: reader.path.to_owned(),
                line: pos.line,
                key: prefix.clone(),
                message: format!(
                    "expected a table or a connection string, found {}",
                    other.type_str()
                ),
            })
        }
    };
    match section {
        "databases" => builder.add_database(&pos, name, pairs, shown, false),
        "users" => builder.add_user(&pos, name, pairs, shown, false),
        _ => builder.add_peer(&pos, name, pairs, shown, false),
    }
}
