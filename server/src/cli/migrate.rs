//! `raftlite migrate`: apply the numbered `.sql` files of a directory, each exactly once.
//!
//! File names: `<version>_<name>.sql` — `version` is one or more ASCII digits (a number ≥ 1;
//! leading zeros are only for sorting by eye: `0002` and `2` are the same version), `name` is
//! one or more of `A-Z a-z 0-9 _ -`. Files are applied in numeric version order; two files
//! with the same version, or any other file in the directory, are an error (a typo such as
//! `0003_add_index.SQL` must not be skipped silently). Hidden entries (names starting with
//! `.`, e.g. the `..data` links of a Kubernetes ConfigMap volume) and directories are ignored.
//!
//! Record: the user-space table `raftlite_migrations(version, name, sha256, applied_at)`.
//! Not an internal `_raftlite_*` table: clients cannot write those, and a plain table lets
//! the application read its schema version with ordinary SQL and keeps the tool an ordinary
//! client (no server-side path to keep in step).
//!
//! Each migration is ONE atomic `Execute`: the file's statements, then the insert of its
//! record. Concurrent runs (every pod's init container, every app replica at start) are safe:
//! - the same file from two runs carries the same request id, `migrate:<version>:<sha256>`, so
//!   the server answers the second with the first's result (and a retry after a failover is
//!   answered, not applied twice);
//! - should a run still race past that (a different request id for the same version), the
//!   `PRIMARY KEY` on `version` fails its whole transaction atomically: the tool then reads
//!   the record, and an equal checksum means "already applied by someone else".
//!
//! A file whose SHA-256 differs from the recorded one is refused before anything is applied,
//! naming the file and both checksums. A migration that fails leaves nothing behind (its
//! transaction is rolled back) and stops the run; later files are not attempted.
//!
//! Output contract: one line per file, `applied NAME log_index=N` or `already applied NAME`;
//! an error goes to stderr as `error: <CODE or kind>: <message>` with exit code 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use raftlite_client::{code_name, Client, ClientOptions, Consistency, Error, Statement};
use sha2::{Digest, Sha256};

use super::sql_text::split_statements;
use super::{hex, AddrArgs};

/// The table that records applied migrations.
pub const MIGRATIONS_TABLE: &str = "raftlite_migrations";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS raftlite_migrations (\
     version INTEGER PRIMARY KEY, \
     name TEXT NOT NULL, \
     sha256 TEXT NOT NULL, \
     applied_at TEXT NOT NULL)";

const INSERT_RECORD: &str = "INSERT INTO raftlite_migrations (version, name, sha256, applied_at) \
     VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";

/// Apply the numbered .sql files of DIR in order, each once (safe to run concurrently).
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub addr: AddrArgs,
    /// How long to keep retrying while no node answers or no leader is elected (an init
    /// container may start before the cluster is up).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub wait_s: u64,
    /// Deadline of one migration (the server's request_timeout_ms caps it; a migration that
    /// overruns is retried under the same request id, so it still applies once).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub migration_timeout_s: u64,
    /// Directory holding `<version>_<name>.sql` files.
    pub dir: PathBuf,
}

/// One migration file, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: u64,
    /// The file name, e.g. `0002_add_index.sql`.
    pub name: String,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub statements: Vec<String>,
}

impl Migration {
    /// From a file's name and contents: checks the name and splits the statements.
    pub fn parse(name: &str, contents: &[u8]) -> Result<Migration, String> {
        let version = version_of(name)?;
        let text = std::str::from_utf8(contents).map_err(|e| format!("{name}: not UTF-8 ({e})"))?;
        let statements = split_statements(text);
        if statements.is_empty() {
            return Err(format!("{name}: has no SQL statement"));
        }
        for (i, statement) in statements.iter().enumerate() {
            let first = statement
                .split(|c: char| !c.is_ascii_alphabetic())
                .find(|w| !w.is_empty())
                .unwrap_or("")
                .to_ascii_uppercase();
            if matches!(
                first.as_str(),
                "BEGIN" | "COMMIT" | "END" | "ROLLBACK" | "SAVEPOINT" | "RELEASE"
            ) {
                return Err(format!(
                    "{name}: statement {} is {first}: each migration already runs as one \
                     transaction, remove its transaction control statements",
                    i + 1
                ));
            }
        }
        Ok(Migration {
            version,
            name: name.to_owned(),
            sha256: hex(&Sha256::digest(contents)),
            statements,
        })
    }

    /// The request id that makes concurrent runs and retries of this migration apply once.
    pub fn request_id(&self) -> String {
        format!("migrate:{}:{}", self.version, self.sha256)
    }
}

/// The version of a migration file name, or why the name does not follow the rule.
pub fn version_of(name: &str) -> Result<u64, String> {
    let rule = "migration files are named <version>_<name>.sql, e.g. 0001_create_users.sql \
                (version: digits; name: letters, digits, _ and -)";
    let bad = || format!("{name}: {rule}");
    let stem = name.strip_suffix(".sql").ok_or_else(bad)?;
    let (digits, rest) = stem.split_once('_').ok_or_else(bad)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad());
    }
    let version: u64 = digits
        .parse()
        .map_err(|_| format!("{name}: version {digits} is too large"))?;
    if version == 0 {
        return Err(format!("{name}: versions start at 1"));
    }
    Ok(version)
}

/// Reads every migration of `dir`, sorted by version.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(format!(
                "{}: {:?} is not a valid file name",
                dir.display(),
                name
            ));
        };
        if name.starts_with('.') {
            continue;
        }
        // Follows symbolic links (a ConfigMap volume links every file).
        let path = entry.path();
        if path.is_dir() {
            continue;
        }
        let contents =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        files.push(Migration::parse(name, &contents)?);
    }
    order(files)
}

/// Sorts by version and refuses two files with one version.
pub fn order(mut files: Vec<Migration>) -> Result<Vec<Migration>, String> {
    files.sort_by(|a, b| a.version.cmp(&b.version).then(a.name.cmp(&b.name)));
    for pair in files.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(format!(
                "{} and {} have the same version {}",
                pair[0].name, pair[1].name, pair[0].version
            ));
        }
    }
    if files.is_empty() {
        return Err("no migration files (<version>_<name>.sql) found".to_owned());
    }
    Ok(files)
}

/// A row of `raftlite_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: u64,
    pub name: String,
    pub sha256: String,
}

/// Why a directory cannot be applied on top of what the database recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{name} was changed after it was applied: recorded sha256 {recorded}, file sha256 \
         {file}; put the change in a new migration instead of editing an applied one"
    )]
    Changed {
        name: String,
        recorded: String,
        file: String,
    },
    #[error(
        "{name} is not applied but version {applied} ({applied_name}) already is: new \
         migrations need a version above every applied one"
    )]
    OutOfOrder {
        name: String,
        applied: u64,
        applied_name: String,
    },
}

/// What a run has to do: which files are pending, and which are already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub applied: Vec<String>,
    pub pending: Vec<Migration>,
}

/// Compares the files with the records. Records of versions that have no file (applied by a
/// newer release, e.g. during a rolling upgrade) are fine.
pub fn plan(files: &[Migration], records: &[AppliedMigration]) -> Result<Plan, PlanError> {
    let records: BTreeMap<u64, &AppliedMigration> =
        records.iter().map(|r| (r.version, r)).collect();
    let mut plan = Plan {
        applied: Vec::new(),
        pending: Vec::new(),
    };
    for file in files {
        match records.get(&file.version) {
            Some(record) => {
                check_checksum(file, &record.sha256)?;
                plan.applied.push(file.name.clone());
            }
            None => plan.pending.push(file.clone()),
        }
    }
    if let (Some(first), Some((&version, record))) =
        (plan.pending.first(), records.last_key_value())
    {
        if first.version < version {
            return Err(PlanError::OutOfOrder {
                name: first.name.clone(),
                applied: version,
                applied_name: record.name.clone(),
            });
        }
    }
    Ok(plan)
}

fn check_checksum(file: &Migration, recorded: &str) -> Result<(), PlanError> {
    if recorded != file.sha256 {
        return Err(PlanError::Changed {
            name: file.name.clone(),
            recorded: recorded.to_owned(),
            file: file.sha256.clone(),
        });
    }
    Ok(())
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let files = match load_dir(&args.dir) {
        Ok(files) => files,
        Err(message) => {
            eprintln!("error: INVALID_ARGUMENT: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let client = match args.addr.client_with(ClientOptions {
        request_timeout: Duration::from_secs(args.migration_timeout_s.max(1)),
        retry_deadline: Duration::from_secs(args.wait_s),
        ..ClientOptions::default()
    }) {
        Ok(client) => client,
        Err(e) => return Ok(super::fail(&e)),
    };
    match migrate(&client, &files).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(message) => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Applies `files` in order and prints one line per file.
async fn migrate(client: &Client, files: &[Migration]) -> Result<(), String> {
    let status = |e: &Error| format!("{}: {}", code_name(e.code()), error_message(e));
    client
        .execute([Statement::new(CREATE_TABLE)])
        .await
        .map_err(|e| format!("{} (creating {MIGRATIONS_TABLE})", status(&e)))?;
    let records = read_records(client).await.map_err(|e| status(&e))?;
    let plan = plan(files, &records).map_err(|e| format!("FAILED_PRECONDITION: {e}"))?;
    for name in &plan.applied {
        println!("already applied {name}");
    }
    for file in &plan.pending {
        let mut statements: Vec<Statement> = file.statements.iter().map(Statement::new).collect();
        statements.push(Statement::new(INSERT_RECORD).bind_all([
            raftlite_client::Value::Integer(file.version as i64),
            raftlite_client::Value::Text(file.name.clone()),
            raftlite_client::Value::Text(file.sha256.clone()),
        ]));
        match client.execute_with_id(file.request_id(), statements).await {
            Ok(result) if result.deduplicated => println!("already applied {}", file.name),
            Ok(result) => println!("applied {} log_index={}", file.name, result.log_index),
            Err(e) => {
                // A constraint failure may be the record's PRIMARY KEY: another run applied
                // this version meanwhile. Anything else is the migration's own failure.
                let raced = e.code() == tonic::Code::FailedPrecondition;
                let record = if raced {
                    read_records(client)
                        .await
                        .map_err(|e| status(&e))?
                        .into_iter()
                        .find(|r| r.version == file.version)
                } else {
                    None
                };
                match record {
                    Some(record) => {
                        check_checksum(file, &record.sha256)
                            .map_err(|e| format!("FAILED_PRECONDITION: {e}"))?;
                        println!("already applied {}", file.name);
                    }
                    None => {
                        return Err(format!(
                            "{}: {} failed, nothing of it was applied and later migrations \
                             were not attempted: {}",
                            code_name(e.code()),
                            file.name,
                            error_message(&e)
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

fn error_message(e: &Error) -> String {
    match e {
        Error::Status { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

async fn read_records(client: &Client) -> Result<Vec<AppliedMigration>, Error> {
    let rows = client
        .query_with(
            Statement::new(
                "SELECT version, name, sha256 FROM raftlite_migrations ORDER BY version",
            ),
            Consistency::Linearizable,
            0,
        )
        .await?;
    rows.rows
        .iter()
        .map(|row| {
            Ok(AppliedMigration {
                version: row.get::<i64>(0)? as u64,
                name: row.get(1)?,
                sha256: row.get(2)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(name: &str, sql: &str) -> Migration {
        Migration::parse(name, sql.as_bytes()).expect("valid migration")
    }

    fn record(m: &Migration) -> AppliedMigration {
        AppliedMigration {
            version: m.version,
            name: m.name.clone(),
            sha256: m.sha256.clone(),
        }
    }

    #[test]
    fn names_follow_the_rule() {
        assert_eq!(version_of("0001_create.sql"), Ok(1));
        assert_eq!(version_of("12_add-index_2.sql"), Ok(12));
        assert_eq!(version_of("20240501_x.sql"), Ok(20240501));
        for bad in [
            "0001_create.SQL",
            "0001create.sql",
            "_create.sql",
            "0001_.sql",
            "v1_create.sql",
            "0001_cre ate.sql",
            "0001_create.sql.bak",
            "README.md",
            "0000_zero.sql",
            "99999999999999999999999_big.sql",
        ] {
            assert!(version_of(bad).is_err(), "{bad} must be refused");
        }
        let err = version_of("README.md").expect_err("refused");
        assert!(err.contains("<version>_<name>.sql"), "{err}");
    }

    #[test]
    fn files_are_ordered_numerically_and_versions_are_unique() {
        let files = order(vec![
            migration("10_c.sql", "SELECT 10"),
            migration("0002_b.sql", "SELECT 2"),
            migration("1_a.sql", "SELECT 1"),
        ])
        .expect("ordered");
        let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["1_a.sql", "0002_b.sql", "10_c.sql"]);
        let err = order(vec![
            migration("0002_b.sql", "SELECT 2"),
            migration("2_again.sql", "SELECT 2"),
        ])
        .expect_err("duplicate version");
        assert!(err.contains("same version 2"), "{err}");
        assert!(order(Vec::new()).is_err());
    }

    #[test]
    fn load_dir_refuses_strangers_and_skips_hidden_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("0001_create.sql"), "CREATE TABLE t(x);").expect("write");
        std::fs::write(dir.path().join(".gitkeep"), "").expect("write");
        std::fs::create_dir(dir.path().join("..2024_05_01")).expect("mkdir");
        let files = load_dir(dir.path()).expect("loads");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].statements, ["CREATE TABLE t(x)"]);
        std::fs::write(dir.path().join("notes.txt"), "hi").expect("write");
        let err = load_dir(dir.path()).expect_err("a stray file is an error");
        assert!(err.starts_with("notes.txt:"), "{err}");
    }

    #[test]
    fn statements_are_split_and_transaction_control_is_refused() {
        let m = migration(
            "0001_a.sql",
            "CREATE TABLE t(x); -- comment; here\nINSERT INTO t VALUES ('a;b');\n",
        );
        assert_eq!(m.statements.len(), 2);
        assert_eq!(m.request_id(), format!("migrate:1:{}", m.sha256));
        assert!(m.request_id().len() <= 128);
        let err = Migration::parse("0002_b.sql", b"BEGIN; CREATE TABLE u(x); COMMIT;")
            .expect_err("BEGIN refused");
        assert!(err.contains("statement 1 is BEGIN"), "{err}");
        assert!(Migration::parse("0003_c.sql", b"-- nothing\n").is_err());
    }

    #[test]
    fn checksum_is_sha256_of_the_bytes() {
        let m = migration("0001_a.sql", "SELECT 1");
        // sha256("SELECT 1")
        assert_eq!(
            m.sha256,
            "e004ebd5b5532a4b85984a62f8ad48a81aa3460c1ca07701f386135d72cdecf5"
        );
        assert_ne!(migration("0001_a.sql", "SELECT 1 ").sha256, m.sha256);
    }

    #[test]
    fn plan_splits_applied_and_pending() {
        let a = migration("0001_a.sql", "CREATE TABLE a(x)");
        let b = migration("0002_b.sql", "CREATE TABLE b(x)");
        let c = migration("0003_c.sql", "CREATE TABLE c(x)");
        let files = vec![a.clone(), b.clone(), c.clone()];
        let p = plan(&files, &[record(&a)]).expect("plan");
        assert_eq!(p.applied, ["0001_a.sql"]);
        assert_eq!(p.pending, [b.clone(), c.clone()]);
        let p = plan(&files, &[]).expect("plan");
        assert_eq!(p.pending.len(), 3);
        // A record without a file (applied by a newer release) is fine.
        let d = migration("0004_d.sql", "CREATE TABLE d(x)");
        let all = [record(&a), record(&b), record(&c), record(&d)];
        let p = plan(&files, &all).expect("plan");
        assert_eq!(p.applied.len(), 3);
        assert!(p.pending.is_empty());
    }

    #[test]
    fn plan_refuses_a_changed_file_naming_both_checksums() {
        let a = migration("0001_a.sql", "CREATE TABLE a(x)");
        let edited = migration("0001_a.sql", "CREATE TABLE a(x, y)");
        let err = plan(std::slice::from_ref(&edited), &[record(&a)]).expect_err("changed");
        let text = err.to_string();
        assert!(text.contains("0001_a.sql"), "{text}");
        assert!(
            text.contains(&a.sha256) && text.contains(&edited.sha256),
            "{text}"
        );
    }

    #[test]
    fn plan_refuses_a_new_file_below_an_applied_version() {
        let a = migration("0001_a.sql", "CREATE TABLE a(x)");
        let b = migration("0002_b.sql", "CREATE TABLE b(x)");
        let c = migration("0003_c.sql", "CREATE TABLE c(x)");
        let err =
            plan(&[a.clone(), b, c.clone()], &[record(&a), record(&c)]).expect_err("out of order");
        assert!(
            matches!(&err, PlanError::OutOfOrder { name, applied: 3, .. } if name == "0002_b.sql"),
            "{err:?}"
        );
    }
}
