//! Value parsing and rendering shared by the ini and TOML readers, the
//! `[databases]`/`[users]` entries and the admin console's `SET`.
//!
//! Every setting is read through a [`Codec`]: a zero-sized type that turns a
//! [`Raw`] value (a string from `pgbouncer.ini` or the admin console, or a
//! typed TOML value) into the field's Rust type, and renders the field back
//! the way PgBouncer's `SHOW CONFIG` prints it.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

/// A value as it came out of a file, before it is given its type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw<'a> {
    /// Text: every ini value, a TOML string, or a console `SET`.
    Str(&'a str),
    /// A TOML integer.
    Int(i64),
    /// A TOML float.
    Float(f64),
    /// A TOML boolean.
    Bool(bool),
    /// A TOML array of strings.
    List(Vec<String>),
    /// Any other TOML value; the name of its type.
    Other(&'static str),
}

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Str(s) => write!(f, "{s:?}"),
            Raw::Int(i) => write!(f, "{i}"),
            Raw::Float(x) => write!(f, "{x}"),
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::List(items) => write!(f, "{items:?}"),
            Raw::Other(what) => write!(f, "({what})"),
        }
    }
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ValueError {
    /// Not a value of the key's type; says what was expected.
    Invalid(String),
    /// A value PgBouncer knows but wharf does not implement yet.
    Unsupported(String),
}

impl ValueError {
    pub(crate) fn invalid(expected: impl Into<String>) -> Self {
        ValueError::Invalid(expected.into())
    }
}

/// Parses a [`Raw`] value into a Rust type and renders it back as
/// PgBouncer's `SHOW CONFIG` would (`None` is SQL NULL).
pub(crate) trait Codec {
    /// The field's type.
    type Value;
    /// Reads a value.
    fn parse(raw: &Raw<'_>) -> Result<Self::Value, ValueError>;
    /// Shows a value.
    fn render(value: &Self::Value) -> Option<String>;
}

/// Parses an integer the way C's `strtol(s, _, 0)` does when it must consume
/// the whole string: optional sign, then `0x` hex, `0` octal or decimal.
pub(crate) fn parse_c_integer(s: &str) -> Option<i64> {
    let t = s.trim();
    let (negative, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) =
        if let Some(hex) = rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X")) {
            (16, hex)
        } else if rest.len() > 1 && rest.starts_with('0') {
            (8, &rest[1..])
        } else {
            (10, rest)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let value = i64::from_str_radix(digits, radix).ok()?;
    Some(if negative { -value } else { value })
}

fn raw_integer(raw: &Raw<'_>) -> Option<i64> {
    match raw {
        Raw::Str(s) => parse_c_integer(s),
        Raw::Int(i) => Some(*i),
        _ => None,
    }
}

/// Unsigned integer types a setting can have.
pub(crate) trait Unsigned: Copy + fmt::Display + TryFrom<i64> {
    /// The largest value, for error messages.
    const MAX: u64;
}

impl Unsigned for u16 {
    const MAX: u64 = u16::MAX as u64;
}
impl Unsigned for u32 {
    const MAX: u64 = u32::MAX as u64;
}
impl Unsigned for u64 {
    const MAX: u64 = u64::MAX;
}
impl Unsigned for usize {
    const MAX: u64 = usize::MAX as u64;
}

/// A non-negative integer; C syntax (`0x1f`, `0777`) is accepted as
/// PgBouncer does. Rendered in decimal, like PgBouncer's `%d`.
pub(crate) struct Uint<T>(PhantomData<T>);

impl<T: Unsigned> Codec for Uint<T> {
    type Value = T;

    fn parse(raw: &Raw<'_>) -> Result<T, ValueError> {
        let expected = || ValueError::invalid(format!("expected an integer from 0 to {}", T::MAX));
        let value = raw_integer(raw).ok_or_else(expected)?;
        T::try_from(value).map_err(|_| expected())
    }

    fn render(value: &T) -> Option<String> {
        Some(value.to_string())
    }
}

/// A TCP port, 1 to 65535.
pub(crate) struct Port;

const PORT_EXPECTED: &str = "expected a port number (1-65535)";

impl Codec for Port {
    type Value = u16;

    fn parse(raw: &Raw<'_>) -> Result<u16, ValueError> {
        match raw_integer(raw).map(u16::try_from) {
            Some(Ok(port)) if port != 0 => Ok(port),
            _ => Err(ValueError::invalid(PORT_EXPECTED)),
        }
    }

    fn render(value: &u16) -> Option<String> {
        Some(value.to_string())
    }
}

/// An optional port: empty means unset (NULL).
pub(crate) struct OptPort;

impl Codec for OptPort {
    type Value = Option<u16>;

    fn parse(raw: &Raw<'_>) -> Result<Option<u16>, ValueError> {
        match raw {
            Raw::Str(s) if s.trim().is_empty() => Ok(None),
            _ => Port::parse(raw).map(Some),
        }
    }

    fn render(value: &Option<u16>) -> Option<String> {
        value.map(|port| port.to_string())
    }
}

/// A boolean: `0`/`1` (any integer, non-zero is true, as PgBouncer's
/// integer flags), `yes`/`no`, `on`/`off`, `true`/`false`. Rendered `1`/`0`.
pub(crate) struct Flag;

impl Codec for Flag {
    type Value = bool;

    fn parse(raw: &Raw<'_>) -> Result<bool, ValueError> {
        let expected =
            || ValueError::invalid("expected a boolean (0/1, yes/no, on/off, true/false)");
        match raw {
            Raw::Bool(b) => Ok(*b),
            Raw::Int(i) => Ok(*i != 0),
            Raw::Str(s) => {
                let word = s.trim().to_ascii_lowercase();
                match word.as_str() {
                    "yes" | "on" | "true" => Ok(true),
                    "no" | "off" | "false" => Ok(false),
                    _ => parse_c_integer(&word).map(|i| i != 0).ok_or_else(expected),
                }
            }
            _ => Err(expected()),
        }
    }

    fn render(value: &bool) -> Option<String> {
        Some(if *value { "1" } else { "0" }.to_owned())
    }
}

/// Text, kept as written.
pub(crate) struct Text;

fn raw_text(raw: &Raw<'_>) -> Result<String, ValueError> {
    match raw {
        Raw::Str(s) => Ok((*s).to_owned()),
        _ => Err(ValueError::invalid("expected a string")),
    }
}

impl Codec for Text {
    type Value = String;

    fn parse(raw: &Raw<'_>) -> Result<String, ValueError> {
        raw_text(raw)
    }

    fn render(value: &String) -> Option<String> {
        Some(value.clone())
    }
}

/// Optional text whose PgBouncer default is NULL; empty means unset.
pub(crate) struct OptText;

impl Codec for OptText {
    type Value = Option<String>;

    fn parse(raw: &Raw<'_>) -> Result<Option<String>, ValueError> {
        raw_text(raw).map(|s| Some(s).filter(|s| !s.is_empty()))
    }

    fn render(value: &Option<String>) -> Option<String> {
        value.clone()
    }
}

/// Optional text whose PgBouncer default is the empty string (shown as
/// `""` when unset); empty means unset.
pub(crate) struct TextOrEmpty;

impl Codec for TextOrEmpty {
    type Value = Option<String>;

    fn parse(raw: &Raw<'_>) -> Result<Option<String>, ValueError> {
        OptText::parse(raw)
    }

    fn render(value: &Option<String>) -> Option<String> {
        Some(value.clone().unwrap_or_default())
    }
}

/// A path whose PgBouncer default is the empty string (shown as `""` when
/// unset); empty means unset.
pub(crate) struct PathOrEmpty;

impl Codec for PathOrEmpty {
    type Value = Option<PathBuf>;

    fn parse(raw: &Raw<'_>) -> Result<Option<PathBuf>, ValueError> {
        raw_text(raw).map(|s| Some(PathBuf::from(s)).filter(|p| !p.as_os_str().is_empty()))
    }

    fn render(value: &Option<PathBuf>) -> Option<String> {
        Some(
            value
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
    }
}

/// A path whose PgBouncer default is NULL; empty means unset.
pub(crate) struct OptPath;

impl Codec for OptPath {
    type Value = Option<PathBuf>;

    fn parse(raw: &Raw<'_>) -> Result<Option<PathBuf>, ValueError> {
        PathOrEmpty::parse(raw)
    }

    fn render(value: &Option<PathBuf>) -> Option<String> {
        value.as_ref().map(|p| p.to_string_lossy().into_owned())
    }
}

/// A comma-separated list (or a TOML array of strings); items are trimmed
/// and empty items dropped. Rendered joined by `,`.
pub(crate) struct List;

impl Codec for List {
    type Value = Vec<String>;

    fn parse(raw: &Raw<'_>) -> Result<Vec<String>, ValueError> {
        let items: Vec<String> = match raw {
            Raw::Str(s) => s.split(',').map(|item| item.trim().to_owned()).collect(),
            Raw::List(items) => items.iter().map(|item| item.trim().to_owned()).collect(),
            _ => return Err(ValueError::invalid("expected a comma-separated list")),
        };
        Ok(items.into_iter().filter(|item| !item.is_empty()).collect())
    }

    fn render(value: &Vec<String>) -> Option<String> {
        Some(value.join(","))
    }
}

const TIME_EXPECTED: &str =
    "expected a time in seconds (e.g. 15 or 0.5) or with a unit (e.g. 500ms, 15s, 5min)";

/// Seconds (fractions allowed) to a duration, rounded to the microsecond
/// as PgBouncer keeps times in microseconds.
pub(crate) fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let micros = (seconds * 1e6).round();
    if micros >= u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_micros(micros as u64))
}

fn unit_micros(unit: &str) -> Option<f64> {
    Some(match unit {
        "us" | "µs" | "usec" | "usecs" => 1.0,
        "ms" | "msec" | "msecs" | "millis" => 1e3,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e6,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e6,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600e6,
        "d" | "day" | "days" => 86400e6,
        _ => return None,
    })
}

/// Parses a time: a plain number of seconds, as PgBouncer reads it
/// (`15`, `0.5`), or wharf's extension with units (`500ms`, `1m 30s`).
pub(crate) fn parse_duration_str(s: &str) -> Option<Duration> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    if t.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'e' | b'E' | b'-'))
    {
        return t.parse::<f64>().ok().and_then(seconds_to_duration);
    }
    let mut rest = t;
    let mut micros = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = rest[number_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit = unit_micros(&rest[..unit_len].to_ascii_lowercase())?;
        micros += number * unit;
        rest = rest[unit_len..].trim_start();
    }
    seconds_to_duration(micros / 1e6)
}

pub(crate) fn parse_duration(raw: &Raw<'_>) -> Result<Duration, ValueError> {
    let parsed = match raw {
        Raw::Str(s) => parse_duration_str(s),
        Raw::Int(i) => u64::try_from(*i).ok().map(Duration::from_secs),
        Raw::Float(x) => seconds_to_duration(*x),
        _ => None,
    };
    parsed.ok_or_else(|| ValueError::invalid(TIME_EXPECTED))
}

/// Formats a number as C's `printf("%g")` does: six significant digits,
/// no trailing zeros, exponent form below 1e-4 and from 1e6.
pub(crate) fn format_g(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    if !value.is_finite() {
        return value.to_string();
    }
    let scientific = format!("{value:.5e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return value.to_string();
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return value.to_string();
    };
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim_fraction(mantissa), exponent.abs())
    } else {
        let precision = (5 - exponent) as usize;
        trim_fraction(&format!("{value:.precision$}")).to_owned()
    }
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Renders a duration in seconds as PgBouncer's `SHOW CONFIG` does (`%g`).
pub(crate) fn render_seconds(value: &Duration) -> String {
    format_g(value.as_micros() as f64 / 1e6)
}

/// A time (PgBouncer's `[seconds]` settings).
pub(crate) struct Secs;

impl Codec for Secs {
    type Value = Duration;

    fn parse(raw: &Raw<'_>) -> Result<Duration, ValueError> {
        parse_duration(raw)
    }

    fn render(value: &Duration) -> Option<String> {
        Some(render_seconds(value))
    }
}

/// A time where 0 disables: zero is `None`, rendered `0`.
pub(crate) struct OptSecs;

impl Codec for OptSecs {
    type Value = Option<Duration>;

    fn parse(raw: &Raw<'_>) -> Result<Option<Duration>, ValueError> {
        parse_duration(raw).map(|d| Some(d).filter(|d| !d.is_zero()))
    }

    fn render(value: &Option<Duration>) -> Option<String> {
        Some(render_seconds(&value.unwrap_or_default()))
    }
}

fn whole_seconds(raw: &Raw<'_>) -> Result<Duration, ValueError> {
    let expected = || ValueError::invalid("expected a whole number of seconds");
    let duration = parse_duration(raw).map_err(|_| expected())?;
    if duration.subsec_nanos() != 0 {
        return Err(expected());
    }
    Ok(duration)
}

/// A time PgBouncer keeps as an integer number of seconds.
pub(crate) struct WholeSecs;

impl Codec for WholeSecs {
    type Value = Duration;

    fn parse(raw: &Raw<'_>) -> Result<Duration, ValueError> {
        whole_seconds(raw)
    }

    fn render(value: &Duration) -> Option<String> {
        Some(value.as_secs().to_string())
    }
}

/// An integer number of seconds where 0 disables.
pub(crate) struct OptWholeSecs;

impl Codec for OptWholeSecs {
    type Value = Option<Duration>;

    fn parse(raw: &Raw<'_>) -> Result<Option<Duration>, ValueError> {
        whole_seconds(raw).map(|d| Some(d).filter(|d| !d.is_zero()))
    }

    fn render(value: &Option<Duration>) -> Option<String> {
        Some(value.unwrap_or_default().as_secs().to_string())
    }
}

/// An enumeration read by name, case-insensitively (as PgBouncer's
/// lookups).
pub(crate) trait Named: Copy + PartialEq + 'static {
    /// Every accepted name with its value; the first name of a value is
    /// the one shown.
    const NAMES: &'static [(&'static str, Self)];
    /// Names PgBouncer accepts that wharf does not implement.
    const UNSUPPORTED: &'static [&'static str] = &[];

    /// The canonical name.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, value)| *value == self)
            .map_or("INVALID", |(name, _)| name)
    }

    /// Looks a name up.
    fn from_name(name: &str) -> Result<Self, ValueError> {
        let name = name.trim();
        if let Some((_, value)) = Self::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return Ok(*value);
        }
        let choices: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
        if Self::UNSUPPORTED
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            return Err(ValueError::Unsupported(format!(
                "{:?} is not supported by wharf yet (supported: {})",
                name.to_ascii_lowercase(),
                choices.join(", ")
            )));
        }
        Err(ValueError::invalid(format!(
            "expected one of: {}",
            choices.join(", ")
        )))
    }
}

/// Codec for a [`Named`] enumeration.
pub(crate) struct Lookup<E>(PhantomData<E>);

impl<E: Named> Codec for Lookup<E> {
    type Value = E;

    fn parse(raw: &Raw<'_>) -> Result<E, ValueError> {
        match raw {
            Raw::Str(s) => E::from_name(s),
            _ => E::from_name(""),
        }
    }

    fn render(value: &E) -> Option<String> {
        Some(value.name().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_integers() {
        assert_eq!(parse_c_integer("42"), Some(42));
        assert_eq!(parse_c_integer(" -7"), Some(-7));
        assert_eq!(parse_c_integer("+7"), Some(7));
        assert_eq!(parse_c_integer("0777"), Some(0o777));
        assert_eq!(parse_c_integer("0x1F"), Some(31));
        assert_eq!(parse_c_integer("0"), Some(0));
        for bad in [
            "",
            "abc",
            "12abc",
            "0x",
            "08",
            "1.5",
            "-",
            "99999999999999999999",
        ] {
            assert_eq!(parse_c_integer(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration_str(s);
        assert_eq!(d("15"), Some(Duration::from_secs(15)));
        assert_eq!(d("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(d("1e2"), Some(Duration::from_secs(100)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("15s"), Some(Duration::from_secs(15)));
        assert_eq!(d("1.5 s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("5min"), Some(Duration::from_secs(300)));
        assert_eq!(d("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(d("250us"), Some(Duration::from_micros(250)));
        for bad in [
            "",
            "-1",
            "abc",
            "15 parsecs",
            "s",
            "inf",
            "nan",
            "1e400",
            "5 5",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
        assert!(parse_duration(&Raw::Int(-1)).is_err());
        assert_eq!(
            parse_duration(&Raw::Float(0.25)),
            Ok(Duration::from_millis(250))
        );
        assert!(parse_duration(&Raw::Bool(true)).is_err());
    }

    #[test]
    fn printf_g() {
        assert_eq!(format_g(0.0), "0");
        assert_eq!(format_g(3600.0), "3600");
        assert_eq!(format_g(5.0), "5");
        assert_eq!(format_g(0.5), "0.5");
        assert_eq!(format_g(0.25), "0.25");
        assert_eq!(format_g(123456.0), "123456");
        assert_eq!(format_g(1234567.0), "1.23457e+06");
        assert_eq!(format_g(999999.5), "1e+06");
        assert_eq!(format_g(0.0001), "0.0001");
        assert_eq!(format_g(0.00001), "1e-05");
        assert_eq!(format_g(1.0 / 3.0), "0.333333");
    }

    #[test]
    fn flags() {
        for (input, expected) in [
            ("1", true),
            ("0", false),
            ("yes", true),
            ("Off", false),
            ("TRUE", true),
            ("2", true),
        ] {
            assert_eq!(Flag::parse(&Raw::Str(input)), Ok(expected), "{input}");
        }
        assert!(Flag::parse(&Raw::Str("maybe")).is_err());
        assert_eq!(Flag::parse(&Raw::Bool(true)), Ok(true));
    }
}
