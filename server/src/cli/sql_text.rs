//! Just enough SQL lexing for the command line: split a script into statements and tell reads
//! from writes. Quotes (`'..'`, `".."`, `` `..` ``, `[..]`) and comments (`-- ..`, `/* .. */`)
//! are skipped, so a `;` or a keyword inside them counts for nothing.

/// Whether a statement changes the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// A bare word (keyword or identifier) as written.
    Word(&'a str),
    /// A quoted string or identifier.
    Quoted,
    /// Any other character outside quotes and comments; `usize` is its byte offset.
    Symbol(u8, usize),
}

/// Calls `on_token` for each token of `sql`, skipping whitespace and comments. Works on bytes:
/// every delimiter is ASCII, and no byte of a multi-byte UTF-8 character is.
fn lex<'a>(sql: &'a str, mut on_token: impl FnMut(Token<'a>)) {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                i += 1;
                while i < b.len() {
                    if b[i] == close {
                        // A doubled quote is an escaped quote (not inside [..]).
                        if c != b'[' && b.get(i + 1) == Some(&close) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                on_token(Token::Quoted);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                on_token(Token::Word(&sql[start..i]));
            }
            c if c.is_ascii_whitespace() => i += 1,
            c => {
                on_token(Token::Symbol(c, i));
                i += 1;
            }
        }
    }
}

/// Splits a script into statements at `;` outside quotes, comments and trigger bodies
/// (`CREATE TRIGGER .. BEGIN ..; ..; END`). Statements are trimmed, without their `;`;
/// empty ones (only whitespace or comments) are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let cuts = cut(sql);
    let mut statements = cuts.statements(sql);
    if cuts.tail_has_content {
        statements.push(sql[cuts.tail..].trim().to_string());
    }
    statements
}

/// The statements of `sql` that a `;` ends (as [`split_statements`] cuts them), and the rest
/// after the last such `;`: an unfinished statement, or only whitespace and comments. An
/// interactive shell runs the first and keeps reading the rest.
pub fn split_terminated(sql: &str) -> (Vec<String>, &str) {
    let cuts = cut(sql);
    (cuts.statements(sql), &sql[cuts.tail..])
}

/// Where the statements of a script are.
struct Cuts {
    /// Byte ranges of the statements a `;` ends, without it.
    terminated: Vec<(usize, usize)>,
    /// Offset after the last `;` that ends a statement.
    tail: usize,
    /// Whether the tail holds more than whitespace and comments.
    tail_has_content: bool,
}

impl Cuts {
    fn statements(&self, sql: &str) -> Vec<String> {
        self.terminated
            .iter()
            .map(|&(from, to)| sql[from..to].trim().to_string())
            .collect()
    }
}

fn cut(sql: &str) -> Cuts {
    let mut start = 0;
    let mut words = 0_usize; // words seen in the current statement
    let mut has_content = false;
    let mut trigger = false; // the current statement is CREATE [TEMP] TRIGGER
    let mut depth = 0_u32; // BEGIN/CASE .. END nesting inside a trigger
    let mut first_words: [String; 3] = Default::default();
    let mut cuts = Vec::new();
    lex(sql, |token| {
        match token {
            Token::Symbol(b';', at) if depth == 0 => {
                if has_content {
                    cuts.push((start, at));
                }
                start = at + 1;
                words = 0;
                has_content = false;
                trigger = false;
                first_words = Default::default();
                return;
            }
            Token::Word(word) => {
                let upper = word.to_ascii_uppercase();
                if words < first_words.len() {
                    first_words[words] = upper.clone();
                    trigger = first_words[0] == "CREATE"
                        && (first_words[1] == "TRIGGER"
                            || (matches!(first_words[1].as_str(), "TEMP" | "TEMPORARY")
                                && first_words[2] == "TRIGGER"));
                }
                words += 1;
                if trigger {
                    match upper.as_str() {
                        "BEGIN" | "CASE" => depth += 1,
                        "END" => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        has_content = true;
    });
    Cuts {
        terminated: cuts,
        tail: start,
        tail_has_content: has_content,
    }
}

/// Read or write, by the heuristic scripts rely on: `SELECT`, `VALUES`, `EXPLAIN`, `WITH`
/// without `INSERT`/`UPDATE`/`DELETE`/`REPLACE`, and `PRAGMA` without `=` read; everything
/// else writes.
pub fn classify(statement: &str) -> StatementKind {
    let mut first: Option<String> = None;
    let mut modifies = false;
    let mut assigns = false;
    lex(statement, |token| match token {
        Token::Word(word) => {
            let upper = word.to_ascii_uppercase();
            if first.is_none() {
                first = Some(upper);
            } else if matches!(upper.as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE") {
                modifies = true;
            }
        }
        Token::Symbol(b'=', _) => assigns = true,
        _ => {}
    });
    match first.as_deref() {
        Some("SELECT" | "VALUES" | "EXPLAIN") => StatementKind::Read,
        Some("WITH") if !modifies => StatementKind::Read,
        Some("PRAGMA") if !assigns => StatementKind::Read,
        _ => StatementKind::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementKind::{Read, Write};

    #[test]
    fn splits_at_top_level_semicolons() {
        assert_eq!(
            split_statements("SELECT 1; SELECT 2;"),
            ["SELECT 1", "SELECT 2"]
        );
        assert_eq!(split_statements("  SELECT 1  "), ["SELECT 1"]);
        assert_eq!(
            split_statements(";;  ; -- nothing\n /* here */ ;"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn quotes_and_comments_hide_semicolons() {
        let script = "INSERT INTO t VALUES ('a;b', \"c;d\", `e;f`, [g;h], 'it''s;'); \
                      -- a comment; with a semicolon\n\
                      /* block; comment */ UPDATE t SET x = 1";
        let statements = split_statements(script);
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert_eq!(
            statements[0],
            "INSERT INTO t VALUES ('a;b', \"c;d\", `e;f`, [g;h], 'it''s;')"
        );
        assert!(
            statements[1].ends_with("UPDATE t SET x = 1"),
            "{statements:?}"
        );
    }

    #[test]
    fn terminated_statements_and_the_unfinished_rest() {
        assert_eq!(
            split_terminated("SELECT 1; SELECT\n 2"),
            (vec!["SELECT 1".to_string()], " SELECT\n 2")
        );
        assert_eq!(
            split_terminated("INSERT INTO t VALUES ('a;b');\n"),
            (vec!["INSERT INTO t VALUES ('a;b')".to_string()], "\n")
        );
        // Inside a quote or a trigger body a `;` ends nothing yet.
        assert_eq!(split_terminated("SELECT 'a;").0, Vec::<String>::new());
        let trigger = "CREATE TRIGGER t AFTER INSERT ON x BEGIN UPDATE y SET n = n + 1;";
        assert_eq!(split_terminated(trigger), (vec![], trigger));
        let script = format!("{trigger} END; -- done");
        let (done, rest) = split_terminated(&script);
        assert_eq!(done.len(), 1);
        assert_eq!(rest, " -- done");
        assert!(split_statements(rest).is_empty());
    }

    #[test]
    fn trigger_bodies_stay_whole() {
        let script = "CREATE TABLE t(x); \
                      CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN \
                        UPDATE t SET x = CASE WHEN x > 0 THEN 1 ELSE 0 END; \
                        DELETE FROM t WHERE x IS NULL; \
                      END; \
                      BEGIN; INSERT INTO t VALUES (1); COMMIT";
        let statements = split_statements(script);
        assert_eq!(statements.len(), 5, "{statements:?}");
        assert!(statements[1].starts_with("CREATE TEMP TRIGGER") && statements[1].ends_with("END"));
        assert_eq!(statements[2], "BEGIN");
    }

    #[test]
    fn unterminated_quotes_do_not_panic() {
        assert_eq!(split_statements("SELECT 'abc"), ["SELECT 'abc"]);
        assert_eq!(split_statements("SELECT 1 /* open"), ["SELECT 1 /* open"]);
        assert_eq!(
            split_statements("SELECT 'é;ü'; SELECT 2"),
            ["SELECT 'é;ü'", "SELECT 2"]
        );
    }

    #[test]
    fn classifies_reads_and_writes() {
        for (sql, kind) in [
            ("SELECT * FROM t", Read),
            ("  select 1", Read),
            ("-- leading comment\nSELECT 1", Read),
            ("VALUES (1), (2)", Read),
            ("EXPLAIN QUERY PLAN SELECT 1", Read),
            ("WITH x AS (SELECT 1) SELECT * FROM x", Read),
            ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", Write),
            ("with x as (select 1) delete from t where a in x", Write),
            ("WITH x AS (SELECT 'INSERT') SELECT * FROM x", Read),
            ("PRAGMA table_info(t)", Read),
            ("PRAGMA user_version = 3", Write),
            ("PRAGMA journal_mode='x=y'", Write),
            ("INSERT INTO t VALUES (1)", Write),
            ("REPLACE INTO t VALUES (1)", Write),
            ("CREATE TABLE t(x)", Write),
            ("UPDATE t SET x = 1", Write),
            ("", Write),
        ] {
            assert_eq!(classify(sql), kind, "{sql}");
        }
    }
}
