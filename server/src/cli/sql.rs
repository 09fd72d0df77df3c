//! `raftlite sql`: run one SQL script against a cluster.
//!
//! Output contract (scripts rely on it):
//! - a read prints one line per row, values tab-separated: NULL as `NULL`, blobs as `x'0a0b'`,
//!   reals with a decimal point, and in text (and column names) a backslash, tab, newline or
//!   carriage return as `\\`, `\t`, `\n`, `\r` (as `mysql --batch` does), so that every row
//!   is one line with one tab between values; `--header` first prints the column names. The
//!   text form does not keep types (NULL and the text 'NULL', 1 and '1' print alike): with
//!   `--json`, one object per row, `{"column": value}`, blobs as `{"blob": "0a0b"}`.
//! - a write prints `rows_affected=N last_insert_rowid=N log_index=N`; with `--json`, one
//!   object with those keys plus `deduplicated` and the per-statement `results` (with the
//!   `columns` and `rows` of statements that return rows).
//! - a write whose statements return rows (`... RETURNING`) prints those rows like a query
//!   (`--header` too) and then its `rows_affected=..` line on stderr, so that
//!   `id=$(raftlite sql "INSERT .. RETURNING id")` captures just the rows.
//! - an error prints `error: <GRPC_CODE>: <message>` on stderr and exits with 1.

use std::io::Write as _;
use std::process::ExitCode;

use futures::StreamExt;
use raftlite_client::{Client, Column, Consistency, ExecuteResult, Statement, Value};
use serde_json::json;

use super::sql_text::{classify, split_statements, StatementKind};
use super::{fail, hex, AddrArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyArg {
    Stale,
    Bounded,
    AtIndex,
    Linearizable,
}

/// Run SQL: reads are queried, writes executed atomically as one transaction.
#[derive(Debug, Clone, clap::Args)]
pub struct SqlArgs {
    #[command(flatten)]
    pub addr: AddrArgs,
    /// Read consistency of a query.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ConsistencyArg,
    /// Largest lag in log entries for `--consistency bounded`.
    #[arg(long, value_name = "N", required_if_eq("consistency", "bounded"))]
    pub max_lag: Option<u64>,
    /// Log index the read must include for `--consistency at-index`.
    #[arg(long, value_name = "N", required_if_eq("consistency", "at-index"))]
    pub index: Option<u64>,
    /// One JSON object per row (or per write).
    #[arg(long)]
    pub json: bool,
    /// Print the column names first.
    #[arg(long)]
    pub header: bool,
    /// Stop after this many rows (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_rows: u64,
    /// Treat the SQL as a read, whatever it looks like.
    #[arg(long, conflicts_with = "write")]
    pub read: bool,
    /// Treat the SQL as a write, whatever it looks like.
    #[arg(long)]
    pub write: bool,
    /// SQL; several statements separated by `;` run as one transaction.
    pub sql: String,
    /// Positional parameters: `123` integer, `1.5` real, `null`, `text:..`, `int:..`,
    /// `real:..`, `blob:HEX`; anything else is text.
    #[arg(allow_hyphen_values = true)]
    pub params: Vec<String>,
}

pub async fn run(args: SqlArgs) -> anyhow::Result<ExitCode> {
    let params = match args
        .params
        .iter()
        .map(|p| parse_param(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(params) => params,
        Err(message) => {
            eprintln!("error: INVALID_ARGUMENT: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let statements = split_statements(&args.sql);
    if statements.is_empty() {
        eprintln!("error: INVALID_ARGUMENT: no SQL statement given");
        return Ok(ExitCode::FAILURE);
    }
    if statements.len() > 1 && !params.is_empty() {
        eprintln!(
            "error: INVALID_ARGUMENT: parameters need a single statement, got {}",
            statements.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let kind = if args.read {
        StatementKind::Read
    } else if args.write {
        StatementKind::Write
    } else if statements
        .iter()
        .all(|s| classify(s) == StatementKind::Read)
    {
        StatementKind::Read
    } else {
        StatementKind::Write
    };
    let client = match args.addr.client() {
        Ok(client) => client,
        Err(e) => return Ok(fail(&e)),
    };
    let statements: Vec<Statement> = statements
        .into_iter()
        .map(|sql| Statement::new(sql).bind_all(params.iter().cloned()))
        .collect();
    match kind {
        StatementKind::Write => match client.execute(statements).await {
            Ok(result) => {
                let summary = format_write(&result, args.json);
                let rows = returned_rows(&result, args.header);
                if args.json || rows.is_empty() {
                    println!("{summary}");
                } else {
                    let mut out = std::io::stdout().lock();
                    for line in rows {
                        let _ = writeln!(out, "{line}");
                    }
                    eprintln!("{summary}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(fail(&e)),
        },
        StatementKind::Read => {
            let consistency = match args.consistency {
                ConsistencyArg::Stale => Consistency::Stale,
                ConsistencyArg::Bounded => Consistency::Bounded {
                    max_lag: args.max_lag.unwrap_or(0),
                },
                ConsistencyArg::AtIndex => Consistency::AtIndex(args.index.unwrap_or(0)),
                ConsistencyArg::Linearizable => Consistency::Linearizable,
            };
            let output = RowFormat {
                json: args.json,
                header: args.header,
            };
            for statement in statements {
                match print_query(&client, statement, consistency, args.max_rows, output).await {
                    Ok(()) => {}
                    Err(PrintError::Query(e)) => return Ok(fail(&e)),
                    // The reader went away (`| head`): not a failure of ours.
                    Err(PrintError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        break
                    }
                    Err(PrintError::Output(e)) => {
                        return Err(anyhow::Error::new(e).context("write rows to stdout"))
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) enum PrintError {
    Query(raftlite_client::Error),
    Output(std::io::Error),
}

impl From<raftlite_client::Error> for PrintError {
    fn from(e: raftlite_client::Error) -> Self {
        PrintError::Query(e)
    }
}

impl From<std::io::Error> for PrintError {
    fn from(e: std::io::Error) -> Self {
        PrintError::Output(e)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct RowFormat {
    pub(crate) json: bool,
    pub(crate) header: bool,
}

/// Streams one query's rows to stdout as they arrive.
pub(crate) async fn print_query(
    client: &Client,
    statement: Statement,
    consistency: Consistency,
    max_rows: u64,
    format: RowFormat,
) -> Result<(), PrintError> {
    let mut rows = client
        .query_stream(statement, consistency, max_rows)
        .await?;
    let columns = rows.columns().to_vec();
    let keys = json_keys(&columns);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if format.header && !format.json {
        writeln!(out, "{}", header_line(&columns))?;
    }
    let mut count = 0_u64;
    while let Some(row) = rows.next().await {
        let row = row?;
        if format.json {
            writeln!(out, "{}", json_row(&keys, row.values()))?;
        } else {
            writeln!(out, "{}", text_row(row.values()))?;
        }
        count += 1;
    }
    out.flush()?;
    if rows.truncated() {
        eprintln!("-- truncated after {count} rows (--max-rows)");
    }
    Ok(())
}

/// Parses a command-line parameter: `123` integer, `1.5` real, `null`, or explicitly typed
/// with `text:`, `int:`, `real:`, `blob:HEX`; anything else is text.
pub fn parse_param(raw: &str) -> Result<Value, String> {
    if let Some(text) = raw.strip_prefix("text:") {
        return Ok(Value::Text(text.to_string()));
    }
    if let Some(int) = raw.strip_prefix("int:") {
        return int
            .trim()
            .parse()
            .map(Value::Integer)
            .map_err(|e| format!("parameter {raw:?}: {e}"));
    }
    if let Some(real) = raw.strip_prefix("real:") {
        return real
            .trim()
            .parse()
            .map(Value::Real)
            .map_err(|e| format!("parameter {raw:?}: {e}"));
    }
    if let Some(blob) = raw.strip_prefix("blob:") {
        return parse_hex(blob)
            .map(Value::Blob)
            .map_err(|e| format!("parameter {raw:?}: {e}"));
    }
    if raw == "null" || raw == "NULL" {
        return Ok(Value::Null);
    }
    if let Ok(int) = raw.parse::<i64>() {
        return Ok(Value::Integer(int));
    }
    // Only plain decimal notation: Rust also parses "inf" and "NaN", which are text here.
    let numeric = raw
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if numeric && raw.bytes().any(|b| b.is_ascii_digit()) {
        if let Ok(real) = raw.parse::<f64>() {
            return Ok(Value::Real(real));
        }
    }
    Ok(Value::Text(raw.to_string()))
}

fn parse_hex(hex: &str) -> Result<Vec<u8>, String> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("not a hex byte at offset {i}"))
        })
        .collect()
}

/// A value as the text output shows it.
pub fn text_value(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format_real(*f),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => format!("x'{}'", hex(b)),
    }
}

/// Reals always show they are reals (`3.0`, not `3`); very large or small ones in exponent
/// notation.
fn format_real(f: f64) -> String {
    let magnitude = f.abs();
    if f.is_finite() && f != 0.0 && !(1e-5..1e15).contains(&magnitude) {
        format!("{f:e}")
    } else if f.is_finite() && f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// One row as a line of tab-separated fields.
pub fn text_row(values: &[Value]) -> String {
    let fields: Vec<String> = values.iter().map(|v| field(&text_value(v))).collect();
    fields.join("\t")
}

fn header_line(columns: &[Column]) -> String {
    let names: Vec<String> = columns.iter().map(|c| field(&c.name)).collect();
    names.join("\t")
}

/// Text as one field of a line: the characters that would end the field or the line, and the
/// backslash that escapes them, escaped.
fn field(text: &str) -> String {
    if !text.contains(['\\', '\t', '\n', '\r']) {
        return text.to_string();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\t' => escaped.push_str("\\t"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            c => escaped.push(c),
        }
    }
    escaped
}

pub fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => json!(i),
        // Not-a-number and infinities have no JSON form: they become null.
        Value::Real(f) => json!(f),
        Value::Text(s) => json!(s),
        Value::Blob(b) => json!({ "blob": hex(b) }),
    }
}

/// JSON keys for the columns: their names, with `_2`, `_3`.. added to repeated names so that
/// no value is lost.
fn json_keys(columns: &[Column]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(columns.len());
    for column in columns {
        let mut key = column.name.clone();
        let mut n = 1;
        while keys.contains(&key) {
            n += 1;
            key = format!("{}_{n}", column.name);
        }
        keys.push(key);
    }
    keys
}

/// One row as a JSON object, keys in column order (a `serde_json::Map` would sort them).
pub fn json_row(keys: &[String], values: &[Value]) -> String {
    let fields: Vec<String> = keys
        .iter()
        .zip(values)
        .map(|(key, value)| {
            format!(
                "{}:{}",
                serde_json::Value::from(key.as_str()),
                json_value(value)
            )
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// The text lines of the rows a write's statements returned (`RETURNING`), each statement's
/// column names first with `header`.
pub fn returned_rows(result: &ExecuteResult, header: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for r in result.results.iter().filter(|r| !r.columns.is_empty()) {
        if header {
            lines.push(header_line(&r.columns));
        }
        lines.extend(r.rows.iter().map(|row| text_row(row.values())));
    }
    lines
}

/// The line a write prints: totals over its statements, the rowid of the last one.
pub fn format_write(result: &ExecuteResult, json: bool) -> String {
    let rows_affected: u64 = result.results.iter().map(|r| r.rows_affected).sum();
    let last_insert_rowid = result.results.last().map_or(0, |r| r.last_insert_rowid);
    if json {
        let results: Vec<_> = result
            .results
            .iter()
            .map(|r| {
                let mut o = json!({ "rows_affected": r.rows_affected, "last_insert_rowid": r.last_insert_rowid });
                if !r.columns.is_empty() {
                    let keys = json_keys(&r.columns);
                    let rows: Vec<serde_json::Value> = r
                        .rows
                        .iter()
                        .map(|row| {
                            let fields = keys.iter().cloned().zip(row.values().iter().map(json_value));
                            serde_json::Value::Object(fields.collect())
                        })
                        .collect();
                    o["columns"] = json!(keys);
                    o["rows"] = json!(rows);
                }
                o
            })
            .collect();
        json!({
            "rows_affected": rows_affected,
            "last_insert_rowid": last_insert_rowid,
            "log_index": result.log_index,
            "deduplicated": result.deduplicated,
            "results": results,
        })
        .to_string()
    } else {
        format!(
            "rows_affected={rows_affected} last_insert_rowid={last_insert_rowid} log_index={}",
            result.log_index
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use raftlite_client::StatementResult;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sql: SqlArgs,
    }

    #[test]
    fn parses_parameters() {
        for (raw, want) in [
            ("123", Value::Integer(123)),
            ("-5", Value::Integer(-5)),
            ("1.5", Value::Real(1.5)),
            ("-2e3", Value::Real(-2000.0)),
            ("null", Value::Null),
            ("NULL", Value::Null),
            ("text:123", Value::Text("123".into())),
            ("text:", Value::Text(String::new())),
            ("int:42", Value::Integer(42)),
            ("real:2", Value::Real(2.0)),
            ("blob:00ff0A", Value::Blob(vec![0, 255, 10])),
            ("blob:", Value::Blob(vec![])),
            ("hello world", Value::Text("hello world".into())),
            ("inf", Value::Text("inf".into())),
            ("NaN", Value::Text("NaN".into())),
            ("1.2.3", Value::Text("1.2.3".into())),
            ("e", Value::Text("e".into())),
            ("Null", Value::Text("Null".into())),
        ] {
            assert_eq!(parse_param(raw), Ok(want), "{raw}");
        }
        for bad in ["int:x", "real:abc", "blob:abc", "blob:zz"] {
            assert!(parse_param(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_values_as_text() {
        let row = [
            Value::Null,
            Value::Integer(-1),
            Value::Real(3.0),
            Value::Real(0.25),
            Value::Real(1e20),
            Value::Text("a b".into()),
            Value::Blob(vec![0xde, 0xad]),
        ];
        assert_eq!(text_row(&row), "NULL\t-1\t3.0\t0.25\t1e20\ta b\tx'dead'");
    }

    #[test]
    fn a_row_stays_one_line_whatever_its_text_holds() {
        let row = [
            Value::Text("a\tb".into()),
            Value::Text("line 1\nline 2\r\n".into()),
            Value::Text("C:\\dir\\n".into()),
            Value::Integer(7),
        ];
        let line = text_row(&row);
        assert_eq!(line, "a\\tb\tline 1\\nline 2\\r\\n\tC:\\\\dir\\\\n\t7");
        assert_eq!(line.split('\t').count(), 4);
        assert!(!line.contains(['\n', '\r']));
        let columns = ["a\tb", "c"].map(|name| Column {
            name: name.into(),
            decl_type: String::new(),
        });
        assert_eq!(header_line(&columns), "a\\tb\tc");
    }

    #[test]
    fn formats_rows_as_json_objects() {
        let columns = ["id", "v", "id"].map(|name| Column {
            name: name.into(),
            decl_type: String::new(),
        });
        let keys = json_keys(&columns);
        assert_eq!(keys, ["id", "v", "id_2"]);
        let row = json_row(
            &keys,
            &[Value::Integer(1), Value::Blob(vec![1]), Value::Null],
        );
        assert_eq!(row, r#"{"id":1,"v":{"blob":"01"},"id_2":null}"#);
        let escaped = json_row(&["a\"b".to_string()], &[Value::Text("x\ny".into())]);
        assert_eq!(escaped, r#"{"a\"b":"x\ny"}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&escaped).is_ok());
        assert_eq!(json_value(&Value::Real(f64::NAN)), serde_json::Value::Null);
        assert_eq!(json_value(&Value::Text("x".into())), json!("x"));
    }

    #[test]
    fn formats_write_results() {
        let result = ExecuteResult {
            results: vec![
                StatementResult {
                    rows_affected: 2,
                    last_insert_rowid: 7,
                    ..Default::default()
                },
                StatementResult {
                    rows_affected: 1,
                    last_insert_rowid: 9,
                    columns: vec![Column {
                        name: "id".into(),
                        decl_type: "INTEGER".into(),
                    }],
                    rows: vec![raftlite_client::Row::new(vec![Value::Integer(9)])],
                },
            ],
            log_index: 12,
            deduplicated: false,
        };
        assert_eq!(
            format_write(&result, false),
            "rows_affected=3 last_insert_rowid=9 log_index=12"
        );
        let json: serde_json::Value =
            serde_json::from_str(&format_write(&result, true)).expect("json");
        assert_eq!(json["rows_affected"], 3);
        assert_eq!(json["last_insert_rowid"], 9);
        assert_eq!(json["log_index"], 12);
        assert_eq!(json["results"][0]["rows_affected"], 2);
        assert!(json["results"][0].get("rows").is_none());
        assert_eq!(json["results"][1]["columns"], json!(["id"]));
        assert_eq!(json["results"][1]["rows"], json!([{ "id": 9 }]));
        assert_eq!(returned_rows(&result, false), ["9"]);
        assert_eq!(returned_rows(&result, true), ["id", "9"]);
    }

    #[test]
    fn command_line_shape() {
        let cli = Cli::try_parse_from([
            "sql",
            "--addr",
            "a:1,b:2",
            "--addr",
            "c:3",
            "--consistency",
            "bounded",
            "--max-lag",
            "5",
            "--json",
            "SELECT ?1, ?2",
            "-7",
            "text:x",
        ])
        .expect("valid");
        assert_eq!(
            cli.sql.addr.targets().expect("valid").0,
            ["a:1", "b:2", "c:3"]
        );
        assert_eq!(cli.sql.consistency, ConsistencyArg::Bounded);
        assert_eq!(cli.sql.max_lag, Some(5));
        assert!(cli.sql.json);
        assert_eq!(cli.sql.params, ["-7", "text:x"]);
        assert!(Cli::try_parse_from([
            "sql",
            "--addr",
            "a:1",
            "--consistency",
            "bounded",
            "SELECT 1"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["sql", "--addr", "a:1", "--read", "--write", "SELECT 1"]).is_err()
        );
    }
}
