//! A SQL statement with its parameters, built before it is sent.

use raftlite_proto::v1;

use crate::Value;

/// One SQL statement with positional (`?`, `?1`) or named (`:name`, `@name`, `$name`)
/// parameters.
///
/// ```
/// use raftlite_client::Statement;
/// let insert = Statement::new("INSERT INTO kv(k, v) VALUES (?1, ?2)").bind("a").bind(1);
/// let update = Statement::new("UPDATE kv SET v = :v WHERE k = :k")
///     .bind_named(":k", "a")
///     .bind_named("v", 2); // ':' is added when the name has no prefix
/// # let _ = (insert, update);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Statement {
    sql: String,
    positional: Vec<Value>,
    named: Vec<(String, Value)>,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            ..Self::default()
        }
    }

    /// Binds the next positional parameter.
    #[must_use]
    pub fn bind(mut self, value: impl Into<Value>) -> Self {
        self.positional.push(value.into());
        self
    }

    /// Binds every value in order as positional parameters.
    #[must_use]
    pub fn bind_all(mut self, values: impl IntoIterator<Item = impl Into<Value>>) -> Self {
        self.positional.extend(values.into_iter().map(Into::into));
        self
    }

    /// Binds a named parameter. The name includes its prefix (`:id`, `@id`, `$id`); a bare
    /// name gets `:`. Binding the same name again replaces the value.
    #[must_use]
    pub fn bind_named(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let mut name = name.into();
        if !name.starts_with([':', '@', '$']) {
            name.insert(0, ':');
        }
        let value = value.into();
        match self.named.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = value,
            None => self.named.push((name, value)),
        }
        self
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    pub fn positional(&self) -> &[Value] {
        &self.positional
    }

    pub fn named(&self) -> &[(String, Value)] {
        &self.named
    }
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Self {
        Statement::new(sql)
    }
}

impl From<String> for Statement {
    fn from(sql: String) -> Self {
        Statement::new(sql)
    }
}

impl From<&Statement> for Statement {
    fn from(statement: &Statement) -> Self {
        statement.clone()
    }
}

impl From<Statement> for v1::Statement {
    fn from(s: Statement) -> Self {
        v1::Statement {
            sql: s.sql,
            positional: s.positional.into_iter().map(Into::into).collect(),
            named: s.named.into_iter().map(|(k, v)| (k, v.into())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_positional_and_named_parameters() {
        let s = Statement::new("SELECT ?1, :a, @b")
            .bind(1)
            .bind(None::<String>)
            .bind_named(":a", "x")
            .bind_named("@b", 2.5)
            .bind_named("a", "y");
        assert_eq!(s.sql(), "SELECT ?1, :a, @b");
        assert_eq!(s.positional(), &[Value::Integer(1), Value::Null]);
        assert_eq!(
            s.named(),
            &[
                (":a".to_string(), Value::Text("y".into())),
                ("@b".to_string(), Value::Real(2.5))
            ]
        );
        let wire = v1::Statement::from(s);
        assert_eq!(
            wire.positional,
            vec![v1::Value::integer(1), v1::Value::null()]
        );
        assert_eq!(wire.named.get(":a"), Some(&v1::Value::text("y")));
        assert_eq!(wire.named.get("@b"), Some(&v1::Value::real(2.5)));
    }

    #[test]
    fn plain_sql_converts_into_a_statement() {
        let s: Statement = "DELETE FROM t".into();
        assert_eq!(s, Statement::new("DELETE FROM t"));
        assert!(s.positional().is_empty() && s.named().is_empty());
        let s2 = Statement::new("SELECT 1").bind_all([1, 2]);
        assert_eq!(s2.positional().len(), 2);
    }
}
