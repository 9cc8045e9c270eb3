use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::{unix_now as now, *};
use crate::config::AuthKeyConfig;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn hmac_key(kid: &str, algorithm: &str, secret: &str) -> AuthKeyConfig {
    AuthKeyConfig {
        kid: kid.to_owned(),
        algorithm: algorithm.to_owned(),
        secret: secret.to_owned(),
        public_key_file: String::new(),
    }
}

fn pem_key(kid: &str, algorithm: &str, file: &str) -> AuthKeyConfig {
    AuthKeyConfig {
        kid: kid.to_owned(),
        algorithm: algorithm.to_owned(),
        secret: String::new(),
        public_key_file: format!("{KEYS}/{file}"),
    }
}

fn authenticator(keys: Vec<AuthKeyConfig>) -> Authenticator {
    let config = AuthConfig {
        keys,
        ..AuthConfig::default()
    };
    Authenticator::from_config(&config).unwrap().unwrap()
}

fn sign(
    algorithm: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn claims(sub: &str, exp: u64) -> serde_json::Value {
    json!({"sub": sub, "exp": exp, "channels": ["room:*"], "info": {"name": "Ada"}})
}

/// base64url without padding, for hand-made tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    let pem = |file: &str| std::fs::read(format!("{KEYS}/{file}")).unwrap();
    let hmac = || EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let rsa = || EncodingKey::from_rsa_pem(&pem("rsa.key")).unwrap();
    let cases = [
        (Algorithm::HS256, hmac(), hmac_key("", "HS256", SECRET)),
        (Algorithm::HS384, hmac(), hmac_key("", "HS384", SECRET)),
        (Algorithm::HS512, hmac(), hmac_key("", "HS512", SECRET)),
        (Algorithm::RS256, rsa(), pem_key("", "RS256", "rsa.pub")),
        (Algorithm::RS384, rsa(), pem_key("", "RS384", "rsa.pub")),
        (Algorithm::RS512, rsa(), pem_key("", "RS512", "rsa.pub")),
        (Algorithm::PS256, rsa(), pem_key("", "PS256", "rsa.pub")),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem("ec256.key")).unwrap(),
            pem_key("", "ES256", "ec256.pub"),
        ),
        (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(&pem("ec384.key")).unwrap(),
            pem_key("", "ES384", "ec384.pub"),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&pem("ed25519.key")).unwrap(),
            pem_key("", "EdDSA", "ed25519.pub"),
        ),
    ];
    for (algorithm, signing, key) in cases {
        let auth = authenticator(vec![key]);
        let token = sign(algorithm, None, &signing, &claims("42", now() + 60));
        let identity = auth
            .verify(&token)
            .unwrap_or_else(|err| panic!("{algorithm:?}: {err}"));
        assert_eq!(&*identity.user, "42", "{algorithm:?}");
        assert_eq!(identity.channels, ["room:*"]);
        assert_eq!(identity.info.unwrap().get(), r#"{"name":"Ada"}"#);
        // A tampered payload does not verify.
        let mut parts: Vec<&str> = token.split('.').collect();
        let tampered_claims = b64url(claims("43", now() + 60).to_string().as_bytes());
        parts[1] = &tampered_claims;
        assert_eq!(
            auth.verify(&parts.join(".")).unwrap_err(),
            AuthError::BadSignature,
            "{algorithm:?}"
        );
    }
}

#[test]
fn rotation_picks_the_key_by_kid_and_refuses_unknown_kids() {
    let old = "the-old-secret-of-at-least-32-bytes";
    let auth = authenticator(vec![
        hmac_key("old", "HS256", old),
        hmac_key("new", "HS256", SECRET),
    ]);
    let with = |kid: Option<&str>, secret: &str| {
        sign(
            Algorithm::HS256,
            kid,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
            &claims("7", now() + 60),
        )
    };
    assert!(auth.verify(&with(Some("old"), old)).is_ok());
    assert!(auth.verify(&with(Some("new"), SECRET)).is_ok());
    assert_eq!(
        auth.verify(&with(Some("new"), old)).unwrap_err(),
        AuthError::BadSignature
    );
    assert_eq!(
        auth.verify(&with(Some("gone"), SECRET)).unwrap_err(),
        AuthError::UnknownKey
    );
    // Without a kid, every key of the algorithm is tried.
    assert!(auth.verify(&with(None, old)).is_ok());
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let auth = authenticator(vec![pem_key("rsa", "RS256", "rsa.pub")]);
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("1", now() + 60).to_string().as_bytes())
    );
    assert!(auth.verify(&none).is_err());
    // HS256 "signed" with the RSA public key's PEM as the secret, naming the RSA key or not.
    let public_pem = std::fs::read(format!("{KEYS}/rsa.pub")).unwrap();
    for kid in [Some("rsa"), None] {
        let confused = sign(
            Algorithm::HS256,
            kid,
            &EncodingKey::from_secret(&public_pem).unwrap(),
            &claims("1", now() + 60),
        );
        assert_eq!(
            auth.verify(&confused).unwrap_err(),
            AuthError::WrongAlgorithm
        );
    }
    assert_eq!(
        auth.verify("not a token").unwrap_err(),
        AuthError::Malformed
    );
}

#[test]
fn time_claims_are_checked_with_the_leeway() {
    let auth = authenticator(vec![hmac_key("", "HS256", SECRET)]);
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let token = |claims: serde_json::Value| sign(Algorithm::HS256, None, &key, &claims);
    let expired = auth.verify(&token(claims("1", now() - 60))).unwrap_err();
    assert_eq!(
        expired,
        AuthError::Expired {
            exp: Some(now() - 60)
        }
    );
    assert!(expired.is_expired());
    let message = expired.to_string();
    assert!(
        message.contains("expired") && message.contains("60 s ago"),
        "{message}"
    );
    // Within the 5 s leeway.
    assert!(auth.verify(&token(claims("1", now() - 2))).is_ok());
    let nbf = now() + 60;
    let not_yet = json!({"sub": "1", "exp": now() + 600, "nbf": nbf});
    let refused = auth.verify(&token(not_yet)).unwrap_err();
    assert_eq!(refused, AuthError::NotYetValid { nbf: Some(nbf) });
    assert!(!refused.is_expired());
    assert!(
        refused.to_string().contains(&format!("nbf {nbf}")),
        "{refused}"
    );
    assert_eq!(
        auth.verify(&token(json!({"exp": now() + 60}))).unwrap_err(),
        AuthError::Claims(ClaimsError::Missing("sub"))
    );
    let no_exp = auth.verify(&token(json!({"sub": "1"}))).unwrap_err();
    assert_eq!(no_exp, AuthError::Claims(ClaimsError::Missing("exp")));
    assert!(
        no_exp
            .to_string()
            .starts_with("the token has no `exp` claim"),
        "{no_exp}"
    );
}

/// A well-signed token for nobody, or one that never expires (an `exp` made to overflow the
/// expiry's arithmetic), is refused as `claims`.
#[test]
fn an_empty_sub_and_an_endless_exp_are_refused() {
    let auth = authenticator(vec![hmac_key("", "HS256", SECRET)]);
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let token = |claims: serde_json::Value| sign(Algorithm::HS256, None, &key, &claims);
    assert_eq!(
        auth.verify(&token(claims("", now() + 60))).unwrap_err(),
        AuthError::Claims(ClaimsError::EmptySubject)
    );
    for refused in [claims("1", u64::MAX), claims("1", 253_402_300_800)] {
        assert_eq!(
            auth.verify(&token(refused)).unwrap_err(),
            AuthError::Claims(ClaimsError::EndlessExpiry)
        );
    }
    let week = 7 * 24 * 3600;
    assert_eq!(
        auth.verify(&token(claims("1", 253_402_300_799)))
            .unwrap_err(),
        AuthError::Claims(ClaimsError::TooLong {
            exp: 253_402_300_799,
            max_ttl: week
        })
    );
}

/// `auth.max_token_ttl` bounds how far ahead `exp` may be; `jti` and `iat` (a NumericDate
/// with a fraction too) are kept for revocation, and a `jti` longer than 256 bytes refused.
#[test]
fn the_longest_life_is_bounded_and_jti_and_iat_are_kept() {
    let auth = authenticator(vec![hmac_key("", "HS256", SECRET)]);
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let token = |claims: serde_json::Value| sign(Algorithm::HS256, None, &key, &claims);
    let week = 7 * 24 * 3600;
    assert!(auth.verify(&token(claims("1", now() + week - 5))).is_ok());
    assert!(matches!(
        auth.verify(&token(claims("1", now() + week + 60))),
        Err(AuthError::Claims(ClaimsError::TooLong { .. }))
    ));
    let identity = auth
        .verify(&token(
            serde_json::json!({"sub": "1", "exp": now() + 60, "jti": "t-1", "iat": 1000.75}),
        ))
        .unwrap();
    assert_eq!(
        (identity.jti.as_deref(), identity.iat),
        (Some("t-1"), Some(1000))
    );
    let bare = auth.verify(&token(claims("1", now() + 60))).unwrap();
    assert_eq!((bare.jti, bare.iat), (None, None));
    assert_eq!(
        auth.verify(&token(
            serde_json::json!({"sub": "1", "exp": now() + 60, "jti": "j".repeat(257)})
        ))
        .unwrap_err(),
        AuthError::Claims(ClaimsError::LongJti)
    );
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let config = AuthConfig {
        keys: vec![hmac_key("", "HS256", SECRET)],
        issuer: "https://id.example.com".to_owned(),
        audience: "switchboard".to_owned(),
        ..AuthConfig::default()
    };
    let auth = Authenticator::from_config(&config).unwrap().unwrap();
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let token = |iss: &str, aud: &str| {
        sign(
            Algorithm::HS256,
            None,
            &key,
            &json!({"sub": "1", "exp": now() + 60, "iss": iss, "aud": aud}),
        )
    };
    assert!(
        auth.verify(&token("https://id.example.com", "switchboard"))
            .is_ok()
    );
    let issuer = auth
        .verify(&token("https://evil", "switchboard"))
        .unwrap_err();
    assert_eq!(
        issuer,
        AuthError::Claims(ClaimsError::Issuer(Some("https://evil".to_owned())))
    );
    assert_eq!(
        issuer.to_string(),
        "issuer `https://evil` is not accepted here (auth.issuer)"
    );
    let audience = auth
        .verify(&token("https://id.example.com", "other"))
        .unwrap_err();
    assert_eq!(
        audience.to_string(),
        "audience `other` is not accepted here (auth.audience)"
    );
    // What a message quotes of a token is bounded.
    let long = auth
        .verify(&token("https://id.example.com", &"a".repeat(10_000)))
        .unwrap_err();
    assert!(long.to_string().len() < 200, "{long}");
}

/// The public JWK of a key in `tests/keys`, with `alg` as given (or left out).
fn jwk(file: &str, algorithm: Algorithm, kid: &str, alg: Option<&str>) -> serde_json::Value {
    let pem = std::fs::read(format!("{KEYS}/{file}")).unwrap();
    let encoding = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut value = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, algorithm).unwrap(),
    )
    .unwrap();
    value["kid"] = json!(kid);
    match alg {
        Some(alg) => value["alg"] = json!(alg),
        None => {
            value.as_object_mut().unwrap().remove("alg");
        }
    }
    value
}

#[test]
fn a_jwks_document_gives_its_signing_keys_with_fitting_algorithms() {
    let mut encryption = jwk("rsa.key", Algorithm::RS256, "enc", None);
    encryption["use"] = json!("enc");
    let document = json!({"keys": [
        jwk("rsa.key", Algorithm::RS256, "rsa-implied", None),
        jwk("rsa.key", Algorithm::RS256, "rsa-pss", Some("PS256")),
        jwk("ec256.key", Algorithm::ES256, "p256", None),
        jwk("ec384.key", Algorithm::ES384, "p384", None),
        jwk("ed25519.key", Algorithm::EdDSA, "ed", None),
        // Skipped: symmetric, for encryption, an algorithm that does not fit the key, an
        // unknown key type, not a JWK at all.
        {"kty": "oct", "kid": "oct", "k": "c2VjcmV0"},
        encryption,
        jwk("rsa.key", Algorithm::RS256, "rsa-as-hmac", Some("HS256")),
        jwk("ec256.key", Algorithm::ES256, "p256-as-384", Some("ES384")),
        {"kty": "weird", "kid": "weird"},
        "not an object",
    ]});
    let keys = jwks::parse_key_set(document.to_string().as_bytes()).unwrap();
    let found: Vec<(Option<&str>, Algorithm)> = keys
        .iter()
        .map(|key| (key.kid.as_deref(), key.algorithm))
        .collect();
    assert_eq!(
        found,
        [
            (Some("rsa-implied"), Algorithm::RS256),
            (Some("rsa-pss"), Algorithm::PS256),
            (Some("p256"), Algorithm::ES256),
            (Some("p384"), Algorithm::ES384),
            (Some("ed"), Algorithm::EdDSA),
        ]
    );
    for bad in [
        &b"{}"[..],
        b"not json",
        br#"{"keys": []}"#,
        br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
    ] {
        assert!(jwks::parse_key_set(bad).is_err());
    }
}
