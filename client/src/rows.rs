//! Query results: columns, rows with typed getters, and a stream for results too large to
//! hold in memory.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use raftlite_proto::v1;
use tonic::codec::Streaming;

use crate::{Error, FromValue, Value};

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Declared type (`INTEGER`, `TEXT`, ...); empty for expressions.
    pub decl_type: String,
}

impl From<v1::Column> for Column {
    fn from(c: v1::Column) -> Self {
        Column {
            name: c.name,
            decl_type: c.decl_type,
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    pub fn new(values: Vec<Value>) -> Self {
        Row { values }
    }

    /// The value at column `idx` as `T` (see [`FromValue`] for which conversions succeed).
    pub fn get<T: FromValue>(&self, idx: usize) -> Result<T, Error> {
        let value = self.values.get(idx).ok_or_else(|| {
            Error::Conversion(format!(
                "column {idx} out of range: the row has {}",
                self.values.len()
            ))
        })?;
        T::from_value(value).map_err(|e| match e {
            Error::Conversion(m) => Error::Conversion(format!("column {idx}: {m}")),
            other => other,
        })
    }

    pub fn values(&self) -> &[Value] {
        &self.values
    }

    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl TryFrom<v1::Row> for Row {
    type Error = Error;

    fn try_from(row: v1::Row) -> Result<Self, Error> {
        let values = row
            .values
            .into_iter()
            .map(Value::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Row { values })
    }
}

/// A complete query result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    /// Applied log index of the node that ran the query.
    pub applied_index: u64,
    /// True when `max_rows` cut the result short.
    pub truncated: bool,
}

/// Rows of a query as they arrive from the server, one batch at a time.
///
/// Columns and the applied index are known as soon as the stream exists; [`RowStream::truncated`]
/// is final once the stream has ended. An error ends the stream; a stream is not resumed on
/// another node (rerun the query, reads are idempotent).
pub struct RowStream {
    columns: Vec<Column>,
    applied_index: u64,
    truncated: bool,
    done: bool,
    buffered: VecDeque<Row>,
    messages: Streaming<v1::QueryResponse>,
    /// Longest wait for the next message.
    idle_timeout: Duration,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for RowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStream")
            .field("columns", &self.columns)
            .field("applied_index", &self.applied_index)
            .field("truncated", &self.truncated)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl RowStream {
    /// Builds the stream from the first message of a query answer.
    pub(crate) fn new(
        first: v1::QueryResponse,
        messages: Streaming<v1::QueryResponse>,
        idle_timeout: Duration,
    ) -> Result<Self, Error> {
        let mut stream = RowStream {
            columns: Vec::new(),
            applied_index: first.applied_index,
            truncated: false,
            done: false,
            buffered: VecDeque::new(),
            messages,
            idle_timeout,
            idle: None,
        };
        stream.columns = first.columns.iter().cloned().map(Column::from).collect();
        stream.absorb(first)?;
        Ok(stream)
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// True when `max_rows` cut the result short; only meaningful after the stream ended.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Reads the remaining rows into one [`Rows`].
    pub async fn collect_rows(mut self) -> Result<Rows, Error> {
        use futures::StreamExt;
        let mut rows: Vec<Row> = Vec::with_capacity(self.buffered.len());
        while let Some(row) = self.next().await {
            rows.push(row?);
        }
        Ok(Rows {
            columns: self.columns,
            rows,
            applied_index: self.applied_index,
            truncated: self.truncated,
        })
    }

    fn absorb(&mut self, message: v1::QueryResponse) -> Result<(), Error> {
        for row in message.rows {
            self.buffered.push_back(Row::try_from(row)?);
        }
        self.truncated |= message.truncated;
        self.done |= message.done;
        Ok(())
    }
}

impl Stream for RowStream {
    type Item = Result<Row, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(row) = this.buffered.pop_front() {
                return Poll::Ready(Some(Ok(row)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.messages).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    this.idle = None;
                    if let Err(e) = this.absorb(message) {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status.into())));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::Transport(
                        "query stream ended before its last message".into(),
                    ))));
                }
                Poll::Pending => {
                    let timeout = this.idle_timeout;
                    let idle = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if idle.as_mut().poll(cx).is_ready() {
                        this.done = true;
                        return Poll::Ready(Some(Err(Error::timeout(timeout))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_getters_report_the_column() {
        let row = Row::new(vec![
            Value::Integer(1),
            Value::Text("a".into()),
            Value::Null,
        ]);
        assert_eq!(row.get::<i64>(0).expect("int"), 1);
        assert_eq!(row.get::<String>(1).expect("text"), "a");
        assert_eq!(row.get::<Option<String>>(2).expect("null"), None);
        assert_eq!(row.get::<Value>(2).expect("value"), Value::Null);
        let err = row.get::<i64>(1).expect_err("text is not an integer");
        assert_eq!(
            err.to_string(),
            "conversion error: column 1: cannot read a text value as i64"
        );
        let err = row.get::<i64>(3).expect_err("out of range");
        assert!(err.to_string().contains("out of range"), "{err}");
        assert_eq!(row.values().len(), 3);
    }

    #[test]
    fn wire_rows_convert() {
        let wire = v1::Row {
            values: vec![v1::Value::integer(1), v1::Value::blob(vec![9])],
        };
        let row = Row::try_from(wire).expect("valid row");
        assert_eq!(
            row.into_values(),
            vec![Value::Integer(1), Value::Blob(vec![9])]
        );
        let bad = v1::Row {
            values: vec![v1::Value { kind: None }],
        };
        assert!(Row::try_from(bad).is_err());
    }
}
