//! Which web pages may open a WebSocket here (cross-site WebSocket hijacking): a browser
//! sends the page's `Origin` with every upgrade, and a page from another site must not be
//! able to act with the visitor's cookies or network position.
//!
//! `server.allowed_origins` lists origins (`https://app.example.com`), with `*.` wildcards
//! for subdomains (`https://*.example.com`), or `*` for all. With the list empty, only
//! upgrades without an `Origin` (non-browser clients), or from a page served by the host the
//! request was sent to when that host is `localhost` or an IP address, are allowed: a name
//! could be an attacker's, pointed at this server after the page loaded (DNS rebinding), and
//! then the page's origin and the `Host` both name it.
//!
//! An `Origin` is parsed strictly, as browsers send it (RFC 6454: `scheme://host[:port]`,
//! nothing after): anything else (`https://evil.com#.example.com`) matches no entry.

/// The allowed origins, lowercased.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    any: bool,
    exact: Vec<String>,
    /// `(scheme "://" , ".suffix")` of the `*.` entries.
    subdomains: Vec<(String, String)>,
}

impl Origins {
    /// From `server.allowed_origins` (already validated by `config`).
    #[must_use]
    pub fn new(patterns: &[String]) -> Self {
        let mut origins = Self::default();
        for pattern in patterns {
            let pattern = pattern.trim_end_matches('/').to_ascii_lowercase();
            if pattern == "*" {
                origins.any = true;
            } else if let Some((scheme, host)) = pattern.split_once("://*.") {
                origins
                    .subdomains
                    .push((format!("{scheme}://"), format!(".{host}")));
            } else {
                origins.exact.push(pattern);
            }
        }
        origins
    }

    /// Whether every origin is allowed (`*`).
    #[must_use]
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Whether an upgrade with this `Origin` header (if any) sent to `host` may proceed.
    #[must_use]
    pub fn allows(&self, origin: Option<&[u8]>, host: &[u8]) -> bool {
        let Some(origin) = origin else {
            // Not a browser: nothing for a page to hijack.
            return true;
        };
        if self.any {
            return true;
        }
        let Some(origin) = parse_origin(origin) else {
            return false;
        };
        if self.exact.contains(&origin) {
            return true;
        }
        let authority = origin
            .split_once("://")
            .map_or("", |(_, authority)| authority);
        if self.subdomains.iter().any(|(scheme, suffix)| {
            origin.starts_with(scheme.as_str())
                && authority.len() > suffix.len()
                && authority.ends_with(suffix.as_str())
        }) {
            return true;
        }
        // The page is served by this very host (same origin), when no name is involved.
        self.exact.is_empty()
            && self.subdomains.is_empty()
            && authority.as_bytes().eq_ignore_ascii_case(host.trim_ascii())
            && is_local_or_literal(authority)
    }
}

/// An `Origin` header's value as browsers send it, lowercased: `scheme "://" host [":" port]`,
/// the host a name of letters, digits, `-` and `.`, or an IP address (IPv6 in brackets).
/// `None` for anything else (`null`, a path, a fragment, user info, spaces).
fn parse_origin(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?.to_ascii_lowercase();
    let (scheme, authority) = text.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (v6, rest) = bracketed.split_once(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match rest {
                "" => None,
                rest => Some(rest.strip_prefix(':')?),
            };
            (authority.get(..v6.len() + 2)?, port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
    let port_ok = port
        .is_none_or(|port| port.chars().all(|c| c.is_ascii_digit()) && port.parse::<u16>().is_ok());
    (scheme_ok && host_ok && port_ok).then_some(text)
}

/// Whether `authority` (`host[:port]`) names this machine or an address, not a DNS name.
fn is_local_or_literal(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => return bracketed.split_once(']').is_some(),
        None => authority
            .split_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(patterns: &[&str]) -> Origins {
        Origins::new(&patterns.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn without_a_list_only_the_same_host_or_no_origin_is_allowed() {
        let none = origins(&[]);
        assert!(none.allows(None, b"chat.example.com"));
        assert!(none.allows(Some(b"http://localhost:8080"), b"LOCALHOST:8080"));
        assert!(none.allows(Some(b"http://127.0.0.1:8080"), b"127.0.0.1:8080"));
        assert!(none.allows(Some(b"http://[::1]:8080"), b"[::1]:8080"));
        // Malformed, though the Host repeats it.
        assert!(!none.allows(Some(b"http://[::1]x"), b"[::1]x"));
        assert!(!none.allows(Some(b"http://127.0.0.1:+80"), b"127.0.0.1:+80"));
        // A name may be an attacker's, rebound to this server (DNS rebinding): the page's
        // origin and the Host then agree. Such deployments must list their origins.
        assert!(!none.allows(Some(b"http://evil.com"), b"evil.com"));
        assert!(!none.allows(Some(b"https://chat.example.com"), b"chat.example.com"));
        assert!(!none.allows(Some(b"https://evil.example"), b"chat.example.com"));
        assert!(!none.allows(Some(b"null"), b"chat.example.com"));
        assert!(!none.allows(Some(b"http://localhost:8081"), b"localhost:8080"));
    }

    #[test]
    fn listed_origins_and_subdomain_wildcards_are_allowed() {
        let listed = origins(&["https://app.example.com", "https://*.example.org/"]);
        assert!(listed.allows(Some(b"https://APP.example.com"), b"ws.example.com"));
        assert!(listed.allows(Some(b"https://a.example.org"), b"ws.example.com"));
        assert!(listed.allows(Some(b"https://a.b.example.org"), b"ws.example.com"));
        assert!(!listed.allows(Some(b"https://example.org"), b"ws.example.com"));
        assert!(!listed.allows(Some(b"http://a.example.org"), b"ws.example.com"));
        assert!(!listed.allows(Some(b"https://evilexample.org"), b"ws.example.com"));
        assert!(!listed.allows(Some(b"https://app.example.com.evil"), b"ws.example.com"));
        // Origins no browser sends match nothing.
        for bogus in [
            &b"https://evil.com#.example.org"[..],
            b"https://evil.com/.example.org",
            b"https://evil.com?.example.org",
            b"https://user@a.example.org",
            b"https://a.example.org:99999",
            b"https://a.example.org:+443",
            b"https://a.example.org:",
            b"https://a.example.org ",
            b"https://app.example.com/",
            b"null",
            b"https://",
            b"\xff://a.example.org",
        ] {
            assert!(
                !listed.allows(Some(bogus), b"ws.example.com"),
                "{}",
                String::from_utf8_lossy(bogus)
            );
        }
        assert!(!listed.allows(Some(b"https://a.example.org:8443"), b"ws.example.com"));
        // With a list, the same-host rule no longer applies: the list is the whole policy.
        assert!(!listed.allows(Some(b"https://ws.example.com"), b"ws.example.com"));
        assert!(listed.allows(None, b"ws.example.com"));
    }

    #[test]
    fn a_star_allows_every_origin() {
        let any = origins(&["*"]);
        assert!(any.allows_any());
        assert!(any.allows(Some(b"https://evil.example"), b"x"));
        assert!(any.allows(Some(b"null"), b"x"));
    }
}
