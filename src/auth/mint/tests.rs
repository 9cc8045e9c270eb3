use super::*;
use crate::{auth::Authenticator, config::AuthKeyConfig};

fn config(keys: Vec<AuthKeyConfig>) -> AuthConfig {
    AuthConfig {
        keys,
        issuer: "https://id.example.com".to_owned(),
        audience: "switchboard".to_owned(),
        ..AuthConfig::default()
    }
}

fn hmac(kid: &str, secret: &str) -> AuthKeyConfig {
    AuthKeyConfig {
        kid: kid.to_owned(),
        algorithm: "HS256".to_owned(),
        secret: secret.to_owned(),
        ..AuthKeyConfig::default()
    }
}

#[test]
fn a_minted_token_is_accepted_by_the_same_configuration() {
    let auth = config(vec![
        hmac("old", "the-old-secret-of-at-least-32-bytes!"),
        hmac("new", "the-new-secret-of-at-least-32-bytes!"),
    ]);
    let request = TokenRequest {
        sub: "42".to_owned(),
        ttl: Duration::from_secs(3600),
        channels: vec!["room:*".to_owned()],
        info: Some(json!({"name": "Ada"})),
        kid: Some("new".to_owned()),
        ..TokenRequest::default()
    };
    let token = mint(&auth, &request).unwrap();
    let identity = Authenticator::from_config(&auth)
        .unwrap()
        .unwrap()
        .verify(&token)
        .unwrap();
    assert_eq!(&*identity.user, "42");
    assert_eq!(identity.channels, ["room:*"]);
    assert!(identity.exp >= unix_now() + 3590);
    assert!(identity.iat.is_some());
    assert_eq!(identity.jti.as_deref().map(str::len), Some(32));
    assert_eq!(identity.info.unwrap().get(), r#"{"name":"Ada"}"#);
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
        Some("new")
    );
}

#[test]
fn public_keys_an_empty_sub_and_odd_ttls_are_refused() {
    let public = config(vec![AuthKeyConfig {
        algorithm: "RS256".to_owned(),
        public_key_file: "key.pem".to_owned(),
        ..AuthKeyConfig::default()
    }]);
    let request = TokenRequest {
        sub: "42".to_owned(),
        ttl: Duration::from_secs(60),
        ..TokenRequest::default()
    };
    assert!(matches!(
        mint(&public, &request),
        Err(MintError::NoHmacKey(_))
    ));
    let auth = config(vec![hmac("", "a-secret-of-at-least-32-bytes-long!!")]);
    let unknown = TokenRequest {
        kid: Some("nope".to_owned()),
        ..request.clone()
    };
    assert!(
        mint(&auth, &unknown)
            .unwrap_err()
            .to_string()
            .contains("kid `nope`")
    );
    let nobody = TokenRequest {
        sub: String::new(),
        ..request.clone()
    };
    assert_eq!(mint(&auth, &nobody), Err(MintError::EmptySubject));
    let max_ttl = auth.max_token_ttl;
    for ttl in [
        Duration::ZERO,
        max_ttl + Duration::from_secs(1),
        Duration::from_secs(u64::MAX / 2),
    ] {
        let odd = TokenRequest {
            ttl,
            ..request.clone()
        };
        assert_eq!(mint(&auth, &odd), Err(MintError::BadTtl(max_ttl.as_secs())));
    }
}
