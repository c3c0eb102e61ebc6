//! PgBouncer's `*_tls_protocols` and `*_tls_ciphers` values, in OpenSSL's
//! terms, mapped onto what rustls offers: TLS 1.2 and 1.3 with AEAD
//! ciphers and ECDHE key exchange. What rustls cannot offer at all is
//! refused; asking for more than it offers gets a warning.

use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// libtls's names for cipher sets. rustls's suites are all in the
/// strictest of them, so each means every suite rustls has.
const SHORTCUTS: &[&str] = &[
    "default", "secure", "fast", "normal", "compat", "legacy", "insecure", "all", "HIGH",
];

/// OpenSSL's name for each TLS 1.2 suite rustls has, by its IANA name.
const OPENSSL_NAMES: &[(&str, &str)] = &[
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// What a value turned into, and what it asked for that is not there.
#[derive(Debug)]
pub(super) struct Chosen<T> {
    pub(super) items: Vec<T>,
    /// Words of the value that rustls has nothing for.
    pub(super) ignored: Vec<String>,
}

/// The protocol versions `value` allows (`secure`, `all`, `legacy`,
/// `default` or a list of `tlsv1.0` … `tlsv1.3`).
pub(super) fn protocols(value: &str) -> Result<Chosen<&'static SupportedProtocolVersion>, String> {
    let mut chosen = Chosen {
        items: Vec::new(),
        ignored: Vec::new(),
    };
    for word in words(value) {
        match word.to_ascii_lowercase().as_str() {
            "secure" | "default" => {
                push_unique(&mut chosen.items, &rustls::version::TLS12);
                push_unique(&mut chosen.items, &rustls::version::TLS13);
            }
            "all" | "legacy" => {
                push_unique(&mut chosen.items, &rustls::version::TLS12);
                push_unique(&mut chosen.items, &rustls::version::TLS13);
                chosen.ignored.push(format!("{word} (tlsv1.0, tlsv1.1)"));
            }
            "tlsv1.2" => push_unique(&mut chosen.items, &rustls::version::TLS12),
            "tlsv1.3" => push_unique(&mut chosen.items, &rustls::version::TLS13),
            "tlsv1.0" | "tlsv1.1" | "tlsv1" => chosen.ignored.push(word.to_owned()),
            _ => return Err(format!("unknown TLS protocol \"{word}\"")),
        }
    }
    if chosen.items.is_empty() {
        return Err(
            "no protocol wharf can offer: rustls speaks only tlsv1.2 and tlsv1.3".to_owned(),
        );
    }
    Ok(chosen)
}

/// The TLS 1.2 suites `value` (OpenSSL syntax or a libtls shortcut)
/// allows, out of `provider`'s.
pub(super) fn tls12_ciphers(
    value: &str,
    provider: &CryptoProvider,
) -> Result<Chosen<SupportedCipherSuite>, String> {
    let tls12: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS12)
        .collect();
    pick(value, &tls12, |word| {
        OPENSSL_NAMES
            .iter()
            .find(|(openssl, _)| openssl.eq_ignore_ascii_case(word))
            .map(|(_, iana)| *iana)
    })
}

/// The TLS 1.3 suites `value` (IANA names joined by `:`) allows.
pub(super) fn tls13_ciphers(
    value: &str,
    provider: &CryptoProvider,
) -> Result<Chosen<SupportedCipherSuite>, String> {
    let tls13: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .collect();
    pick(value, &tls13, |word| {
        word.strip_prefix("TLS_").map(|_| word)
    })
}

/// The suites of `offered` that `value` names; a shortcut or an OpenSSL
/// keyword (`HIGH`, `!aNULL`) alone means all of them.
fn pick(
    value: &str,
    offered: &[SupportedCipherSuite],
    iana_name: impl Fn(&str) -> Option<&str>,
) -> Result<Chosen<SupportedCipherSuite>, String> {
    let mut chosen = Chosen {
        items: Vec::new(),
        ignored: Vec::new(),
    };
    let mut named_any = false;
    for word in words(value) {
        if SHORTCUTS.iter().any(|s| s.eq_ignore_ascii_case(word)) {
            chosen.items.extend(offered.iter().copied());
            continue;
        }
        if word.starts_with(['!', '-', '+']) || word.chars().all(|c| c.is_ascii_uppercase()) {
            // Exclusions and set keywords narrow OpenSSL's list; rustls's
            // is already free of what they exclude.
            chosen.ignored.push(word.to_owned());
            continue;
        }
        named_any = true;
        let found = iana_name(word).and_then(|iana| {
            offered
                .iter()
                .find(|s| format!("{:?}", s.suite()).replace("TLS13_", "TLS_") == iana)
        });
        match found {
            Some(suite) => chosen.items.push(*suite),
            None => chosen.ignored.push(word.to_owned()),
        }
    }
    if chosen.items.is_empty() {
        if named_any {
            return Err("names no cipher suite rustls has".to_owned());
        }
        chosen.items.extend(offered.iter().copied());
    }
    let mut unique = Vec::new();
    for suite in chosen.items {
        if !unique
            .iter()
            .any(|s: &SupportedCipherSuite| s.suite() == suite.suite())
        {
            unique.push(suite);
        }
    }
    chosen.items = unique;
    Ok(chosen)
}

fn words(value: &str) -> impl Iterator<Item = &str> {
    value
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
}

fn push_unique<T: PartialEq + ?Sized>(list: &mut Vec<&'static T>, item: &'static T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn secure_means_tls12_and_tls13() {
        let chosen = protocols("secure").unwrap();
        assert_eq!(chosen.items.len(), 2);
        assert!(chosen.ignored.is_empty());
    }

    #[test]
    fn legacy_protocols_are_noted_and_only_legacy_is_refused() {
        let chosen = protocols("tlsv1.1,tlsv1.2").unwrap();
        assert_eq!(chosen.items, vec![&rustls::version::TLS12]);
        assert_eq!(chosen.ignored, vec!["tlsv1.1"]);
        assert!(protocols("tlsv1.0,tlsv1.1").is_err());
        assert!(protocols("sslv3").is_err());
    }

    #[test]
    fn openssl_cipher_names_map_to_rustls_suites() {
        let chosen = tls12_ciphers(
            "ECDHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-SHA",
            &provider(),
        )
        .unwrap();
        assert_eq!(chosen.items.len(), 1);
        assert_eq!(chosen.ignored, vec!["DHE-RSA-AES256-SHA"]);
    }

    #[test]
    fn keywords_and_shortcuts_mean_every_suite() {
        let all = tls12_ciphers("default", &provider()).unwrap().items.len();
        assert_eq!(all, 6);
        assert_eq!(
            tls12_ciphers("HIGH:!aNULL:!MD5", &provider())
                .unwrap()
                .items
                .len(),
            all
        );
    }

    #[test]
    fn ciphers_rustls_lacks_entirely_are_refused() {
        assert!(tls12_ciphers("DHE-RSA-AES256-SHA:RC4-SHA", &provider()).is_err());
        assert!(tls13_ciphers("TLS_AES_128_CCM_SHA256", &provider()).is_err());
        assert_eq!(
            tls13_ciphers("TLS_AES_256_GCM_SHA384", &provider())
                .unwrap()
                .items
                .len(),
            1
        );
    }
}
