use proptest::prelude::*;

use super::*;

fn decode_err(text: &str) -> DecodeError {
    decode_client_frame(text).expect_err(text)
}

#[test]
fn decodes_every_frame_type() {
    match decode_client_frame(
        r#"{"type":"subscribe","id":1,"channel":"news","since":"00000000000000ff-3"}"#,
    ) {
        Ok(ClientFrame::Subscribe {
            id: Some(1),
            channel,
            since: Some(since),
        }) => {
            assert_eq!(channel, "news");
            assert_eq!(
                since.parse::<Offset>().unwrap(),
                Offset { epoch: 255, seq: 3 }
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode_client_frame(r#"{"type":"unsubscribe","id":2,"channel":"news"}"#),
        Ok(ClientFrame::Unsubscribe { id: Some(2), .. })
    ));
    match decode_client_frame(r#"{"type":"publish","id":3,"channel":"chat","data":{"a":[1,2]}}"#) {
        Ok(ClientFrame::Publish { data, .. }) => assert_eq!(data.get(), r#"{"a":[1,2]}"#),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode_client_frame(r#"{"type":"ping"}"#),
        Ok(ClientFrame::Ping { id: None })
    ));
}

#[test]
fn bad_frames_get_precise_errors_and_keep_the_id() {
    assert_eq!(decode_err("nope").message, "frame is not valid JSON");
    assert_eq!(decode_err("[1,2]").message, "frame must be a JSON object");
    assert_eq!(
        decode_err(r#"{"type":"subscribe""#).message,
        "frame is not valid JSON"
    );
    let err = decode_err(r#"{"id":7}"#);
    assert_eq!((err.id, err.message), (Some(7), "missing field `type`"));
    let err = decode_err(r#"{"type":"shout","id":8}"#);
    assert_eq!((err.id, err.message), (Some(8), "unknown frame type"));
    let err = decode_err(r#"{"type":"subscribe","id":9}"#);
    assert_eq!((err.id, err.message), (Some(9), "missing field `channel`"));
    let err = decode_err(r#"{"type":"publish","id":10,"channel":"a"}"#);
    assert_eq!((err.id, err.message), (Some(10), "missing field `data`"));
    let err = decode_err(r#"{"type":"subscribe","id":11,"channel":5}"#);
    assert_eq!(
        (err.id, err.message),
        (Some(11), "`channel` must be a string")
    );
    assert_eq!(decode_err(r#"{"type":"ping","id":-1}"#).id, None);
    assert_eq!(decode_err(r#"{"type":"ping","id":"x"}"#).id, None);
    assert_eq!(
        decode_err(r#"{"type":"ping","type":"ping"}"#).message,
        "frame has a duplicate field"
    );
}

#[test]
fn a_null_field_is_present_and_null() {
    // `data` is any JSON value, null included: a publish of null publishes null.
    match decode_client_frame(r#"{"type":"publish","id":1,"channel":"c","data":null}"#) {
        Ok(ClientFrame::Publish { id, data, .. }) => {
            assert_eq!((id, data.get()), (Some(1), "null"));
        }
        other => panic!("{other:?}"),
    }
    // The optional fields read null as absent.
    assert!(matches!(
        decode_client_frame(r#"{"type":"ping","id":null}"#),
        Ok(ClientFrame::Ping { id: None })
    ));
    assert!(matches!(
        decode_client_frame(r#"{"type":"history","id":2,"channel":"c","since":null,"limit":null}"#),
        Ok(ClientFrame::History {
            id: Some(2),
            since: None,
            limit: None,
            ..
        })
    ));
    // A required string given as null is mistyped, not missing.
    let err = decode_err(r#"{"type":"subscribe","id":3,"channel":null}"#);
    assert_eq!(
        (err.id, err.message),
        (Some(3), "`channel` must be a string")
    );
    let err = decode_err(r#"{"type":null,"id":4}"#);
    assert_eq!((err.id, err.message), (Some(4), "`type` must be a string"));
    let err = decode_err(r#"{"type":"auth","id":5,"token":null}"#);
    assert_eq!((err.id, err.message), (Some(5), "`token` must be a string"));
}

#[test]
fn channel_names_follow_the_grammar() {
    assert!(ChannelName::parse("chat:room-1/user@x.y=z_2", 128).is_ok());
    assert_eq!(ChannelName::parse("", 128), Err(ChannelNameError::Empty));
    assert_eq!(
        ChannelName::parse("a b", 128),
        Err(ChannelNameError::BadCharacter)
    );
    assert_eq!(
        ChannelName::parse("\"x", 128),
        Err(ChannelNameError::BadCharacter)
    );
    assert_eq!(
        ChannelName::parse("abcd", 3),
        Err(ChannelNameError::TooLong(3))
    );
}

#[test]
fn encoded_frames_are_valid_json() {
    let channel = ChannelName::parse("news", 16).unwrap();
    let offset = Offset { epoch: 1, seq: 2 };
    for text in [
        encode_welcome(1, "node \"a\"", 25_000, None, &[]),
        encode_welcome(
            1,
            "n",
            25_000,
            Some("u\"1"),
            &["user:u\"1".to_owned(), "a".to_owned()],
        ),
        encode_subscribed(Some(1), &channel, offset, Some(true)),
        encode_subscribed(None, &channel, offset, None),
        encode_unsubscribed(Some(2), &channel, None),
        encode_unsubscribed(None, &channel, Some(UnsubscribeReason::Forbidden)),
        encode_published(Some(3), &channel, offset),
        encode_pong(None),
        encode_error(Some(5), ErrorCode::BadRequest, "quote \" and \n newline"),
        encode_message(&channel, offset, r#"{"k":[1,"two"]}"#),
    ] {
        let value: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert!(value["type"].is_string(), "{text}");
    }
    assert_eq!(
        encode_unsubscribed(None, &channel, Some(UnsubscribeReason::Forbidden)),
        r#"{"type":"unsubscribed","channel":"news","reason":"forbidden"}"#
    );
    let message: serde_json::Value =
        serde_json::from_str(&encode_message(&channel, offset, "[1]")).unwrap();
    assert_eq!(message["offset"], "0000000000000001-2");
    assert_eq!(message["data"], serde_json::json!([1]));
}

#[test]
fn close_codes_round_trip() {
    for wire in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 3000, 4000, 4004, 4999,
    ] {
        let code = CloseCode::from_code(wire).unwrap();
        assert_eq!(code.code(), wire);
        assert!(code.reason().len() <= 123);
    }
    assert_eq!(CloseCode::from_code(4321), Some(CloseCode::Custom(4321)));
    for wire in [0, 1, 999, 1004, 1005, 1006, 1015, 2999, 5000, u16::MAX] {
        assert_eq!(CloseCode::from_code(wire), None, "{wire}");
    }
}

#[test]
fn malformed_offsets_are_refused() {
    for text in [
        "",
        "1-2",
        "000000000000000g-1",
        "0000000000000001-",
        "0000000000000001-x",
        "0000000000000001:1",
        "+000000000000001-1",
        "0000000000000001-+1",
        "0000000000000001-10000000000000000000",
    ] {
        assert!(text.parse::<Offset>().is_err(), "{text}");
    }
}

proptest! {
    #[test]
    // Sequences have at most 19 digits (no channel comes near 10^19 messages).
    fn offsets_round_trip(epoch: u64, seq in 0..10_000_000_000_000_000_000_u64) {
        let offset = Offset { epoch, seq };
        prop_assert_eq!(offset.to_string().parse::<Offset>(), Ok(offset));
    }

    #[test]
    fn decoding_arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = decode_client_frame(&text);
    }

    #[test]
    fn published_data_round_trips_through_the_message_frame(data in prop::collection::vec(any::<i64>(), 0..20)) {
        let channel = ChannelName::parse("c", 8).unwrap();
        let json = serde_json::to_string(&data).unwrap();
        let frame = encode_message(&channel, Offset { epoch: 3, seq: 4 }, &json);
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        prop_assert_eq!(value["data"].clone(), serde_json::to_value(&data).unwrap());
    }
}

#[test]
fn a_resume_is_recoverable_only_with_every_message_after_it() {
    let at = |epoch, seq| Offset { epoch, seq };
    let position = at(7, 10);
    // Nothing missing: at the position, or the oldest held is the next one or older.
    assert!(at(7, 10).recoverable_from(position, None));
    assert!(at(7, 10).recoverable_from(position, Some(3)));
    assert!(at(7, 4).recoverable_from(position, Some(5)));
    assert!(at(7, 4).recoverable_from(position, Some(1)));
    assert!(at(7, 0).recoverable_from(position, Some(1)));
    // Something gone: trimmed, nothing held, another epoch, or ahead of the channel.
    assert!(!at(7, 4).recoverable_from(position, Some(6)));
    assert!(!at(7, 4).recoverable_from(position, None));
    assert!(!at(8, 10).recoverable_from(position, Some(1)));
    assert!(!at(7, 11).recoverable_from(position, Some(1)));
}
