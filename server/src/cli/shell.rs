//! `raftlite shell`: an interactive SQL shell on a cluster.
//!
//! Line editing and history by rustyline; the history is kept in `~/.raftlite_history`
//! (`--history FILE` or `RAFTLITE_HISTORY` to move it). A statement may span lines: it ends at
//! a `;` outside quotes, comments and trigger bodies (the lexer of `raftlite sql`), and several
//! on one line run in order. Each statement runs on its own: reads through Query at the
//! session's consistency, writes through Execute; results (and the rows of `... RETURNING`)
//! print as `raftlite sql --header` prints them, errors as `error: CODE: message`, and the shell goes on. Ctrl-C drops an
//! unfinished statement, or stops waiting for a running one; Ctrl-D or `.quit` leaves.
//!
//! Dot-commands: `.tables`, `.schema [TABLE]`, `.status`, `.consistency [LEVEL]`, `.begin`,
//! `.commit`, `.rollback`, `.help`, `.quit`. `.begin` (or `BEGIN;`) opens an interactive
//! transaction: the prompt becomes `raftlite*> `, every statement runs in it and sees its own
//! writes, and `.commit`/`COMMIT;` or `.rollback`/`ROLLBACK;` ends it. A transaction the
//! server ended (idle timeout, leader change) is reported and the prompt returns to normal.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use raftlite_client::{Client, Consistency, Statement, Transaction};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use super::sql::{format_write, print_query, returned_rows, text_value, PrintError, RowFormat};
use super::sql_text::{classify, split_statements, split_terminated, StatementKind};
use super::{error_line, fail, AddrArgs};

const PROMPT: &str = "raftlite> ";
const TRANSACTION_PROMPT: &str = "raftlite*> ";
const CONTINUATION: &str = "     ...> ";
const HISTORY_FILE: &str = ".raftlite_history";

const HELP: &str = "\
SQL statements end with ';' and may span lines; reads are queried, writes executed.
.tables              list the tables and views
.schema [TABLE]      show the CREATE statements (of TABLE)
.status              show the cluster: leader, term, every node's role and applied index
.consistency [LEVEL] show or set the read consistency: linearizable, read-your-writes,
                     stale, bounded N (at most N log entries behind), at-index N
.begin               open a transaction (also BEGIN;): statements see its own writes, others
                     wait for it; .commit (COMMIT;) replicates it, .rollback (ROLLBACK;)
                     discards it
.help                show this
.quit                leave (also .exit or Ctrl-D)";

/// Interactive SQL shell: line editing, history, multi-line statements, dot-commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub addr: AddrArgs,
    /// History file (default: ~/.raftlite_history).
    #[arg(long, value_name = "FILE", env = "RAFTLITE_HISTORY")]
    pub history: Option<PathBuf>,
}

pub async fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let client = match args.addr.client() {
        Ok(client) => client,
        Err(e) => return Ok(fail(&e)),
    };
    let mut editor = DefaultEditor::new().context("start the line editor")?;
    let interactive = std::io::stdin().is_terminal();
    // Only what is typed goes into the history, not a script piped in.
    let mut history = args
        .history
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|home| PathBuf::from(home).join(HISTORY_FILE))
        })
        .filter(|_| interactive);
    if let Some(path) = &history {
        match editor.load_history(path) {
            Ok(()) => {}
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: cannot read the history {}: {e}", path.display()),
        }
    }
    if interactive {
        println!(
            "raftlite shell on {}. Enter SQL ending with ';', .help for help, .quit to leave.",
            client.endpoints().collect::<Vec<_>>().join(",")
        );
    }
    let mut shell = Shell {
        client,
        consistency: Consistency::Linearizable,
        interactive,
        transaction: None,
        failed: false,
    };
    let mut pending = String::new();
    loop {
        let prompt = match (pending.is_empty(), shell.transaction.is_some()) {
            (false, _) => CONTINUATION,
            (true, false) => PROMPT,
            (true, true) => TRANSACTION_PROMPT,
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            // Ctrl-C: drop what was typed so far, as sqlite3 does.
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("read a line"),
        };
        // Lines holding only comments so far start nothing: a dot command after them is one.
        if split_statements(&pending).is_empty() && line.trim_start().starts_with('.') {
            pending.clear();
            remember(&mut editor, &mut history, line.trim());
            if shell.dot_command(line.trim()).await? == Flow::Quit {
                break;
            }
            continue;
        }
        if pending.is_empty() && line.trim().is_empty() {
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        let (statements, rest) = split_terminated(&pending);
        if statements.is_empty() {
            continue;
        }
        let entered = pending[..pending.len() - rest.len()].trim().to_owned();
        // Only whitespace or a comment after the last `;`: nothing is left to finish.
        let rest = if split_statements(rest).is_empty() {
            String::new()
        } else {
            rest.to_owned()
        };
        remember(&mut editor, &mut history, &entered);
        for statement in statements {
            match transaction_word(&statement) {
                Some(word) => shell.transaction_command(word).await?,
                None => shell.run_sql(statement).await?,
            }
        }
        pending = rest;
    }
    Ok(match shell.failed && !interactive {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

/// Adds `entry` to the history and saves it at once (a shell killed later keeps it). After a
/// failed save, says so once and keeps the history in memory only.
fn remember(editor: &mut DefaultEditor, path: &mut Option<PathBuf>, entry: &str) {
    if editor.add_history_entry(entry).is_err() {
        return;
    }
    if let Some(file) = path.as_ref() {
        if let Err(e) = editor.save_history(file) {
            eprintln!(
                "warning: cannot write the history {}: {e}; it is kept for this session only",
                file.display()
            );
            *path = None;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

struct Shell {
    client: Client,
    consistency: Consistency,
    /// Whether Ctrl-C can come from a terminal (then it stops waiting for a statement).
    interactive: bool,
    /// The interactive transaction `.begin` opened, until it ends.
    transaction: Option<Transaction>,
    /// A statement or transaction command failed: a script piped in exits with status 1, as
    /// the `sqlite3` shell does.
    failed: bool,
}

/// `BEGIN`, `COMMIT`, `END` or `ROLLBACK` typed as SQL (optionally `... TRANSACTION`, any
/// `BEGIN` kind): the shell maps them to its transaction commands.
fn transaction_word(sql: &str) -> Option<&'static str> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["BEGIN"] | ["BEGIN", "TRANSACTION"] => Some(".begin"),
        ["BEGIN", "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE"]
        | ["BEGIN", "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE", "TRANSACTION"] => Some(".begin"),
        ["COMMIT" | "END"] | ["COMMIT" | "END", "TRANSACTION"] => Some(".commit"),
        ["ROLLBACK"] | ["ROLLBACK", "TRANSACTION"] => Some(".rollback"),
        _ => None,
    }
}

impl Shell {
    /// `.begin`, `.commit` or `.rollback`.
    async fn transaction_command(&mut self, command: &str) -> anyhow::Result<()> {
        match (command, self.transaction.take()) {
            (".begin", Some(open)) => {
                self.error("error: FAILED_PRECONDITION: a transaction is already open; .commit or .rollback it first");
                self.transaction = Some(open);
            }
            (".begin", None) => match self.interruptible(self.client.begin()).await {
                Some(Ok(tx)) => self.transaction = Some(tx),
                Some(Err(e)) => self.error(&error_line(&e)),
                None => eprintln!(
                    "interrupted (a transaction begun meanwhile ends after its idle timeout)"
                ),
            },
            (_, None) => {
                self.error("error: FAILED_PRECONDITION: no transaction is open (.begin opens one)");
            }
            (".commit", Some(tx)) => match tx.commit().await {
                Ok(done) => println!("committed log_index={}", done.log_index),
                Err(e) => self.error(&error_line(&e)),
            },
            (_, Some(tx)) => match tx.rollback().await {
                Ok(()) => println!("rolled back"),
                Err(e) => self.error(&error_line(&e)),
            },
        }
        Ok(())
    }

    /// Runs one statement inside the open transaction; a transaction the server ended is
    /// dropped (the prompt says so).
    async fn run_in_transaction(&mut self, sql: String) -> anyhow::Result<()> {
        let Some(mut tx) = self.transaction.take() else {
            return Ok(());
        };
        let outcome = match self.interruptible(tx.execute([Statement::new(sql)])).await {
            Some(Ok(results)) => {
                let result = raftlite_client::ExecuteResult {
                    results,
                    ..Default::default()
                };
                for line in returned_rows(&result, true) {
                    println!("{line}");
                }
                if result.results.iter().all(|r| r.columns.is_empty()) {
                    let changed: u64 = result.results.iter().map(|r| r.rows_affected).sum();
                    let rowid = result.results.last().map_or(0, |r| r.last_insert_rowid);
                    println!(
                        "rows_affected={changed} last_insert_rowid={rowid} (in the transaction)"
                    );
                }
                Ok(())
            }
            Some(Err(e)) if e.is_aborted() => {
                self.error(&error_line(&e));
                eprintln!("the transaction has ended: nothing of it was applied");
                return Ok(());
            }
            Some(Err(e)) => Err(PrintError::Query(e)),
            None => {
                eprintln!("interrupted; the transaction stays open");
                Ok(())
            }
        };
        self.transaction = Some(tx);
        self.report(Some(outcome))
    }

    /// Runs one statement and prints its outcome. Only a failure to print ends the shell.
    async fn run_sql(&mut self, sql: String) -> anyhow::Result<()> {
        if self.transaction.is_some() {
            return self.run_in_transaction(sql).await;
        }
        let run = async {
            match classify(&sql) {
                StatementKind::Write => match self.client.execute([Statement::new(sql)]).await {
                    Ok(result) => {
                        // `... RETURNING` rows first, as `raftlite sql --header` prints them.
                        for line in returned_rows(&result, true) {
                            println!("{line}");
                        }
                        println!("{}", format_write(&result, false));
                        Ok(())
                    }
                    Err(e) => Err(PrintError::Query(e)),
                },
                StatementKind::Read => {
                    let format = RowFormat {
                        json: false,
                        header: true,
                    };
                    print_query(
                        &self.client,
                        Statement::new(sql),
                        self.consistency,
                        0,
                        format,
                    )
                    .await
                }
            }
        };
        self.report(self.interruptible(run).await)
    }

    /// Runs `work`; with a terminal, Ctrl-C stops waiting for it (`None`).
    async fn interruptible<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        if !self.interactive {
            return Some(work.await);
        }
        tokio::select! {
            result = work => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    }

    /// Prints a failure on stderr and remembers it for the exit status.
    fn error(&mut self, line: &str) {
        eprintln!("{line}");
        self.failed = true;
    }

    fn report(&mut self, outcome: Option<Result<(), PrintError>>) -> anyhow::Result<()> {
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(PrintError::Query(e))) => {
                self.error(&error_line(&e));
                Ok(())
            }
            Some(Err(PrintError::Output(e))) => {
                Err(anyhow::Error::new(e).context("write to stdout"))
            }
            None => {
                eprintln!("interrupted (a write may still have been applied)");
                Ok(())
            }
        }
    }

    async fn dot_command(&mut self, line: &str) -> anyhow::Result<Flow> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        match (command, args.as_slice()) {
            (".quit" | ".exit", []) => return Ok(Flow::Quit),
            (".help", []) => println!("{HELP}"),
            (".tables", []) => {
                let sql = "SELECT name FROM sqlite_schema \
                           WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                           AND name NOT LIKE '\\_raftlite\\_%' ESCAPE '\\' ORDER BY name";
                let outcome = self
                    .interruptible(self.print_column(Statement::new(sql), ""))
                    .await;
                self.report(outcome)?;
            }
            (".schema", [] | [_]) => {
                let mut sql = String::from(
                    "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL \
                     AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                     AND name NOT LIKE '\\_raftlite\\_%' ESCAPE '\\'",
                );
                if !args.is_empty() {
                    sql.push_str(" AND tbl_name = ?1 COLLATE NOCASE");
                }
                sql.push_str(" ORDER BY tbl_name, type DESC, name");
                let statement = Statement::new(sql).bind_all(args.iter().map(|t| t.to_string()));
                let outcome = self.interruptible(self.print_column(statement, ";")).await;
                self.report(outcome)?;
            }
            (".status", []) => {
                let status = async {
                    let status = self.client.status().await?;
                    print!("{}", super::status::status_table(&status));
                    Ok::<(), PrintError>(())
                };
                let outcome = self.interruptible(status).await;
                self.report(outcome)?;
            }
            (".begin" | ".commit" | ".rollback", []) => self.transaction_command(command).await?,
            (".consistency", []) => println!("{}", consistency_name(self.consistency)),
            (".consistency", level) => match parse_consistency(level) {
                Ok(consistency) => {
                    self.consistency = consistency;
                    println!("consistency: {}", consistency_name(consistency));
                }
                Err(message) => eprintln!("error: INVALID_ARGUMENT: {message}"),
            },
            (
                ".quit" | ".exit" | ".help" | ".tables" | ".status" | ".schema" | ".begin"
                | ".commit" | ".rollback",
                _,
            ) => {
                eprintln!("error: INVALID_ARGUMENT: wrong arguments for {command}; see .help");
            }
            _ => eprintln!("error: INVALID_ARGUMENT: unknown command {command}; see .help"),
        }
        Ok(Flow::Continue)
    }

    /// Prints the first column of each row of a query, followed by `suffix`.
    async fn print_column(&self, statement: Statement, suffix: &str) -> Result<(), PrintError> {
        let rows = self
            .client
            .query_with(statement, self.consistency, 0)
            .await?;
        for value in rows.rows.iter().filter_map(|row| row.values().first()) {
            println!("{}{suffix}", text_value(value));
        }
        Ok(())
    }
}

/// `linearizable`, `read-your-writes`, `stale`, `bounded N` or `at-index N`.
fn parse_consistency(words: &[&str]) -> Result<Consistency, String> {
    let number = |n: &str| {
        n.parse::<u64>()
            .map_err(|_| format!("{n:?} is not a non-negative integer"))
    };
    match words {
        ["linearizable"] => Ok(Consistency::Linearizable),
        ["read-your-writes"] => Ok(Consistency::ReadYourWrites),
        ["stale"] => Ok(Consistency::Stale),
        ["bounded", n] => Ok(Consistency::Bounded {
            max_lag: number(n)?,
        }),
        ["at-index", n] => Ok(Consistency::AtIndex(number(n)?)),
        _ => Err(format!(
            "unknown consistency {:?}; one of: linearizable, read-your-writes, stale, bounded N, at-index N",
            words.join(" ")
        )),
    }
}

fn consistency_name(consistency: Consistency) -> String {
    match consistency {
        Consistency::Linearizable => "linearizable".into(),
        Consistency::ReadYourWrites => "read-your-writes".into(),
        Consistency::Stale => "stale".into(),
        Consistency::Bounded { max_lag } => format!("bounded {max_lag}"),
        Consistency::AtIndex(index) => format!("at-index {index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_statements_become_commands() {
        for (sql, want) in [
            ("BEGIN", Some(".begin")),
            ("begin immediate transaction;", Some(".begin")),
            (" Commit ", Some(".commit")),
            ("END TRANSACTION", Some(".commit")),
            ("rollback;", Some(".rollback")),
            ("ROLLBACK TO sp", None),
            ("BEGINNING", None),
            ("SELECT 'BEGIN'", None),
        ] {
            assert_eq!(transaction_word(sql), want, "{sql}");
        }
    }

    #[test]
    fn consistency_levels_parse_and_print_back() {
        for text in [
            "linearizable",
            "read-your-writes",
            "stale",
            "bounded 5",
            "at-index 42",
        ] {
            let words: Vec<&str> = text.split(' ').collect();
            let level = parse_consistency(&words).expect(text);
            assert_eq!(consistency_name(level), text);
        }
        assert_eq!(
            parse_consistency(&["bounded", "7"]),
            Ok(Consistency::Bounded { max_lag: 7 })
        );
        for bad in [
            &["bounded"][..],
            &["bounded", "-1"],
            &["fresh"],
            &["stale", "1"],
        ] {
            assert!(parse_consistency(bad).is_err(), "{bad:?}");
        }
    }
}
