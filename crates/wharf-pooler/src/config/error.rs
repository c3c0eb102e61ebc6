//! What goes wrong reading a configuration, and what is worth a warning,
//! always with the file, line and key.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a problem is: `FILE:LINE: KEY: ` or less.
struct Location<'a> {
    file: &'a Path,
    line: Option<usize>,
    key: Option<&'a str>,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = self.key {
            write!(f, "{key}: ")?;
        }
        Ok(())
    }
}

fn loc<'a>(file: &'a Path, line: &Option<usize>, key: Option<&'a str>) -> Location<'a> {
    Location {
        file,
        line: *line,
        key,
    }
}

/// A configuration that cannot be used. Shown as `FILE:LINE: KEY: message`,
/// or shorter when there is no line or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read. For an `%include`, `file` and `line` are
    /// the including file's and `key` is `%include`.
    #[error("{}could not read \"{}\": {source}", loc(.file, .line, .key.as_deref()), .path.display())]
    Io {
        /// The file the problem is reported against.
        file: PathBuf,
        /// Its line, if any.
        line: Option<usize>,
        /// The key or directive, if any.
        key: Option<String>,
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not well-formed.
    #[error("{}{message}", loc(.file, .line, None))]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The line, if known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A key has a value it cannot take, or is not allowed where it is.
    #[error("{}{message}", loc(.file, .line, Some(.key)))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The line, if known.
        line: Option<usize>,
        /// The key (for TOML, its dotted path).
        key: String,
        /// What is wrong, usually `invalid value "x": expected ...`.
        message: String,
    },
    /// A valid PgBouncer setting wharf does not implement yet.
    #[error("{}{message}", loc(.file, .line, Some(.key)))]
    Unsupported {
        /// The file.
        file: PathBuf,
        /// The line, if known.
        line: Option<usize>,
        /// The key.
        key: String,
        /// Which value, and what is supported.
        message: String,
    },
}

impl ConfigError {
    /// The file the error is reported against.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Io { file, .. }
            | ConfigError::Syntax { file, .. }
            | ConfigError::Invalid { file, .. }
            | ConfigError::Unsupported { file, .. } => file,
        }
    }

    /// The line, if known (1-based).
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { line, .. }
            | ConfigError::Syntax { line, .. }
            | ConfigError::Invalid { line, .. }
            | ConfigError::Unsupported { line, .. } => *line,
        }
    }

    /// The key, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Io { key, .. } => key.as_deref(),
            ConfigError::Syntax { .. } => None,
            ConfigError::Invalid { key, .. } | ConfigError::Unsupported { key, .. } => Some(key),
        }
    }
}

/// Something accepted but worth telling: an unknown key, an ignored section,
/// a value wharf stores but does not honour. Shown like [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file.
    pub file: PathBuf,
    /// The line, if known (1-based).
    pub line: Option<usize>,
    /// The key, if the warning is about one.
    pub key: Option<String>,
    /// What is worth telling.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            loc(&self.file, &self.line, self.key.as_deref()),
            self.message
        )
    }
}
