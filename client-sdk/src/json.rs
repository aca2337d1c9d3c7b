//! The one way JSON is read from the wire or from a bundle.
//!
//! `serde_json` keeps the last of two members with the same name, and a
//! derived struct ignores repeated members it does not know. Another parser
//! may keep the first, so the same bytes could mean two different things to
//! two readers (a header that says `publisher` twice names two publishers).
//! Every message read here is therefore first read into a JSON value by a
//! visitor that refuses an object with a repeated member name at any depth
//! (names compared after unescaping, so `"a"` and `"\u0061"` repeat), and only
//! then converted into its type.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Reads `bytes` as one JSON text in which no object repeats a member name,
/// then converts it into `T`.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_value(value_from_slice(bytes)?)
}

/// Reads `bytes` as one JSON text in which no object repeats a member name.
pub fn value_from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<UniqueMembers>(bytes).map(|v| v.0)
}

/// A JSON value whose objects have unique member names.
struct UniqueMembers(Value);

impl<'de> Deserialize<'de> for UniqueMembers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(UniqueMembers)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON text cannot spell NaN or infinity; refuse rather than guess.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueMembers(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                // The name is not repeated back: inside a field value it may
                // be personal data, and this message reaches receipts and the
                // audit log. serde_json adds the line and column.
                return Err(de::Error::custom(
                    "a JSON object repeats a member name (member names must be unique)",
                ));
            }
            let UniqueMembers(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(text: &str) -> String {
        match value_from_slice(text.as_bytes()) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{text} was accepted as {v}"),
        }
    }

    #[test]
    fn reads_what_serde_json_reads_when_members_are_unique() {
        let text =
            r#"{"a":[1,-2,3.5,true,null,"x",{"b":{}}],"c":{"a":1},"d":18446744073709551615}"#;
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(value_from_slice(text.as_bytes()).unwrap(), expected);
        // The same name in different objects is not a repeat.
        assert_eq!(
            value_from_slice(br#"[{"a":1},{"a":2}]"#).unwrap(),
            json!([{"a": 1}, {"a": 2}])
        );
    }

    #[test]
    fn refuses_a_repeated_member_at_any_depth() {
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"x":{"a":1,"a":2}}"#,
            r#"{"x":[1,{"y":[{"a":1,"a":2}]}]}"#,
            r#"[[[{"a":{},"a":{}}]]]"#,
            // Names are compared after unescaping.
            r#"{"a":1,"\u0061":2}"#,
        ] {
            let message = refused(text);
            assert!(
                message.contains("repeats a member name"),
                "{text}: {message}"
            );
            assert!(message.contains("column"), "{text}: {message}");
        }
    }

    #[test]
    fn does_not_repeat_the_name_back() {
        let message = refused(r#"{"19121212-1212":1,"19121212-1212":2}"#);
        assert!(!message.contains("1212"), "{message}");
    }

    #[test]
    fn other_errors_are_serde_json_errors() {
        assert!(value_from_slice(b"{\"a\":").is_err());
        assert!(value_from_slice(b"{} {}").is_err());
        assert!(value_from_slice(b"").is_err());
    }

    #[test]
    fn converts_into_the_requested_type() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct T {
            n: i64,
        }
        assert_eq!(from_slice::<T>(br#"{"n":5}"#).unwrap(), T { n: 5 });
        // serde's derived reader ignores unknown members, repeated or not;
        // this path does not let a repeated one through.
        assert!(serde_json::from_slice::<T>(br#"{"n":5,"z":1,"z":2}"#).is_ok());
        assert!(from_slice::<T>(br#"{"n":5,"z":1,"z":2}"#).is_err());
        // Integers written as decimals stay refused for integer fields.
        assert!(from_slice::<T>(br#"{"n":5.0}"#).is_err());
    }
}
