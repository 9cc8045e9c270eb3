use super::{Revocation, Revocations, RevokeError, Revoked};

fn token(jti: &str, until: u64) -> Revocation {
    Revocation::Token {
        jti: jti.into(),
        until,
    }
}

fn user(user: &str, issued_before: u64, until: u64) -> Revocation {
    Revocation::User {
        user: user.into(),
        issued_before,
        until,
    }
}

#[test]
fn a_revoked_jti_is_refused_until_its_end() {
    let list = Revocations::default();
    assert!(list.apply(&token("t1", 100)));
    assert_eq!(
        list.revoked("u", Some("t1"), None, 99),
        Some(Revoked::Token)
    );
    assert_eq!(list.revoked("u", Some("t1"), None, 100), None);
    assert_eq!(list.revoked("u", Some("t2"), None, 99), None);
    assert_eq!(list.revoked("u", None, None, 99), None);
}

#[test]
fn a_user_revocation_refuses_older_tokens_and_tokens_without_iat() {
    let list = Revocations::default();
    list.apply(&user("alice", 50, 1000));
    assert_eq!(
        list.revoked("alice", None, Some(49), 60),
        Some(Revoked::IssuedBefore(50))
    );
    assert_eq!(
        list.revoked("alice", None, None, 60),
        Some(Revoked::IssuedBefore(50))
    );
    assert_eq!(list.revoked("alice", None, Some(50), 60), None);
    assert_eq!(list.revoked("bob", None, Some(1), 60), None);
    assert_eq!(list.revoked("alice", None, Some(1), 1000), None);
}

#[test]
fn changes_merge_in_any_order_to_the_same_list() {
    let changes = [
        user("alice", 50, 1000),
        user("alice", 70, 500),
        token("t", 300),
        token("t", 200),
    ];
    let forward = Revocations::default();
    let backward = Revocations::default();
    for change in &changes {
        forward.apply(change);
    }
    for change in changes.iter().rev() {
        backward.apply(change);
        backward.apply(change);
    }
    for list in [&forward, &backward] {
        assert_eq!(
            list.revoked("alice", None, Some(60), 900),
            Some(Revoked::IssuedBefore(70))
        );
        assert_eq!(
            list.revoked("x", Some("t"), None, 250),
            Some(Revoked::Token)
        );
    }
    assert!(
        !forward.apply(&token("t", 250)),
        "a shorter end changes nothing"
    );
    assert!(forward.apply(&token("t", 400)));
}

#[test]
fn checks_refuse_bad_input() {
    let list = Revocations::default();
    assert_eq!(list.check(&token("", 20), 10), Err(RevokeError::EmptyJti));
    assert_eq!(
        list.check(&token(&"j".repeat(257), 20), 10),
        Err(RevokeError::LongJti)
    );
    assert_eq!(list.check(&token("a", 10), 10), Err(RevokeError::Past(10)));
    assert_eq!(
        list.check(&user("", 5, 20), 10),
        Err(RevokeError::EmptyUser)
    );
    assert_eq!(
        list.check(&user("a", 311, 400), 10),
        Err(RevokeError::Ahead(311))
    );
    assert_eq!(list.check(&user("a", 310, 400), 10), Ok(()));
}

#[test]
fn a_full_list_takes_a_new_entry_once_ended_ones_are_pruned() {
    let list = Revocations::with_cap(1000);
    for index in 0..1000 {
        list.apply(&token(&index.to_string(), 5));
    }
    assert!(!list.apply(&token("late", 50)));
    assert_eq!(
        list.check(&token("late", 50), 4),
        Err(RevokeError::Full("tokens"))
    );
    assert_eq!(list.check(&token("late", 50), 10), Ok(()));
    assert_eq!(list.len(), (0, 0));
}
