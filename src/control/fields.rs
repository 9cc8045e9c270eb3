//! How optional fields of request bodies read, held to `docs/openapi.json`: an optional
//! field is left out, not sent as `null` (a `null` there is 422, as its schema says); a
//! `data` that is `null` is the JSON value `null`; a whole number written `5.0` is 5 (JSON
//! Schema's `integer`, which is what other languages' encoders write for a float that holds
//! one).

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::value::RawValue;

/// `#[serde(default, deserialize_with = "present")]`: the field's value, never `null`.
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `#[serde(default, deserialize_with = "json_value")]`: any JSON value, `null` included.
pub(super) fn json_value<'de, D>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error>
where
    D: Deserializer<'de>,
{
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// `#[serde(default, deserialize_with = "whole_number")]`: a non-negative whole number, as
/// `5` or `5.0`.
pub(super) fn whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            // 2^64 as f64: every f64 below it that is whole fits a u64.
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
            .map(|f| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let whole = f as u64;
                whole
            })
    });
    whole
        .and_then(|whole| T::try_from(whole).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number in range")))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default, deserialize_with = "super::present")]
        id: Option<String>,
        #[serde(default, deserialize_with = "super::json_value")]
        data: Option<Box<RawValue>>,
        #[serde(default, deserialize_with = "super::whole_number")]
        code: Option<u16>,
    }

    fn parse(text: &str) -> Result<Body, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn absent_fields_are_none_and_null_is_refused_or_a_value() {
        let body = parse("{}").unwrap();
        assert!(body.id.is_none() && body.data.is_none() && body.code.is_none());
        assert!(parse(r#"{"id":null}"#).is_err());
        assert!(parse(r#"{"code":null}"#).is_err());
        assert_eq!(
            parse(r#"{"data":null}"#).unwrap().data.unwrap().get(),
            "null"
        );
        assert_eq!(parse(r#"{"id":"a"}"#).unwrap().id.as_deref(), Some("a"));
    }

    #[test]
    fn whole_numbers_read_as_integers_or_whole_floats_in_range() {
        assert_eq!(parse(r#"{"code":4000}"#).unwrap().code, Some(4000));
        assert_eq!(parse(r#"{"code":4000.0}"#).unwrap().code, Some(4000));
        assert_eq!(parse(r#"{"code":4e3}"#).unwrap().code, Some(4000));
        for bad in ["4000.5", "-1", "70000", "1e300", "\"4000\""] {
            assert!(parse(&format!(r#"{{"code":{bad}}}"#)).is_err(), "{bad}");
        }
    }
}
