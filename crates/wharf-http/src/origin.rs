//! Where a pool's requests go: a scheme, a host and a port.

use std::fmt;

use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::Uri;

use crate::Error;

/// An origin: `http` or `https`, a host and a port.
#[derive(Clone)]
pub(crate) struct Origin {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) https: bool,
    pub(crate) authority: Authority,
    pub(crate) host_header: HeaderValue,
}

impl Origin {
    pub(crate) fn parse(origin: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidOrigin {
            origin: origin.to_owned(),
            reason,
        };
        let uri: Uri = origin
            .parse()
            .map_err(|_| invalid("not a URL such as http://host:port"))?;
        let https = match uri.scheme() {
            Some(s) if s == &Scheme::HTTP => false,
            Some(s) if s == &Scheme::HTTPS => true,
            _ => return Err(invalid("the scheme must be http:// or https://")),
        };
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(invalid("an origin has no path or query"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?.clone();
        if authority.as_str().contains('@') {
            return Err(invalid("user info is not supported"));
        }
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| invalid("bad host"))?;
        Ok(Self {
            host,
            port,
            https,
            authority,
            host_header,
        })
    }

    /// Like [`parse`](Self::parse), for origins that must be `https://`
    /// (TLS settings were given).
    pub(crate) fn parse_https(origin: &str) -> Result<Self, Error> {
        let parsed = Self::parse(origin)?;
        if !parsed.https {
            return Err(Error::InvalidOrigin {
                origin: origin.to_owned(),
                reason: "TLS settings need an https:// origin",
            });
        }
        Ok(parsed)
    }

    /// The path and query of a request's URI: a path, or an absolute URL
    /// of this origin (anything else is refused).
    pub(crate) fn path_of(&self, uri: &Uri) -> Result<PathAndQuery, Error> {
        if let Some(scheme) = uri.scheme() {
            if *scheme != self.scheme() || uri.authority() != Some(&self.authority) {
                return Err(Error::InvalidRequest(format!(
                    "{uri} is not on this pool's origin {self}"
                )));
            }
        }
        Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")))
    }

    /// The scheme a request's absolute URI must have.
    pub(crate) fn scheme(&self) -> Scheme {
        if self.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let origin = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((origin.host.as_str(), origin.port), ("127.0.0.1", 8080));
        assert_eq!(origin.to_string(), "http://127.0.0.1:8080");
        let origin = Origin::parse("http://example.invalid/").unwrap();
        assert_eq!(origin.port, 80);
        assert_eq!(origin.host_header, "example.invalid");
        let origin = Origin::parse("http://[::1]:81").unwrap();
        assert_eq!(origin.host, "::1");
        let origin = Origin::parse("https://example.invalid").unwrap();
        assert_eq!((origin.port, origin.https), (443, true));
        assert_eq!(origin.to_string(), "https://example.invalid");
        for bad in [
            "ftp://example.invalid",
            "example.invalid:80",
            "http://example.invalid/api",
            "http://user:pw@example.invalid",
            "not a url",
        ] {
            assert!(
                matches!(Origin::parse(bad), Err(Error::InvalidOrigin { .. })),
                "{bad}"
            );
        }
    }
}
