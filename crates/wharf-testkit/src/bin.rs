//! Locating the PostgreSQL binaries.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::os::run;
use crate::Error;

/// Directory holding the PostgreSQL server and client binaries.
///
/// Looks, in order, at the `WHARF_PG_BIN` environment variable, the newest
/// `/usr/lib/postgresql/<version>/bin` that contains `postgres` (the Debian
/// layout), and `pg_config --bindir`.
///
/// # Errors
///
/// [`Error::InvalidBinDir`] if `WHARF_PG_BIN` is set but holds no `postgres`,
/// [`Error::BinariesNotFound`] if no other candidate holds one either.
pub fn pg_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = env::var_os("WHARF_PG_BIN").filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(Error::InvalidBinDir(dir))
        };
    }
    newest_debian_bin_dir()
        .or_else(pg_config_bin_dir)
        .ok_or(Error::BinariesNotFound)
}

fn has_server(dir: &Path) -> bool {
    dir.join("postgres").is_file()
}

fn newest_debian_bin_dir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, bin)| bin)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`, so that 10 sorts above 9.6.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn pg_config_bin_dir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    has_server(&dir).then_some(dir)
}

/// The major version of the server in `bin`: `"15"`, or `"9.6"` for the
/// pre-10 numbering scheme. Data directories are compatible exactly within a
/// major version.
pub(crate) fn server_major_version(bin: &Path) -> Result<String, Error> {
    let output = run(Command::new(bin.join("postgres")).arg("--version"))?;
    parse_major_version(&output).ok_or_else(|| Error::Unexpected {
        what: "`postgres --version`".into(),
        detail: output.trim().to_owned(),
    })
}

/// Parses `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` and
/// development versions like `... 17beta1`.
fn parse_major_version(output: &str) -> Option<String> {
    let version = output
        .split("(PostgreSQL)")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let mut numbers = version.split('.').map(|part| {
        let digits = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        &part[..digits]
    });
    let first = numbers.next().filter(|n| !n.is_empty())?;
    if first.parse::<u32>().ok()? >= 10 {
        Some(first.to_owned())
    } else {
        let second = numbers.next().filter(|n| !n.is_empty())?;
        Some(format!("{first}.{second}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        assert!(parse_version("10") > parse_version("9.6"));
        assert!(parse_version("15") > parse_version("9.6"));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn major_versions() {
        let parse = parse_major_version;
        assert_eq!(
            parse("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").as_deref(),
            Some("15")
        );
        assert_eq!(
            parse("postgres (PostgreSQL) 17beta1").as_deref(),
            Some("17")
        );
        assert_eq!(
            parse("postgres (PostgreSQL) 9.6.24").as_deref(),
            Some("9.6")
        );
        assert_eq!(parse("something else"), None);
    }
}
