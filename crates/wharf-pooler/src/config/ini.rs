//! PgBouncer's ini format, read as PgBouncer reads it.

use std::path::{Path, PathBuf};

use super::database::split_connstring;
use super::value::Raw;
use super::{read_text, Builder, ConfigError, Pos};

/// How deep `%include`s may nest (PgBouncer's limit).
const MAX_INCLUDE_DEPTH: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Pgbouncer,
    Databases,
    Users,
    Peers,
}

struct Loader {
    builder: Builder,
    section: Option<Section>,
    saw_main: bool,
    /// The files being read, outermost first, as given and canonical.
    stack: Vec<(PathBuf, Option<PathBuf>)>,
}

/// Reads ini `text` that came from `path`.
pub(crate) fn load(text: &str, path: &Path) -> Result<Builder, ConfigError> {
    let mut loader = Loader {
        builder: Builder::new(path),
        section: None,
        saw_main: false,
        stack: Vec::new(),
    };
    loader.read(text, path)?;
    if !loader.saw_main {
        return Err(ConfigError::Syntax {
            file: path.to_owned(),
            line: None,
            message: "no [pgbouncer] section".to_owned(),
        });
    }
    Ok(loader.builder)
}

/// A key at the start of `s`: `'quoted'`, `"quoted"` (with `""` for `"`),
/// or made of `[A-Za-z0-9_.*-]`. Returns the key and the rest.
fn split_key(s: &str) -> Result<(String, &str), String> {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, quote @ ('\'' | '"'))) => {
            let mut key = String::new();
            let mut rest = &s[1..];
            loop {
                let Some(end) = rest.find(quote) else {
                    return Err("unterminated quoted name".to_owned());
                };
                key.push_str(&rest[..end]);
                rest = &rest[end + 1..];
                // A doubled double quote stands for one.
                if quote == '"' && rest.starts_with('"') {
                    key.push('"');
                    rest = &rest[1..];
                } else {
                    break;
                }
            }
            Ok((key, rest))
        }
        _ => {
            let end = s
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*')))
                .unwrap_or(s.len());
            Ok((s[..end].to_owned(), &s[end..]))
        }
    }
}

impl Loader {
    fn read(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let canonical = path.canonicalize().ok();
        self.stack.push((path.to_owned(), canonical));
        let result = self.read_lines(text, path);
        self.stack.pop();
        result
    }

    fn read_lines(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        for (index, raw_line) in text.lines().enumerate() {
            let pos = Pos {
                file: path.to_owned(),
                line: Some(index + 1),
            };
            let line = raw_line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let syntax = |message: String| ConfigError::Syntax {
                file: pos.file.clone(),
                line: pos.line,
                message,
            };
            if let Some(rest) = line.strip_prefix("%include") {
                if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
                    return Err(syntax(format!("unknown directive \"{line}\"")));
                }
                self.include(rest.trim(), &pos)?;
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let Some((name, after)) = rest.split_once(']') else {
                    return Err(syntax("missing \"]\" after section name".to_owned()));
                };
                let after = after.trim_start();
                if !(after.is_empty() || after.starts_with(';') || after.starts_with('#')) {
                    return Err(syntax(format!("unexpected text after [{name}]")));
                }
                self.section(name.trim(), &pos)?;
                continue;
            }
            let (key, rest) = split_key(line).map_err(&syntax)?;
            let Some(value) = rest.trim_start().strip_prefix('=') else {
                return Err(syntax(format!(
                    "expected \"key = value\", found \"{line}\""
                )));
            };
            if key.is_empty() {
                return Err(syntax("missing key before \"=\"".to_owned()));
            }
            self.entry(&pos, &key, value.trim())?;
        }
        Ok(())
    }

    fn include(&mut self, target: &str, pos: &Pos) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: pos.file.clone(),
            line: pos.line,
            key: "%include".to_owned(),
            message,
        };
        if target.is_empty() {
            return Err(invalid("missing file name".to_owned()));
        }
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return Err(invalid(format!(
                "includes nested more than {MAX_INCLUDE_DEPTH} deep"
            )));
        }
        let target = Path::new(target);
        let path = if target.is_absolute() {
            target.to_owned()
        } else {
            pos.file.parent().unwrap_or(Path::new("")).join(target)
        };
        if let Ok(canonical) = path.canonicalize() {
            if self
                .stack
                .iter()
                .any(|(_, c)| c.as_ref() == Some(&canonical))
            {
                let chain: Vec<String> = self
                    .stack
                    .iter()
                    .map(|(p, _)| p.display().to_string())
                    .chain([path.display().to_string()])
                    .collect();
                return Err(invalid(format!("include loop: {}", chain.join(" -> "))));
            }
        }
        let text = read_text(&path, pos.line, Some("%include"), &pos.file)?;
        self.read(&text, &path)
    }

    fn section(&mut self, name: &str, pos: &Pos) -> Result<(), ConfigError> {
        let section = match name {
            "pgbouncer" => {
                self.saw_main = true;
                Section::Pgbouncer
            }
            "databases" => Section::Databases,
            "users" => Section::Users,
            "peers" => Section::Peers,
            _ => {
                return Err(ConfigError::Syntax {
                    file: pos.file.clone(),
                    line: pos.line,
                    message: format!("unknown section [{name}] (expected [pgbouncer], [databases], [users] or [peers])"),
                })
            }
        };
        self.section = Some(section);
        Ok(())
    }

    fn entry(&mut self, pos: &Pos, key: &str, value: &str) -> Result<(), ConfigError> {
        let Some(section) = self.section else {
            return Err(ConfigError::Syntax {
                file: pos.file.clone(),
                line: pos.line,
                message: format!("\"{key}\" is outside of any section"),
            });
        };
        match section {
            Section::Pgbouncer => self.builder.set_setting(pos, key, key, &Raw::Str(value)),
            Section::Databases | Section::Users | Section::Peers => {
                let pairs = split_connstring(value).map_err(|message| ConfigError::Invalid {
                    file: pos.file.clone(),
                    line: pos.line,
                    key: key.to_owned(),
                    message: format!("syntax error in connection string: {message}"),
                })?;
                let pairs: Vec<(Pos, String, String)> = pairs
                    .into_iter()
                    .map(|(k, v)| (pos.clone(), k, v))
                    .collect();
                let raws = pairs
                    .iter()
                    .map(|(p, k, v)| (p.clone(), k.clone(), Raw::Str(v)));
                let shown = |k: &str| {
                    if k.is_empty() {
                        key.to_owned()
                    } else {
                        k.to_owned()
                    }
                };
                match section {
                    Section::Databases => self.builder.add_database(pos, key, raws, shown, true),
                    Section::Users => self.builder.add_user(pos, key, raws, shown, true),
                    _ => self.builder.add_peer(pos, key, raws, shown, true),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(split_key("abc = 1"), Ok(("abc".to_owned(), " = 1")));
        assert_eq!(split_key("* = x"), Ok(("*".to_owned(), " = x")));
        assert_eq!(
            split_key("\"my \"\"db\"\"\"=x"),
            Ok(("my \"db\"".to_owned(), "=x"))
        );
        assert_eq!(split_key("'my db' = x"), Ok(("my db".to_owned(), " = x")));
        assert!(split_key("\"open = x").is_err());
    }
}
