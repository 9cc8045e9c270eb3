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
mod tests;
