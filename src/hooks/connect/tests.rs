use super::*;

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap()
}

#[test]
fn a_result_has_the_meaning_of_a_tokens_claims() {
    let identity = identity(
        &raw(
            r#"{"user":"42","info":{"name":"Ada"},"subs":["user:42"],"channels":["room:1"],
            "publish":["room:*"],"expires_in":60}"#,
        ),
        None,
    )
    .unwrap()
    .unwrap();
    assert_eq!(&*identity.user, "42");
    assert_eq!(identity.info.unwrap().get(), r#"{"name":"Ada"}"#);
    assert_eq!(identity.subs, ["user:42"]);
    assert_eq!(identity.channels, ["room:1"]);
    assert_eq!(identity.publish, ["room:*"]);
    assert!((59..=61).contains(&auth::seconds_until(identity.exp)));
    let forever = super::identity(&raw(r#"{"user":"7"}"#), None)
        .unwrap()
        .unwrap();
    assert_eq!(forever.exp, auth::MAX_EXP);
    assert!(
        super::identity(&raw("{}"), None).unwrap().is_none(),
        "anonymous"
    );
    let renewed = super::identity(&raw(r#"{"expires_in":5}"#), Some("7"));
    assert_eq!(
        &*renewed.unwrap().unwrap().user,
        "7",
        "a refresh keeps the user"
    );
    assert!(super::identity(&raw(r#"{"user":42}"#), None).is_err());
    assert!(super::identity(&raw(r#"{"subs":"x"}"#), None).is_err());
}

#[test]
fn the_cache_is_bounded_and_keyed_by_what_the_backend_sees() {
    let cookie = |value: &str| vec![("Cookie".to_owned(), value.to_owned())];
    let request = |headers: &'static [(String, String)]| ConnectRequest {
        conn_id: 1,
        node: "n",
        remote_addr: None,
        headers,
        query: &[],
        token: None,
    };
    let a: &'static [(String, String)] = Box::leak(cookie("s=a").into_boxed_slice());
    let b: &'static [(String, String)] = Box::leak(cookie("s=b").into_boxed_slice());
    let c: &'static [(String, String)] = Box::leak(cookie("s=c").into_boxed_slice());
    let (ka, kb, kc) = (
        Cache::key(&request(a)),
        Cache::key(&request(b)),
        Cache::key(&request(c)),
    );
    assert_ne!(ka, kb);
    let as_query = ConnectRequest {
        headers: &[],
        query: a,
        ..request(&[])
    };
    assert_ne!(
        Cache::key(&as_query),
        ka,
        "a header is not a query parameter"
    );
    let cache = Cache::new(Duration::from_secs(60), 2);
    cache.put(ka, raw(r#"{"user":"a"}"#));
    cache.put(kb, raw(r#"{"user":"b"}"#));
    cache.put(kc, raw(r#"{"user":"c"}"#));
    assert_eq!(cache.get(&ka).unwrap().get(), r#"{"user":"a"}"#);
    assert!(cache.get(&kc).is_none(), "full: not kept");
}
