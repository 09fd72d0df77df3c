//! Lock-down of client SQL with SQLite's authorizer.
//!
//! The page-delta write path only works while raftlite controls transactions, the journal
//! mode, the page size and cache spilling on the executor connection, and while clients cannot
//! touch raftlite's own tables. SQLite asks the authorizer about every action while it compiles
//! a statement; refusing there means a forbidden statement never runs at all.
//!
//! raftlite's own statements (BEGIN, SAVEPOINT, the internal tables, ...) run on the same
//! connections, so the policy is bypassed while an [`InternalGuard`] is alive. Client
//! statements are prepared only while no guard exists; the prepared-statement cache is used
//! for client SQL only, so an internal statement can never be reused by a client.
//!
//! SQLite reports a refusal as a bare "not authorized"; the authorizer records *why* so the
//! client gets a useful message such as "ATTACH is not allowed".

use super::error::DbError;
use super::internal::is_internal_table;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};
use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Message for any write attempted through the read pool.
pub(crate) const READ_ONLY: &str = "Query is read-only; send writes with Execute";

/// Which rules a connection enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Policy {
    /// The leader's write connection: writes allowed, lock-down rules enforced.
    Executor,
    /// Read pool connections: reads only.
    Reader,
}

/// PRAGMAs clients may not run on the executor: they would break capture (journal_mode,
/// cache_spill, locking_mode, page_size, auto_vacuum), durability or integrity
/// (synchronous, writable_schema, wal_checkpoint), or change connection state that later
/// batches of other clients would inherit.
const EXECUTOR_DENIED_PRAGMAS: &[&str] = &[
    "journal_mode",
    "page_size",
    "cache_spill",
    "auto_vacuum",
    "locking_mode",
    "writable_schema",
    "wal_checkpoint",
    "synchronous",
    "query_only",
    "cache_size",
    "mmap_size",
    "busy_timeout",
    "wal_autocheckpoint",
    "journal_size_limit",
    "temp_store_directory",
    "data_store_directory",
    "case_sensitive_like",
    "recursive_triggers",
    "foreign_keys",
    "trusted_schema",
];

/// PRAGMAs that take an argument but only inspect the schema; fine on a read connection.
const READER_INTROSPECTION_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_info",
    "index_xinfo",
    "index_list",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// PRAGMAs without an argument that still do something other than reading.
const READER_DENIED_PRAGMAS: &[&str] = &[
    "wal_checkpoint",
    "optimize",
    "shrink_memory",
    "incremental_vacuum",
];

/// Shared state between a connection and its authorizer callback.
#[derive(Default)]
pub(crate) struct Lockdown {
    internal: AtomicBool,
    last_denial: Mutex<Option<String>>,
}

impl Lockdown {
    /// Install the authorizer for `policy` on `conn`.
    pub(crate) fn install(conn: &mut Connection, policy: Policy) -> Result<Arc<Lockdown>, DbError> {
        let lockdown = Arc::new(Lockdown::default());
        let state = Arc::clone(&lockdown);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if state.internal.load(Ordering::Acquire) {
                return Authorization::Allow;
            }
            let verdict = match policy {
                Policy::Executor => executor_rule(&ctx),
                Policy::Reader => reader_rule(&ctx),
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
        self.internal.store(true, Ordering::Release);
        InternalGuard(self)
    }

    /// Forget a previous denial; call before preparing a client statement.
    pub(crate) fn reset(&self) {
        if let Ok(mut slot) = self.last_denial.lock() {
            *slot = None;
        }
    }

    /// Turn a rusqlite error from a client statement into a `DbError`, replacing SQLite's
    /// "not authorized" with the reason the authorizer recorded.
    pub(crate) fn client_error(&self, e: rusqlite::Error) -> DbError {
        match DbError::from_sqlite(e) {
            DbError::PermissionDenied(msg) => {
                let reason = self.last_denial.lock().ok().and_then(|mut s| s.take());
                DbError::PermissionDenied(reason.unwrap_or(msg))
            }
            other => other,
        }
    }
}

/// While alive, the connection's authorizer allows everything.
pub(crate) struct InternalGuard<'a>(&'a Lockdown);

impl Drop for InternalGuard<'_> {
    fn drop(&mut self) {
        self.0.internal.store(false, Ordering::Release);
    }
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

fn pragma_in(name: &str, list: &[&str]) -> bool {
    list.iter().any(|p| p.eq_ignore_ascii_case(name))
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

fn executor_rule(ctx: &AuthContext<'_>) -> Result<(), String> {
    match ctx.action {
        AuthAction::Attach { .. } => Err("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => Err("DETACH is not allowed".into()),
        AuthAction::Transaction { operation } => Err(format!(
            "{} is not allowed: each request already runs as one transaction",
            transaction_word(operation)
        )),
        AuthAction::Savepoint { operation, .. } => Err(format!(
            "{} is not allowed: each request already runs as one transaction",
            savepoint_word(operation)
        )),
        AuthAction::Pragma { pragma_name, .. }
            if pragma_in(pragma_name, EXECUTOR_DENIED_PRAGMAS) =>
        {
            Err(format!("PRAGMA {pragma_name} is not allowed"))
        }
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::CreateTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. }
        | AuthAction::CreateView {
            view_name: table_name,
        }
        | AuthAction::CreateVtable { table_name, .. }
        | AuthAction::CreateTempTable { table_name }
        | AuthAction::CreateTempIndex { table_name, .. }
        | AuthAction::CreateTempTrigger { table_name, .. }
        | AuthAction::CreateTempView {
            view_name: table_name,
        } => protect_table(table_name),
        _ => Ok(()),
    }
}

fn reader_rule(ctx: &AuthContext<'_>) -> Result<(), String> {
    match ctx.action {
        AuthAction::Select
        | AuthAction::Read { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive => Ok(()),
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let inspect_only = pragma_in(pragma_name, READER_INTROSPECTION_PRAGMAS)
                || (pragma_value.is_none() && !pragma_in(pragma_name, READER_DENIED_PRAGMAS));
            if inspect_only {
                Ok(())
            } else {
                Err(format!("PRAGMA {pragma_name} is not allowed in a query"))
            }
        }
        AuthAction::Attach { .. } => Err("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => Err("DETACH is not allowed".into()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Err("transaction control is not allowed in a query".into())
        }
        _ => Err(READ_ONLY.into()),
    }
}
