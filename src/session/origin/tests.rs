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
