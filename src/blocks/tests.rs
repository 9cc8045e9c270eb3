use super::{Block, BlockError, Blocklist};

#[test]
fn a_block_holds_until_its_end_or_until_lifted() {
    let list = Blocklist::default();
    list.block("42", Some(100));
    list.block("43", None);
    assert_eq!(list.blocked("42", 99), Some(Some(100)));
    assert_eq!(list.blocked("42", 100), None);
    assert_eq!(list.blocked("43", u64::MAX), Some(None));
    assert_eq!(list.blocked("44", 0), None);
    assert!(list.unblock("43"));
    assert!(!list.unblock("43"));
    assert_eq!(list.blocked("43", 0), None);
}

#[test]
fn checks_refuse_empty_users_and_past_ends() {
    let list = Blocklist::default();
    assert_eq!(list.check("", None, 10), Err(BlockError::EmptyUser));
    assert_eq!(list.check("a", Some(10), 10), Err(BlockError::Past(10)));
    assert_eq!(list.check("a", Some(11), 10), Ok(()));
    assert_eq!(list.check("a", None, 10), Ok(()));
}

#[test]
fn a_full_list_of_ended_blocks_takes_a_new_one() {
    // A small cap: a million entries here would move the process's resident memory
    // under `memory::tests`, which measure it.
    let list = Blocklist::with_cap(1000);
    for index in 0..1000 {
        list.block(&index.to_string(), Some(5));
    }
    assert_eq!(list.check("late", None, 4), Err(BlockError::Full));
    assert_eq!(list.check("late", None, 10), Ok(()));
    assert_eq!(list.users.len(), 0);
}

#[test]
fn lists_page_by_user_and_leave_ended_blocks_out() {
    let list = Blocklist::default();
    for (user, until) in [
        ("c", None),
        ("a", Some(50)),
        ("b", Some(5)),
        ("d", Some(60)),
    ] {
        list.block(user, until);
    }
    let (page, more) = list.list(10, None, 2);
    let users: Vec<_> = page.iter().map(|block| block.user.as_str()).collect();
    assert_eq!((users, more), (vec!["a", "c"], true));
    let (page, more) = list.list(10, Some("c"), 2);
    assert_eq!(
        (page, more),
        (
            vec![Block {
                user: "d".into(),
                until: Some(60)
            }],
            false
        )
    );
}

#[test]
fn a_reload_replaces_the_list_whole() {
    let list = Blocklist::default();
    list.block("gone", None);
    list.block("kept", Some(100));
    let added = list.replace_all(
        [
            Block {
                user: "kept".into(),
                until: Some(200),
            },
            Block {
                user: "ended".into(),
                until: Some(5),
            },
        ],
        10,
    );
    assert!(added.is_empty(), "{added:?}");
    assert_eq!(list.blocked("gone", 10), None);
    assert_eq!(list.blocked("kept", 150), Some(Some(200)));
    assert_eq!(list.users.len(), 1);
}
