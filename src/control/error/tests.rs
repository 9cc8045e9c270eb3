use super::*;

/// `docs/http-api.md`'s status table: each row's status and code.
fn documented() -> Vec<(u16, String)> {
    let docs = include_str!("../../../docs/http-api.md");
    let table = docs
        .split("| status | code | when |")
        .nth(1)
        .expect("docs/http-api.md has its status table");
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let status = cells[1].parse().expect("a status in the first column");
            (status, cells[2].trim_matches('`').to_owned())
        })
        .collect()
}

#[test]
fn the_docs_status_table_lists_every_kind_and_nothing_else() {
    let documented = documented();
    for kind in Kind::ALL {
        let (status, code) = kind.status_and_code();
        assert!(
            documented.contains(&(status, code.to_owned())),
            "{kind:?} ({status} {code}) is not in docs/http-api.md's status table"
        );
    }
    for (status, code) in &documented {
        assert!(
            Kind::ALL
                .iter()
                .any(|kind| kind.status_and_code() == (*status, code.as_str())),
            "docs/http-api.md's status table has {status} {code}, which no error answers"
        );
    }
}

#[test]
fn a_refused_operation_answers_with_the_code_the_websocket_protocol_sends() {
    use crate::hub::OpError as E;
    for err in [
        E::Behind,
        E::NotFound,
        E::NotOpen(crate::protocol::MessageStatus::Finished),
        E::NotIdle,
        E::NotStream,
        E::NoHistory,
        E::Clustered,
        E::TooManyOpen(1),
        E::TextTooLarge(1),
        E::NotYours,
        E::EditingOff,
    ] {
        assert_eq!(
            op_kind(err).status_and_code().1,
            err.code().as_str(),
            "{err:?}"
        );
    }
}

#[test]
fn a_kind_brings_its_headers() {
    let response = ApiError::new(Kind::Unauthorized, "no key").into_response();
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    let response = ApiError::body_timeout(Duration::from_secs(10)).into_response();
    assert_eq!(response.status(), 408);
    assert_eq!(response.headers()[header::CONNECTION], "close");
    let response = ApiError::method_not_allowed("GET").into_response();
    assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    let response = ApiError::method_not_allowed("POST").into_response();
    assert_eq!(response.headers()[header::ALLOW], "POST");
    let response = ApiError::rate_limited(Duration::from_millis(1500)).into_response();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()[header::RETRY_AFTER], "2");
}
