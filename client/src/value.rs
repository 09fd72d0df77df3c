//! SQLite values and their conversions to and from the wire and Rust types.

use raftlite_proto::{v1, Kind};

use crate::Error;

/// A SQLite value: one of the five storage classes.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    /// The storage class name as SQLite's `typeof()` spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Integer(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<Value> for v1::Value {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => v1::Value::null(),
            Value::Integer(i) => v1::Value::integer(i),
            Value::Real(f) => v1::Value::real(f),
            Value::Text(s) => v1::Value::text(s),
            Value::Blob(b) => v1::Value::blob(b),
        }
    }
}

impl TryFrom<v1::Value> for Value {
    type Error = Error;

    /// Fails on a value without a kind, which the schema forbids.
    fn try_from(v: v1::Value) -> Result<Self, Error> {
        Ok(match v.kind {
            Some(Kind::Null(_)) => Value::Null,
            Some(Kind::Integer(i)) => Value::Integer(i),
            Some(Kind::Real(f)) => Value::Real(f),
            Some(Kind::Text(s)) => Value::Text(s),
            Some(Kind::Blob(b)) => Value::Blob(b),
            None => return Err(Error::Conversion("value without a kind".into())),
        })
    }
}

/// Types a column value can be read as with [`crate::Row::get`].
///
/// Conversions are strict except where no information is lost: an INTEGER reads as `f64`, a
/// TEXT reads as bytes. NULL only reads as `Option<T>` (as `None`) or [`Value`].
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self, Error>;
}

fn mismatch<T>(value: &Value, wanted: &str) -> Result<T, Error> {
    Err(Error::Conversion(format!(
        "cannot read a {} value as {wanted}",
        value.type_name()
    )))
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, Error> {
        match value {
            Value::Integer(i) => Ok(*i),
            other => mismatch(other, "i64"),
        }
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, Error> {
        match value {
            Value::Real(f) => Ok(*f),
            #[allow(clippy::cast_precision_loss)] // SQLite itself converts this way.
            Value::Integer(i) => Ok(*i as f64),
            other => mismatch(other, "f64"),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, Error> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => mismatch(other, "String"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, Error> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => mismatch(other, "Vec<u8>"),
        }
    }
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self, Error> {
        Ok(value.clone())
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, Error> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_types_convert_into_values() {
        assert_eq!(Value::from(7_i64), Value::Integer(7));
        assert_eq!(Value::from(7_i32), Value::Integer(7));
        assert_eq!(Value::from(1.5), Value::Real(1.5));
        assert_eq!(Value::from("a"), Value::Text("a".into()));
        assert_eq!(Value::from(String::from("b")), Value::Text("b".into()));
        assert_eq!(Value::from(vec![1_u8, 2]), Value::Blob(vec![1, 2]));
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert_eq!(Value::from(Some("x")), Value::Text("x".into()));
    }

    #[test]
    fn values_round_trip_through_the_wire_type() {
        for v in [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Real(-0.25),
            Value::Text("héllo".into()),
            Value::Blob(vec![0, 255]),
        ] {
            let wire = v1::Value::from(v.clone());
            assert_eq!(Value::try_from(wire).expect("valid"), v);
        }
    }

    #[test]
    fn a_wire_value_without_kind_is_rejected() {
        let err = Value::try_from(v1::Value { kind: None }).expect_err("no kind");
        assert!(matches!(err, Error::Conversion(_)));
    }

    #[test]
    fn typed_reads_are_strict_but_lossless() {
        assert_eq!(i64::from_value(&Value::Integer(3)).expect("int"), 3);
        assert!(i64::from_value(&Value::Real(3.0)).is_err());
        assert!(i64::from_value(&Value::Null).is_err());
        assert_eq!(
            f64::from_value(&Value::Integer(3)).expect("int as real"),
            3.0
        );
        assert_eq!(
            String::from_value(&Value::Text("t".into())).expect("text"),
            "t"
        );
        assert!(String::from_value(&Value::Blob(vec![])).is_err());
        assert_eq!(
            Vec::<u8>::from_value(&Value::Text("ab".into())).expect("text as bytes"),
            b"ab"
        );
        assert_eq!(Option::<i64>::from_value(&Value::Null).expect("null"), None);
        assert_eq!(
            Option::<i64>::from_value(&Value::Integer(1)).expect("some"),
            Some(1)
        );
        assert!(Option::<i64>::from_value(&Value::Text("1".into())).is_err());
        assert_eq!(Value::from_value(&Value::Null).expect("any"), Value::Null);
    }
}
