//! Wire schema of raftlite: the public `raftlite.v1` Sql and Admin services, the peer-only
//! service nodes use among themselves, and small helpers to build values.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftlite.v1");
}

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("raftlite_descriptor");

pub use v1::value::Kind;

impl v1::Value {
    pub fn null() -> Self {
        Self {
            kind: Some(Kind::Null(v1::Null {})),
        }
    }
    pub fn integer(v: i64) -> Self {
        Self {
            kind: Some(Kind::Integer(v)),
        }
    }
    pub fn real(v: f64) -> Self {
        Self {
            kind: Some(Kind::Real(v)),
        }
    }
    pub fn text(v: impl Into<String>) -> Self {
        Self {
            kind: Some(Kind::Text(v.into())),
        }
    }
    pub fn blob(v: impl Into<Vec<u8>>) -> Self {
        Self {
            kind: Some(Kind::Blob(v.into())),
        }
    }
}

impl v1::Statement {
    /// A statement with positional parameters.
    pub fn new(sql: impl Into<String>, params: Vec<v1::Value>) -> Self {
        Self {
            sql: sql.into(),
            positional: params,
            named: Default::default(),
        }
    }
}
