//! Which web pages may open a WebSocket here (cross-site WebSocket hijacking): a browser
//! sends the page's `Origin` with every upgrade, and a page from another site must not be
//! able to act with the visitor's cookies or network position.
//!
//! `server.allowed_origins` lists origins (`https://app.example.com`), with `*.` wildcards
//! for subdomains (`https://*.example.com`), or `*` for all. With the list empty, only
//! upgrades without an `Origin` (non-browser clients) or whose `Origin` names the host the
//! request was sent to are allowed.

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
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = origin.trim().to_ascii_lowercase();
        if self.exact.contains(&origin) {
            return true;
        }
        if self.subdomains.iter().any(|(scheme, suffix)| {
            origin
                .strip_prefix(scheme.as_str())
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
        }) {
            return true;
        }
        // The page is served by this very host (same origin).
        self.exact.is_empty()
            && self.subdomains.is_empty()
            && origin
                .split_once("://")
                .is_some_and(|(_, origin_host)| origin_host.as_bytes().eq_ignore_ascii_case(host))
    }
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
        assert!(none.allows(Some(b"https://chat.example.com"), b"chat.example.com"));
        assert!(none.allows(Some(b"http://localhost:8080"), b"LOCALHOST:8080"));
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
