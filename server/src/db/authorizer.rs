//! Lock-down of client SQL with SQLite's authorizer.
//!
//! The page-delta write path only works while raftlite controls transactions, the journal
//! mode, the page size and cache spilling on the executor connection, and while clients cannot
//! touch raftlite's own tables. SQLite asks the authorizer about every action while it compiles
//! a statement; refusing there means a forbidden statement never runs at all.
//!
//! raftlite's own statements (BEGIN, SAVEPOINT, the internal tables, ...) run on the same
//! connections, so the policy is bypassed while an [`InternalGuard`] is alive. Client
//! statements are prepared only while no guard exists. The prepared-statement cache holds both
//! (the authorizer runs only when a statement is prepared), so internal statements start with
//! `internal::INTERNAL_SQL_MARKER` and client SQL that does is never taken from the cache: an
//! internal statement can never be reused by a client.
//!
//! SQLite reports a refusal as a bare "not authorized"; the authorizer records *why* so the
//! client gets a useful message such as "ATTACH is not allowed".
//!
//! PRAGMAs are allow-listed ([`PRAGMAS`]), on the executor and on readers alike: read-only
//! introspection (`table_info`, `index_list`, `foreign_key_list`, ...), the whole-database
//! checks (`integrity_check`, `quick_check`) in queries only, reading a few values
//! (`foreign_keys`, `page_count`, ...), and the application's own header fields
//! (`user_version`, `application_id`), which the executor may also set because they are
//! replicated data, not connection state. Every other pragma, and any value given to one that
//! is only read, is refused naming the pragma: a pragma SQLite adds in a later version stays
//! refused until someone decides otherwise. The few settings users legitimately need
//! (`foreign_keys`, `recursive_triggers`) are node settings applied to every connection at
//! open (see `bounds.rs`), so no request can leave state on a connection that the next
//! request would see. For the same reason the executor refuses TEMP objects. Nor may a client
//! name an object like SQLite's table-valued pragma functions (`pragma_*`, see
//! [`PRAGMA_FUNCTION_PREFIX`]), which it would stand in for.

use super::error::DbError;
use super::internal::is_internal_table;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};
use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Message for any write attempted through the read pool.
pub(crate) const READ_ONLY: &str = "Query is read-only; send writes with Execute";

/// `sql` from its first statement on: past whitespace, semicolons and comments (empty when
/// it holds no statement).
pub(crate) fn statement_start(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
        } else if let Some(after) = rest.strip_prefix("/*") {
            // An unterminated comment runs to the end, as SQLite reads it.
            rest = after.split_once("*/").map_or("", |(_, next)| next);
        } else {
            return rest;
        }
    }
}

/// Refuses a text of more than one statement without recursion, before it is prepared.
///
/// rusqlite refuses such a text itself (`Error::MultipleStatement`), but by preparing the
/// rest of it recursively, one stack frame per statement: a request of 100,000 `SELECT 1;`
/// overflowed a thread's stack and aborted the node. A text in which a `;` is followed by
/// more than comments (several statements, or one that holds a `;`, as a trigger's body or a
/// string may) is read here one statement at a time, stopping at the second: two prepares,
/// whatever its length. Any other text costs a scan for `;`.
pub(crate) fn refuse_more_than_one_statement(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    use rusqlite::fallible_iterator::FallibleIterator;
    let may_hold_more = sql
        .split_once(';')
        .is_some_and(|(_, rest)| !statement_start(rest).is_empty());
    if !may_hold_more {
        return Ok(());
    }
    let mut statements = rusqlite::Batch::new(conn, sql);
    if statements.next()?.is_some() && statements.next()?.is_some() {
        return Err(rusqlite::Error::MultipleStatement);
    }
    Ok(())
}

/// Whether `sql` is a PRAGMA statement. SQLite calls some pragmas writes even when they only
/// read a value (`PRAGMA journal_mode`); on a reader the authorizer already allows a pragma
/// only where it reads, and the connection is `query_only`.
pub(crate) fn is_pragma(sql: &str) -> bool {
    first_word_is(sql, "pragma")
}

/// Whether the first word of `sql`, past comments, is `word` (any case), followed by more that
/// is not part of that word: `PRAGMA x`, `PRAGMA(x)`, not `pragmatic` nor a bare `PRAGMA`.
pub(crate) fn first_word_is(sql: &str, word: &str) -> bool {
    let start = statement_start(sql).as_bytes();
    start.len() > word.len()
        && start[..word.len()].eq_ignore_ascii_case(word.as_bytes())
        && !(start[word.len()].is_ascii_alphanumeric() || start[word.len()] == b'_')
}

/// Which rules a connection enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Policy {
    /// The leader's write connection: writes allowed, lock-down rules enforced.
    Executor,
    /// Read pool connections: reads only.
    Reader,
}

/// What a client may do with a PRAGMA. A pragma missing from [`PRAGMAS`] is refused
/// everywhere, with or without a value: the list is an allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PragmaUse {
    /// Reports the schema or the build. An argument names a table, an index or a schema,
    /// never a setting, so any form is fine on any connection.
    Introspect,
    /// Walks the whole database: allowed in queries only, where it holds no lock that writes
    /// wait for and its deadline bounds it.
    Check,
    /// Reads a value; setting it is refused (connection settings are the node's, the same for
    /// every client; file settings are raftlite's).
    Read,
    /// A database header field that belongs to the application (`user_version`,
    /// `application_id`): read anywhere; set on the executor, where the change is captured,
    /// replicated and rolled back like any other write. It is not connection state.
    AppHeader,
}

use PragmaUse::{AppHeader, Check, Introspect, Read};

/// The pragmas clients may use, and how. Anything else is refused; a unit test checks every
/// pragma SQLite knows against an explicit decision.
const PRAGMAS: &[(&str, PragmaUse)] = &[
    ("collation_list", Introspect),
    ("compile_options", Introspect),
    ("database_list", Introspect),
    ("foreign_key_check", Introspect),
    ("foreign_key_list", Introspect),
    ("function_list", Introspect),
    ("index_info", Introspect),
    ("index_list", Introspect),
    ("index_xinfo", Introspect),
    ("module_list", Introspect),
    ("pragma_list", Introspect),
    ("table_info", Introspect),
    ("table_list", Introspect),
    ("table_xinfo", Introspect),
    ("integrity_check", Check),
    ("quick_check", Check),
    ("auto_vacuum", Read),
    ("data_version", Read),
    ("encoding", Read),
    ("foreign_keys", Read),
    ("freelist_count", Read),
    ("journal_mode", Read),
    ("page_count", Read),
    ("page_size", Read),
    ("recursive_triggers", Read),
    ("schema_version", Read),
    ("application_id", AppHeader),
    ("user_version", AppHeader),
];

fn pragma_use(name: &str) -> Option<PragmaUse> {
    PRAGMAS
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|&(_, usage)| usage)
}

/// The decision on `PRAGMA name` (`value` = None) or `PRAGMA name = value` / `name(value)`.
/// SQLite reports the pragma's argument as its value, whether it sets anything or not.
fn pragma_rule(name: &str, value: Option<&str>, policy: Policy) -> Result<(), String> {
    let usage = pragma_use(name);
    let allowed = matches!(
        (usage, value, policy),
        (Some(Introspect), _, _)
            | (Some(Check), _, Policy::Reader)
            | (Some(Read | AppHeader), None, _)
            | (Some(AppHeader), Some(_), Policy::Executor)
    );
    if allowed {
        return Ok(());
    }
    let name = name.to_ascii_lowercase();
    let why = match (name.as_str(), usage, policy) {
        ("foreign_keys", ..) => {
            "it is a node setting (--foreign-keys), the same for every client; a one-shot \
             request whose first statement is PRAGMA foreign_keys = OFF runs alone without \
             them (SQLite's table rebuild) and fails if it leaves a violation"
        }
        ("recursive_triggers", ..) => {
            "it is a node setting (--recursive-triggers), the same for every client"
        }
        (_, Some(Check), _) => {
            "it reads the whole database while every write waits; send it as a query"
        }
        (_, Some(AppHeader), Policy::Reader) => "a query is read-only; set it with Execute",
        (_, Some(Read), _) => "its value can be read, not set",
        _ => {
            "only pragmas that read the schema or a few values are allowed; the connection \
             and the file are configured by raftlite, the same for every client"
        }
    };
    Err(format!("pragma {name} is not allowed: {why}"))
}

/// Creating TEMP objects on the executor: they would live on in the batch's transaction, where
/// the next client's statements resolve names against them (a TEMP table named like a main
/// table captures that client's writes, which are then never replicated).
const NO_TEMP_OBJECTS: &str = "temporary tables, indexes, views and triggers are not allowed: \
    they would outlive the request on a connection other clients share";

/// Shared state between a connection and its authorizer callback.
#[derive(Default)]
pub(crate) struct Lockdown {
    /// Internal guards alive (they nest: a guard dropped inside another leaves it in force).
    internal: AtomicUsize,
    last_denial: Mutex<Option<String>>,
    /// A client statement compiled since the last [`Lockdown::take_schema_change`] changes
    /// the schema (creates, drops or alters a table, index, view, trigger, or runs ANALYZE).
    schema_change: AtomicBool,
    /// Client savepoints are allowed (a call of an interactive transaction that is one
    /// SAVEPOINT, RELEASE or ROLLBACK TO; see [`Lockdown::savepoints`]).
    savepoints: AtomicBool,
    /// A reader compiles an EXPLAIN: the writes it describes are allowed, since it runs none
    /// of them (see [`Lockdown::explaining`]).
    explaining: AtomicBool,
}

impl Lockdown {
    /// Install the authorizer for `policy` on `conn`. `stop` says whether the client
    /// statement being compiled must stop (its deadline passed, its client left, memory is
    /// nearly full: [`super::bounds::Bounds::stop_check`]); the compilation is then refused.
    pub(crate) fn install(
        conn: &mut Connection,
        policy: Policy,
        stop: impl Fn() -> bool + Send + 'static,
    ) -> Result<Arc<Lockdown>, DbError> {
        let lockdown = Arc::new(Lockdown::default());
        let state = Arc::clone(&lockdown);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if state.internal.load(Ordering::Acquire) > 0 {
                return Authorization::Allow;
            }
            if stop() {
                return Authorization::Deny;
            }
            if changes_schema(&ctx.action) {
                state.schema_change.store(true, Ordering::Release);
            }
            let verdict = match (policy, &ctx.action) {
                (Policy::Executor, AuthAction::Savepoint { savepoint_name, .. })
                    if state.savepoints.load(Ordering::Acquire) =>
                {
                    client_savepoint(savepoint_name)
                }
                (Policy::Executor, _) => executor_rule(&ctx),
                (
                    Policy::Reader,
                    AuthAction::Insert { .. }
                    | AuthAction::Update { .. }
                    | AuthAction::Delete { .. },
                ) if state.explaining.load(Ordering::Acquire) => Ok(()),
                (Policy::Reader, _) => reader_rule(&ctx),
            };
            match verdict {
                Ok(()) => Authorization::Allow,
                Err(reason) => {
                    if let Ok(mut slot) = state.last_denial.lock() {
                        slot.get_or_insert(reason);
                    }
                    Authorization::Deny
                }
            }
        }))?;
        Ok(lockdown)
    }

    /// Bypass the policy until the guard is dropped (raftlite's own statements).
    pub(crate) fn internal(&self) -> InternalGuard<'_> {
        self.internal.fetch_add(1, Ordering::AcqRel);
        InternalGuard(self)
    }

    /// Allow client savepoints until the guard is dropped. Statements that hold one must be
    /// prepared afresh (never from the cache): the authorizer runs only at prepare time.
    pub(crate) fn savepoints(&self) -> SavepointGuard<'_> {
        self.savepoints.store(true, Ordering::Release);
        SavepointGuard(self)
    }

    /// Allow the INSERT, UPDATE and DELETE of an EXPLAIN a reader compiles until the guard is
    /// dropped: an EXPLAIN lists the program, EXPLAIN QUERY PLAN the plan, and neither runs
    /// it. The caller checks that what it compiled is an EXPLAIN (`sqlite3_stmt_isexplain`);
    /// a read connection is read-only besides.
    pub(crate) fn explaining(&self) -> ExplainGuard<'_> {
        self.explaining.store(true, Ordering::Release);
        ExplainGuard(self)
    }

    /// Forget a previous denial; call before preparing a client statement.
    pub(crate) fn reset(&self) {
        if let Ok(mut slot) = self.last_denial.lock() {
            *slot = None;
        }
    }

    /// Whether a client statement compiled since the last call changes the schema; clears it.
    /// SQLite compiles a statement again (calling the authorizer) whenever the schema changed
    /// since it was compiled, so a statement taken from the cache that changes the schema
    /// either was compiled while the flag was watched or is compiled again as it runs.
    pub(crate) fn take_schema_change(&self) -> bool {
        self.schema_change.swap(false, Ordering::AcqRel)
    }

    /// Turn a rusqlite error from a client statement into a `DbError`, replacing SQLite's
    /// "not authorized" with the reason the authorizer recorded.
    pub(crate) fn client_error(&self, e: rusqlite::Error) -> DbError {
        match DbError::from_sqlite(e) {
            DbError::PermissionDenied(msg) => self.refusal(msg),
            // A refused function is an ordinary error to SQLite ("not authorized to use
            // function: load_extension"); it is a refusal all the same.
            DbError::InvalidArgument(msg) if msg.starts_with("not authorized") => self.refusal(msg),
            other => other,
        }
    }

    /// PERMISSION_DENIED with the reason the authorizer recorded (SQLite's `msg` without one).
    fn refusal(&self, msg: String) -> DbError {
        let reason = self.last_denial.lock().ok().and_then(|mut s| s.take());
        DbError::PermissionDenied(reason.unwrap_or(msg))
    }
}

/// While alive, the connection's authorizer allows everything.
pub(crate) struct InternalGuard<'a>(&'a Lockdown);

impl Drop for InternalGuard<'_> {
    fn drop(&mut self) {
        self.0.internal.fetch_sub(1, Ordering::AcqRel);
    }
}

/// While alive, client savepoints are allowed ([`Lockdown::savepoints`]).
pub(crate) struct SavepointGuard<'a>(&'a Lockdown);

impl Drop for SavepointGuard<'_> {
    fn drop(&mut self) {
        self.0.savepoints.store(false, Ordering::Release);
    }
}

/// While alive, a reader may compile the writes an EXPLAIN describes ([`Lockdown::explaining`]).
pub(crate) struct ExplainGuard<'a>(&'a Lockdown);

impl Drop for ExplainGuard<'_> {
    fn drop(&mut self) {
        self.0.explaining.store(false, Ordering::Release);
    }
}

/// Whether `sql` starts with EXPLAIN (after comments).
pub(crate) fn is_explain(sql: &str) -> bool {
    first_word_is(sql, "explain")
}

/// Whether `sql` is savepoint control (SAVEPOINT, RELEASE, ROLLBACK TO), by its first word.
/// A bare ROLLBACK passes too; the authorizer refuses it as transaction control.
pub(crate) fn is_savepoint_control(sql: &str) -> bool {
    ["savepoint", "release", "rollback"]
        .iter()
        .any(|word| first_word_is(sql, word))
}

/// A client's own savepoint, inside an interactive transaction: any name but raftlite's.
fn client_savepoint(name: &str) -> Result<(), String> {
    match name.get(..8) {
        Some(prefix) if prefix.eq_ignore_ascii_case("raftlite") => Err(format!(
            "savepoint {name} is reserved: names starting with raftlite are raftlite's own"
        )),
        _ => Ok(()),
    }
}

/// Actions that change the schema (the temporary ones are refused on the executor anyway).
fn changes_schema(action: &AuthAction<'_>) -> bool {
    matches!(
        action,
        AuthAction::CreateTable { .. }
            | AuthAction::CreateIndex { .. }
            | AuthAction::CreateTrigger { .. }
            | AuthAction::CreateView { .. }
            | AuthAction::CreateVtable { .. }
            | AuthAction::CreateTempTable { .. }
            | AuthAction::CreateTempIndex { .. }
            | AuthAction::CreateTempTrigger { .. }
            | AuthAction::CreateTempView { .. }
            | AuthAction::DropTable { .. }
            | AuthAction::DropIndex { .. }
            | AuthAction::DropTrigger { .. }
            | AuthAction::DropView { .. }
            | AuthAction::DropVtable { .. }
            | AuthAction::DropTempTable { .. }
            | AuthAction::DropTempIndex { .. }
            | AuthAction::DropTempTrigger { .. }
            | AuthAction::DropTempView { .. }
            | AuthAction::AlterTable { .. }
            | AuthAction::Analyze { .. }
    )
}

fn transaction_word(op: TransactionOperation) -> &'static str {
    match op {
        TransactionOperation::Begin => "BEGIN",
        TransactionOperation::Rollback => "ROLLBACK",
        // SQLite reports COMMIT/END with the operation name "COMMIT", which rusqlite does not
        // decode; RELEASE only appears for savepoints.
        _ => "COMMIT",
    }
}

fn savepoint_word(op: TransactionOperation) -> &'static str {
    match op {
        TransactionOperation::Begin => "SAVEPOINT",
        TransactionOperation::Release => "RELEASE",
        TransactionOperation::Rollback => "ROLLBACK TO",
        _ => "SAVEPOINT",
    }
}

/// A client's read of a table: refused for raftlite's internal tables, whose stored write
/// results belong to every token that wrote (a read token could read another's, and rows it
/// deleted, for the day they are kept), and for `sqlite_dbpage`, whose raw pages hold the same
/// bytes.
fn read_rule(table: &str) -> Result<(), String> {
    if table.eq_ignore_ascii_case("sqlite_dbpage") {
        Err("reading sqlite_dbpage is not allowed: it holds every table's raw pages".into())
    } else if is_internal_table(table) {
        Err(format!(
            "{table} is internal to raftlite and cannot be read: it holds every client's \
             stored write results"
        ))
    } else {
        Ok(())
    }
}

fn protect_table(table: &str) -> Result<(), String> {
    if table.eq_ignore_ascii_case("sqlite_dbpage") {
        // DEFENSIVE already makes it read-only; say so clearly.
        Err("writing sqlite_dbpage is not allowed".into())
    } else if is_internal_table(table) {
        Err(format!(
            "{table} is internal to raftlite and cannot be modified"
        ))
    } else {
        Ok(())
    }
}

/// How SQLite's table-valued pragma functions are named (`pragma_table_info('t')`). SQLite
/// looks such a name up as a table or view first, `main.`-qualified or not, and takes it for
/// the function only when there is none: an object named so would stand in for the function in
/// every query that uses it. `sqlite_*` names SQLite refuses itself ("object name reserved for
/// internal use"); they are not refused here because SQLite reports its own tables
/// (`sqlite_sequence`, `sqlite_stat1`) and indexes (`sqlite_autoindex_*`) to the authorizer as
/// creations too.
const PRAGMA_FUNCTION_PREFIX: &str = "pragma_";

/// Whether `name` starts with [`PRAGMA_FUNCTION_PREFIX`] (any case).
fn is_pragma_function_name(name: &str) -> bool {
    name.len() >= PRAGMA_FUNCTION_PREFIX.len()
        && name.as_bytes()[..PRAGMA_FUNCTION_PREFIX.len()]
            .eq_ignore_ascii_case(PRAGMA_FUNCTION_PREFIX.as_bytes())
}

/// The name of a table, view, virtual table, index or trigger a client creates.
fn new_object_name(name: &str) -> Result<(), String> {
    match is_pragma_function_name(name) {
        true => Err(format!(
            "the name {name} is reserved: names starting with pragma_ are SQLite's table-valued \
             pragma functions, which an object of that name would stand in for"
        )),
        false => Ok(()),
    }
}

/// Why `load_extension` is refused (extension loading is off in any case; this says so as a
/// refusal, not as an invalid argument).
const NO_EXTENSIONS: &str = "load_extension is not allowed: a node loads no extensions";

fn is_load_extension(function_name: &str) -> bool {
    function_name.eq_ignore_ascii_case("load_extension")
}

/// An action on the `temp` schema other than reading it: `CREATE TABLE temp.t`, a trigger or
/// view named `temp.x`, `PRAGMA temp.user_version = 1` and the like. SQLite reports a
/// schema-qualified name under the plain action codes (`CreateTable` on database "temp"), not
/// the `CreateTemp*` ones that the TEMP keyword gives.
///
/// Not an update of the temp schema's own table: `ALTER TABLE ... RENAME TO`, `RENAME COLUMN`
/// and `DROP COLUMN` on a main table have SQLite rewrite the TEMP triggers and views there too
/// (the executor never has any), and a client cannot write that table itself (SQLite refuses:
/// "may not be modified"). Its insert stays refused: it is what tells a trigger named
/// `temp.x` on a main table, reported as a plain `CreateTrigger` on "main", and it comes first
/// for every object made in temp.
fn changes_temp_schema(ctx: &AuthContext<'_>) -> bool {
    let schema_table = |table: &str| {
        table.eq_ignore_ascii_case("sqlite_temp_master")
            || table.eq_ignore_ascii_case("sqlite_temp_schema")
    };
    ctx.database_name
        .is_some_and(|db| db.eq_ignore_ascii_case("temp"))
        && !matches!(ctx.action, AuthAction::Read { .. } | AuthAction::Select)
        && !matches!(ctx.action, AuthAction::Update { table_name, .. } if schema_table(table_name))
}

fn executor_rule(ctx: &AuthContext<'_>) -> Result<(), String> {
    if changes_temp_schema(ctx) {
        return Err(NO_TEMP_OBJECTS.into());
    }
    match ctx.action {
        AuthAction::Attach { .. } => Err("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => Err("DETACH is not allowed".into()),
        AuthAction::Transaction { operation } => Err(format!(
            "{} is not allowed: each request already runs as one transaction",
            transaction_word(operation)
        )),
        AuthAction::Savepoint { operation, .. } => Err(format!(
            "{} is not allowed here: each request already runs as one transaction; savepoints \
             work inside an interactive transaction, each in a call of its own",
            savepoint_word(operation)
        )),
        AuthAction::Function { function_name } if is_load_extension(function_name) => {
            Err(NO_EXTENSIONS.into())
        }
        AuthAction::Read { table_name, .. } => read_rule(table_name),
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => pragma_rule(pragma_name, pragma_value, Policy::Executor),
        AuthAction::CreateTempTable { table_name }
        | AuthAction::CreateTempIndex { table_name, .. }
        | AuthAction::CreateTempTrigger { table_name, .. }
        | AuthAction::CreateTempView {
            view_name: table_name,
        } => protect_table(table_name).and(Err(NO_TEMP_OBJECTS.into())),
        AuthAction::CreateVtable { module_name, .. }
            if module_name.eq_ignore_ascii_case("sqlite_dbpage") =>
        {
            Err(
                "a virtual table over sqlite_dbpage is not allowed: it holds every table's raw \
                 pages"
                    .into(),
            )
        }
        AuthAction::CreateTable { table_name }
        | AuthAction::CreateView {
            view_name: table_name,
        }
        | AuthAction::CreateVtable { table_name, .. } => {
            protect_table(table_name).and_then(|()| new_object_name(table_name))
        }
        AuthAction::CreateIndex {
            index_name: name,
            table_name,
        }
        | AuthAction::CreateTrigger {
            trigger_name: name,
            table_name,
        } => protect_table(table_name).and_then(|()| new_object_name(name)),
        // A new name that ALTER TABLE ... RENAME TO gives is not reported: the executor checks
        // the schema after the statement (see `Executor::no_new_reserved_name`).
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. } => protect_table(table_name),
        _ => Ok(()),
    }
}

fn reader_rule(ctx: &AuthContext<'_>) -> Result<(), String> {
    if changes_temp_schema(ctx) {
        return Err(READ_ONLY.into());
    }
    match ctx.action {
        AuthAction::Function { function_name } if is_load_extension(function_name) => {
            Err(NO_EXTENSIONS.into())
        }
        AuthAction::Read { table_name, .. } => read_rule(table_name),
        AuthAction::Select | AuthAction::Function { .. } | AuthAction::Recursive => Ok(()),
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => pragma_rule(pragma_name, pragma_value, Policy::Reader),
        AuthAction::Attach { .. } => Err("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => Err("DETACH is not allowed".into()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Err("transaction control is not allowed in a query".into())
        }
        _ => Err(READ_ONLY.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision on one pragma: allowed bare (`PRAGMA x`) and with a value (`PRAGMA x = t`,
    /// `PRAGMA x(t)`; SQLite does not tell a table name from a setting), on the executor and on
    /// a reader.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Decision {
        executor_bare: bool,
        executor_value: bool,
        reader_bare: bool,
        reader_value: bool,
    }

    const REFUSED: Decision = Decision {
        executor_bare: false,
        executor_value: false,
        reader_bare: false,
        reader_value: false,
    };
    const INTROSPECT: Decision = Decision {
        executor_bare: true,
        executor_value: true,
        reader_bare: true,
        reader_value: true,
    };
    const QUERY_ONLY: Decision = Decision {
        executor_bare: false,
        executor_value: false,
        reader_bare: true,
        reader_value: true,
    };
    const READ: Decision = Decision {
        executor_bare: true,
        executor_value: false,
        reader_bare: true,
        reader_value: false,
    };
    const APP_HEADER: Decision = Decision {
        executor_bare: true,
        executor_value: true,
        reader_bare: true,
        reader_value: false,
    };

    /// Every pragma of the bundled SQLite, decided on purpose. A new SQLite that knows more
    /// pragmas fails `every_pragma_is_decided_on_purpose` until they are added here.
    const EXPECTED: &[(&str, Decision)] = &[
        ("analysis_limit", REFUSED),
        ("application_id", APP_HEADER),
        ("auto_vacuum", READ),
        ("automatic_index", REFUSED),
        ("busy_timeout", REFUSED),
        ("cache_size", REFUSED),
        ("cache_spill", REFUSED),
        ("case_sensitive_like", REFUSED),
        ("cell_size_check", REFUSED),
        ("checkpoint_fullfsync", REFUSED),
        ("collation_list", INTROSPECT),
        ("compile_options", INTROSPECT),
        ("count_changes", REFUSED),
        ("data_version", READ),
        ("database_list", INTROSPECT),
        ("default_cache_size", REFUSED),
        ("defer_foreign_keys", REFUSED),
        ("empty_result_callbacks", REFUSED),
        ("encoding", READ),
        ("foreign_key_check", INTROSPECT),
        ("foreign_key_list", INTROSPECT),
        ("foreign_keys", READ),
        ("freelist_count", READ),
        ("full_column_names", REFUSED),
        ("fullfsync", REFUSED),
        ("function_list", INTROSPECT),
        ("hard_heap_limit", REFUSED),
        ("ignore_check_constraints", REFUSED),
        ("incremental_vacuum", REFUSED),
        ("index_info", INTROSPECT),
        ("index_list", INTROSPECT),
        ("index_xinfo", INTROSPECT),
        ("integrity_check", QUERY_ONLY),
        ("journal_mode", READ),
        ("journal_size_limit", REFUSED),
        ("legacy_alter_table", REFUSED),
        ("locking_mode", REFUSED),
        ("max_page_count", REFUSED),
        ("mmap_size", REFUSED),
        ("module_list", INTROSPECT),
        ("optimize", REFUSED),
        ("page_count", READ),
        ("page_size", READ),
        ("pragma_list", INTROSPECT),
        ("query_only", REFUSED),
        ("quick_check", QUERY_ONLY),
        ("read_uncommitted", REFUSED),
        ("recursive_triggers", READ),
        ("reverse_unordered_selects", REFUSED),
        ("schema_version", READ),
        ("secure_delete", REFUSED),
        ("short_column_names", REFUSED),
        ("shrink_memory", REFUSED),
        ("soft_heap_limit", REFUSED),
        ("synchronous", REFUSED),
        ("table_info", INTROSPECT),
        ("table_list", INTROSPECT),
        ("table_xinfo", INTROSPECT),
        ("temp_store", REFUSED),
        ("temp_store_directory", REFUSED),
        ("threads", REFUSED),
        ("trusted_schema", REFUSED),
        ("user_version", APP_HEADER),
        ("wal_autocheckpoint", REFUSED),
        ("wal_checkpoint", REFUSED),
        ("writable_schema", REFUSED),
    ];

    /// Prepare `sql` on a connection locked down with `policy`: Ok if allowed, else the
    /// refusal message.
    fn decide(conn: &mut Connection, policy: Policy, sql: &str) -> Result<(), String> {
        let lockdown = Lockdown::install(conn, policy, || false).map_err(|e| e.to_string())?;
        lockdown.reset();
        match conn.prepare(sql) {
            Ok(_) => Ok(()),
            Err(e) => match lockdown.client_error(e) {
                DbError::PermissionDenied(m) => Err(m),
                other => panic!("{sql}: not a refusal: {other:?}"),
            },
        }
    }

    #[test]
    fn every_pragma_is_decided_on_purpose() -> Result<(), DbError> {
        let mut conn = Connection::open_in_memory()?;
        conn.execute_batch("CREATE TABLE t(x); CREATE INDEX t_x ON t(x)")?;
        let known: Vec<String> = conn
            .prepare("PRAGMA pragma_list")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let listed: Vec<&str> = EXPECTED.iter().map(|(name, _)| *name).collect();
        let undecided: Vec<&String> = known
            .iter()
            .filter(|k| !listed.contains(&k.as_str()))
            .collect();
        assert!(
            undecided.is_empty(),
            "SQLite knows pragmas that EXPECTED does not decide: {undecided:?}"
        );
        let unknown: Vec<&&str> = listed
            .iter()
            .filter(|l| !known.iter().any(|k| k == *l))
            .collect();
        assert!(
            unknown.is_empty(),
            "EXPECTED lists unknown pragmas: {unknown:?}"
        );

        for &(name, expected) in EXPECTED {
            let mut got = [false; 4];
            for (slot, (policy, sql)) in [
                (Policy::Executor, format!("PRAGMA {name}")),
                (Policy::Executor, format!("PRAGMA {name} = t")),
                (Policy::Reader, format!("PRAGMA {name}")),
                (Policy::Reader, format!("PRAGMA {name}(t)")),
            ]
            .into_iter()
            .enumerate()
            {
                got[slot] = match decide(&mut conn, policy, &sql) {
                    Ok(()) => true,
                    Err(message) => {
                        assert!(
                            message.starts_with(&format!("pragma {name} is not allowed: ")),
                            "{sql} ({policy:?}): {message}"
                        );
                        false
                    }
                };
            }
            let got = Decision {
                executor_bare: got[0],
                executor_value: got[1],
                reader_bare: got[2],
                reader_value: got[3],
            };
            assert_eq!(got, expected, "pragma {name}");
        }
        Ok(())
    }

    #[test]
    fn pragma_statements_are_told_by_their_first_word() {
        for sql in [
            "PRAGMA journal_mode",
            "  -- x\n/* y */ pragma\tuser_version;",
            ";PRAGMA(x)",
        ] {
            assert!(is_pragma(sql), "{sql:?}");
        }
        for sql in [
            "SELECT 1",
            "pragmatic",
            "PRAGMA",
            "pragma_x",
            "/* PRAGMA x */ SELECT 1",
            "",
        ] {
            assert!(!is_pragma(sql), "{sql:?}");
        }
        assert_eq!(statement_start(" ;-- a\n/* b */ SELECT 1"), "SELECT 1");
        assert_eq!(statement_start("/* open"), "");
    }

    #[test]
    fn refusals_name_the_pragma_and_the_reason() {
        let refused = |name, value, policy| match pragma_rule(name, value, policy) {
            Ok(()) => panic!("{name} {value:?} allowed"),
            Err(m) => m,
        };
        assert!(refused("FOREIGN_KEYS", Some("ON"), Policy::Executor).starts_with(
            "pragma foreign_keys is not allowed: it is a node setting (--foreign-keys), the same \
             for every client; a one-shot request whose first statement is PRAGMA foreign_keys \
             = OFF runs alone"
        ));
        assert!(refused("integrity_check", None, Policy::Executor).contains("send it as a query"));
        assert!(
            refused("schema_version", Some("7"), Policy::Executor).contains("can be read, not set")
        );
        assert!(refused("user_version", Some("7"), Policy::Reader).contains("set it with Execute"));
        assert!(refused("hard_heap_limit", Some("1"), Policy::Executor)
            .starts_with("pragma hard_heap_limit is not allowed: only pragmas that read"));
        assert!(refused("no_such_pragma", None, Policy::Reader)
            .starts_with("pragma no_such_pragma is not allowed"));
        assert!(pragma_rule("Table_Info", Some("t"), Policy::Executor).is_ok());
    }
}
