//! Configuration of `raftlite serve`.
//!
//! Configuration is built in two stages:
//!
//! 1. **Sources.** [`ServeArgs`] holds the command-line flags. Each flag can also be read from a
//!    `RAFTLITE_*` environment variable (clap's `env`), which is how the Helm chart sets them.
//!    [`FileConfig`] is the optional YAML file named by `--config`. Every setting is an `Option`
//!    in both, so "not given" is never confused with "given the default value". Both structs
//!    come from one list, `settings!`, where each setting is declared once: its flag,
//!    environment variable, file key, value type and help. Defaults live in [`defaults`].
//! 2. **Validation.** [`load`] lays the flags over the file ([`FileConfig::overlay`]). Then
//!    [`FileConfig::validate`] fills in the named defaults, checks every setting and produces the
//!    runtime [`Config`], which has no `Option` where a value is required.
//!
//! Precedence: flag > environment variable > config file > default.
//!
//! # Environment expansion in the config file
//!
//! Before the YAML is parsed, its text is expanded ([`expand_env`]):
//!
//! | text              | becomes                                                        |
//! |-------------------|----------------------------------------------------------------|
//! | `${VAR}`          | the value of `VAR`; **an error if `VAR` is not set**           |
//! | `${VAR:-default}` | the value of `VAR`, or `default` if `VAR` is unset or empty    |
//! | `${VAR:-}`        | the value of `VAR`, or the empty string                        |
//! | `$$`              | a literal `$`                                                  |
//! | `$VAR`            | an error: write `${VAR}` (or `$$VAR` for the literal text)     |
//! | `$` + other char  | a literal `$` (`$5`, `a $ b`)                                  |
//!
//! Lines whose first non-blank character is `#` (full-line comments) are copied unchanged.
//!
//! # Key decisions and trade-offs
//!
//! - **An unset variable is an error, never an empty string.** LiteFS users report that
//!   expansion in `litefs.yml` "doesn't work reliably" and generate the file with a shell
//!   heredoc instead. A setting that quietly becomes empty surfaces much later as a confusing
//!   cluster failure. Here the error names the variable and the file line, and `${VAR:-}` says
//!   "empty is fine" explicitly.
//! - **Expansion is textual, before YAML parsing**, so it works anywhere (numbers, booleans,
//!   map keys), and parse errors report the file's own line numbers. The cost: a value is
//!   inserted verbatim, so a value containing YAML syntax (`: `, `#`, quotes) needs quotes in
//!   the file. Values containing a line break are refused: they would change the file's
//!   structure and its line numbers.
//! - **Trailing comments are expanded; full-line comments are not.** Telling whether a `#`
//!   starts a comment or sits inside a quoted string needs a YAML parser. Full-line comments
//!   are unambiguous, and skipping them lets the file document `${VAR}` in its comments.
//! - **Two ports, one host.** A node serves clients on `listen` and peers on `peer_listen`
//!   (default: listen's port + 1), so the peer port can be closed to everyone but the other
//!   nodes. `peers` are PEER addresses, which the membership stores. The client address
//!   (`advertise_addr`) defaults to the host of this node's peer address with listen's port,
//!   so one name per pod (the StatefulSet DNS name) serves both.
//! - **Secure by default.** A node whose `listen` or `peer_listen` is not a loopback address
//!   refuses to start without TLS (`tls_cert`, `tls_key`, `tls_ca`) and client tokens
//!   (`auth_file`), unless `insecure` is set; the error names what to add. A local
//!   `raftlite dev` cluster on 127.0.0.1 needs neither. `auto_resync` defaults to on only with
//!   TLS: without it, anyone reaching the peer port could pose as another cluster's leader and
//!   have the node wipe its data.
//! - **Addresses are checked against the `HOSTNAME` class of mistakes.** A wildcard address
//!   (`0.0.0.0`, `[::]`) is refused as an address to reach a node. Two peers sharing one
//!   address are refused too: that is what every pod rendering the same name looks like.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use defaults::*;

/// The value a setting takes when it is given nowhere (neither flag, environment variable nor
/// config file). [`FileConfig::validate`] applies them.
pub mod defaults {
    use std::net::SocketAddr;

    /// Default `heartbeat_ms`: the leader's heartbeat interval.
    pub fn default_heartbeat_ms() -> u64 {
        100
    }

    /// Default `election_timeout_min_ms`. It must exceed two heartbeats.
    pub fn default_election_timeout_min_ms() -> u64 {
        300
    }

    /// Default `election_timeout_max_ms`.
    pub fn default_election_timeout_max_ms() -> u64 {
        600
    }

    /// Default `snapshot_every`: log entries between snapshots.
    pub fn default_snapshot_every() -> u64 {
        10_000
    }

    /// Default `max_request_bytes`: 16 MiB.
    pub fn default_max_request_bytes() -> usize {
        16 * 1024 * 1024
    }

    /// Default `max_concurrent_requests`: public requests (SQL, admin) a node serves at once;
    /// more are refused at once with RESOURCE_EXHAUSTED instead of queueing.
    pub fn default_max_concurrent_requests() -> usize {
        1024
    }

    /// Default `max_connections`: client connections a node holds at once, TLS handshakes
    /// under way included; lowered at start to fit the process's open-file limit.
    pub fn default_max_connections() -> usize {
        4096
    }

    /// Default `request_timeout_ms`: the deadline of a public request whose client set a
    /// longer one or none (30 s).
    pub fn default_request_timeout_ms() -> u64 {
        30_000
    }

    /// Default `auto_resync`: with TLS, a node whose data belongs to another cluster wipes it
    /// and re-syncs. Without TLS it refuses: anyone who can reach the peer port could pose as
    /// the leader of another cluster and have the node wipe its data.
    pub fn default_auto_resync(tls_configured: bool) -> bool {
        tls_configured
    }

    /// Default `max_snapshot_bytes`: 1 GiB, the Helm chart's default volume size.
    pub fn default_max_snapshot_bytes() -> u64 {
        1024 * 1024 * 1024
    }

    /// Default `read_threads`: SQLite connections serving reads.
    pub fn default_read_threads() -> usize {
        4
    }

    /// Most `worker_threads`.
    pub const MAX_WORKER_THREADS: usize = 1024;

    /// `worker_threads` when it is 0 (the default): one per CPU this process may use (the
    /// container's CPU quota counts, as `std::thread::available_parallelism` reads it).
    pub fn default_worker_threads() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }

    /// Default `max_batch_requests`: the most write requests in one group commit.
    pub fn default_max_batch_requests() -> usize {
        1024
    }

    /// Most group commits in flight at once (`write_pipeline_depth`): each keeps up to 4 MiB of
    /// pages in memory until it is applied.
    pub const MAX_WRITE_PIPELINE_DEPTH: usize = 8;

    /// Default `write_pipeline_depth`: group commits in flight at once (1: the next waits for
    /// the previous one's commit and apply).
    pub fn default_write_pipeline_depth() -> usize {
        1
    }

    /// Default `transaction_idle_timeout_ms`: an interactive transaction holds the write lock,
    /// so one whose client went quiet is rolled back soon.
    pub fn default_transaction_idle_timeout_ms() -> u64 {
        5_000
    }

    /// Most `transaction_max_ms`: below the applier's 30 s wait for the write lock.
    pub const MAX_TRANSACTION_MAX_MS: u64 = 25_000;

    /// Default `transaction_max_ms`: the longest an interactive transaction holds the write
    /// lock, however busy its client keeps it.
    pub fn default_transaction_max_ms() -> u64 {
        20_000
    }

    /// Default `statement_timeout_ms`: a write statement holds the one executor (every other
    /// write waits), so it gets seconds, not the request's 30.
    pub fn default_statement_timeout_ms() -> u64 {
        5_000
    }

    /// Default `max_delta_bytes`: the pages one group commit may change, 64 MiB — one Raft
    /// entry, well inside a peer message (256 MiB).
    pub fn default_max_delta_bytes() -> usize {
        64 * 1024 * 1024
    }

    /// Default `max_value_bytes`: 64 MiB, so that a value fits a Raft entry with room to
    /// spare.
    pub fn default_max_value_bytes() -> usize {
        64 * 1024 * 1024
    }

    /// Default `foreign_keys`: on. The bundled SQLite is built with
    /// `SQLITE_DEFAULT_FOREIGN_KEYS=1`, so raftlite has always enforced foreign keys; turning
    /// them off by default would quietly stop enforcing them after an upgrade.
    pub fn default_foreign_keys() -> bool {
        true
    }

    /// Default `recursive_triggers`: off, as in SQLite.
    pub fn default_recursive_triggers() -> bool {
        false
    }

    /// Default `metrics_addr`: Prometheus scrapes `/metrics` on port 9090 of every pod.
    pub fn default_metrics_addr() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 9090))
    }

    /// Default `log_level` (a `tracing` env-filter directive).
    pub fn default_log_level() -> String {
        "info".to_owned()
    }

    /// Default `archive_snapshot_interval_s`: one full snapshot an hour.
    pub fn default_archive_snapshot_interval_s() -> u64 {
        3600
    }

    /// Default `archive_retention_s`: snapshots (and the log after them) are kept for a day.
    pub fn default_archive_retention_s() -> u64 {
        24 * 3600
    }

    /// Default `archive_flush_ms`: how long new entries gather before a segment is uploaded.
    pub fn default_archive_flush_ms() -> u64 {
        200
    }

    /// Default `archive_max_held_entries`: log entries kept for an archive that is behind.
    pub fn default_archive_max_held_entries() -> u64 {
        50_000
    }
}

/// `archive` value that turns archiving off.
pub const ARCHIVE_NONE: &str = "none";

/// The smallest accepted `max_request_bytes`.
const MIN_REQUEST_BYTES: usize = 1024;
/// The largest accepted `max_request_bytes`: protobuf messages cannot exceed 2 GiB, and a
/// request travels inside a Raft entry together with its page delta.
const MAX_REQUEST_BYTES: usize = 1024 * 1024 * 1024;
/// The smallest accepted `max_value_bytes`. raftlite's own statements are not bound by it,
/// so even this little never breaks the write path.
const MIN_VALUE_BYTES: usize = 1024;
/// The smallest accepted `max_snapshot_bytes`: an empty database's snapshot is far smaller,
/// but a lower limit only makes snapshots fail.
const MIN_SNAPSHOT_BYTES: u64 = 1024 * 1024;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where a setting can be given, for error messages.
struct Setting {
    /// The config file key (also the field name in [`ServeArgs`] and [`FileConfig`]).
    key: &'static str,
    flag: &'static str,
    env: &'static str,
}

impl Setting {
    /// The flag without its leading `--`, as clap's `long` wants it.
    fn long(&self) -> &'static str {
        self.flag.trim_start_matches('-')
    }
}

/// Declares every setting once and generates from that one list:
///
/// - [`ServeArgs`]: the clap flags, each with its environment variable, value name and help
///   (the doc comment);
/// - [`FileConfig`]: the config file, one key per setting (the field name);
/// - [`FileConfig::overlay`]: flag (or its environment variable) over file;
/// - a [`Setting`] const per setting (key, flag, env), which error messages name.
///
/// An entry reads `field: Type = CONST("--flag", "RAFTLITE_ENV", "VALUE_NAME");`, optionally
/// preceded by `#[arg(...)]` (extra clap attributes) and `#[serde(...)]` (extra serde
/// attributes), in that order. Adding a setting: an entry here, its default in [`defaults`],
/// its check in [`FileConfig::validate`], its field in [`Config`] and a documented line in
/// `config.example.yaml` (a test checks the file).
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $(#[arg($($arg:tt)*)])?
        $(#[serde($($serde:tt)*)])?
        $field:ident: $ty:ty = $setting:ident($flag:literal, $env:literal, $value_name:literal);
    )*) => {
        $(
            const $setting: Setting = Setting {
                key: stringify!($field),
                flag: $flag,
                env: $env,
            };
        )*

        /// Flags of `raftlite serve`. Each flag can also be set through its environment
        /// variable. A flag wins over its environment variable, and both win over the config
        /// file.
        #[derive(Debug, Clone, Default, PartialEq, clap::Args)]
        pub struct ServeArgs {
            /// YAML config file. `${VAR}` and `${VAR:-default}` in it are expanded.
            #[arg(long, env = "RAFTLITE_CONFIG", value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(
                    long = $setting.long(),
                    env = $setting.env,
                    value_name = $value_name
                    $(, $($arg)*)?
                )]
                pub $field: Option<$ty>,
            )*
        }

        /// The config file: the same settings as [`ServeArgs`] (without `config`), with
        /// snake_case keys. Absent keys stay `None`; [`FileConfig::validate`] applies the
        /// named defaults.
        ///
        /// `peers` is accepted as a map (`{1: "host:port"}`), a list (`["1=host:port"]`) or a
        /// string (`"1=host:port,2=host:port"`, handy with `${PEERS}`).
        ///
        /// Unknown keys are refused, unlike Neon's pageserver config, which ignores them so
        /// that a rollback to an older binary can still read a newer file. Here a misspelt
        /// key (`heartbeat: 50` for `heartbeat_ms`) would otherwise be dropped without a word
        /// and the node would run on the default; users rely on the error. The cost: before
        /// rolling back, remove keys the older version does not know (or set new settings
        /// through `RAFTLITE_*` variables, which an older binary does not read).
        #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct FileConfig {
            $(
                $(#[doc = $doc])*
                $(#[serde($($serde)*)])?
                pub $field: Option<$ty>,
            )*
            /// Set by [`FileConfig::with_pod_identity`] when it derived `node_id`; not a file
            /// key.
            #[serde(skip)]
            pub node_id_source: Option<String>,
        }

        impl FileConfig {
            /// Lays the flags (and their environment variables) over this file's settings.
            pub fn overlay(self, args: &ServeArgs) -> Self {
                Self {
                    $($field: args.$field.clone().or(self.$field),)*
                    node_id_source: self.node_id_source,
                }
            }
        }
    };
}

settings! {
    /// This node's id (1, 2, ...), unique in the cluster.
    node_id: u64 = NODE_ID("--node-id", "RAFTLITE_NODE_ID", "N");

    /// Directory holding this node's SQLite database and Raft log.
    data_dir: PathBuf = DATA_DIR("--data-dir", "RAFTLITE_DATA_DIR", "DIR");

    /// IP address and port the client gRPC server (SQL, admin, health) binds, e.g.
    /// 0.0.0.0:7000.
    listen: String = LISTEN("--listen", "RAFTLITE_LISTEN", "HOST:PORT");

    /// IP address and port the peer gRPC server (Raft traffic between nodes) binds
    /// [default: the IP of --listen, its port + 1].
    peer_listen: String = PEER_LISTEN("--peer-listen", "RAFTLITE_PEER_LISTEN", "HOST:PORT");

    /// Address clients are told to reach this node at (status, leader hints). Defaults to
    /// the host of this node's entry in --peers with the port of --listen, else to --listen
    /// (required if --listen is a wildcard address).
    advertise_addr: String =
        ADVERTISE_ADDR("--advertise-addr", "RAFTLITE_ADVERTISE_ADDR", "HOST:PORT");

    /// Full initial membership as PEER addresses (the peers' --peer-listen ports), e.g.
    /// 1=raftlite-0.raftlite:7001,2=raftlite-1.raftlite:7001. May be left out only for a
    /// single-node cluster.
    #[arg(value_parser = peers_from_str)]
    #[serde(deserialize_with = "deserialize_peers")]
    peers: BTreeMap<u64, String> = PEERS("--peers", "RAFTLITE_PEERS", "ID=HOST:PORT,...");

    /// Instead of --peers: the StatefulSet NAME and headless SERVICE; pods 0..--replicas are
    /// the initial members (node id = ordinal + 1), reached at NAME-i.SERVICE...:PORT, where
    /// PORT is the peer port. Higher ordinals join the running cluster.
    peers_from_statefulset: String = PEERS_FROM_STATEFULSET(
        "--peers-from-statefulset",
        "RAFTLITE_PEERS_FROM_STATEFULSET",
        "NAME.SERVICE.NAMESPACE.svc.cluster.local:PORT"
    );

    /// With --peers-from-statefulset: how many pods form the initial membership.
    replicas: u64 = REPLICAS("--replicas", "RAFTLITE_REPLICAS", "N");

    /// This node's TLS certificate (PEM), served on both ports and presented to peers. TLS
    /// takes --tls-cert, --tls-key and --tls-ca together.
    tls_cert: PathBuf = TLS_CERT("--tls-cert", "RAFTLITE_TLS_CERT", "FILE");

    /// The private key (PEM) of --tls-cert.
    tls_key: PathBuf = TLS_KEY("--tls-key", "RAFTLITE_TLS_KEY", "FILE");

    /// The CA certificate (PEM) that signs the nodes' certificates; a peer must present a
    /// certificate it signed (mutual TLS).
    tls_ca: PathBuf = TLS_CA("--tls-ca", "RAFTLITE_TLS_CA", "FILE");

    /// YAML file of the tokens clients may use (name, sha256 of the token, role: read, write
    /// or admin); clients send `authorization: Bearer TOKEN`.
    auth_file: PathBuf = AUTH_FILE("--auth-file", "RAFTLITE_AUTH_FILE", "FILE");

    /// Serve a non-loopback address without TLS or without --auth-file. Without it such a
    /// node refuses to start [default: false].
    #[arg(
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure: bool = INSECURE("--insecure", "RAFTLITE_INSECURE", "BOOL");

    /// Where Prometheus metrics are served (/metrics), or "off" [default: 0.0.0.0:9090].
    metrics_addr: String = METRICS_ADDR("--metrics-addr", "RAFTLITE_METRICS_ADDR", "HOST:PORT");

    /// Leader heartbeat interval in milliseconds [default: 100].
    heartbeat_ms: u64 = HEARTBEAT_MS("--heartbeat-ms", "RAFTLITE_HEARTBEAT_MS", "MS");

    /// Lower bound of the randomized election timeout in milliseconds [default: 300].
    election_timeout_min_ms: u64 = ELECTION_TIMEOUT_MIN_MS(
        "--election-timeout-min-ms",
        "RAFTLITE_ELECTION_TIMEOUT_MIN_MS",
        "MS"
    );

    /// Upper bound of the randomized election timeout in milliseconds [default: 600].
    election_timeout_max_ms: u64 = ELECTION_TIMEOUT_MAX_MS(
        "--election-timeout-max-ms",
        "RAFTLITE_ELECTION_TIMEOUT_MAX_MS",
        "MS"
    );

    /// Take a snapshot every N log entries [default: 10000].
    snapshot_every: u64 = SNAPSHOT_EVERY("--snapshot-every", "RAFTLITE_SNAPSHOT_EVERY", "N");

    /// Largest accepted request in bytes [default: 16777216 (16 MiB)].
    max_request_bytes: usize = MAX_REQUEST_BYTES_SETTING(
        "--max-request-bytes",
        "RAFTLITE_MAX_REQUEST_BYTES",
        "BYTES"
    );

    /// Largest snapshot accepted from a peer, in bytes; at least 1048576 (1 MiB)
    /// [default: 1073741824 (1 GiB)].
    max_snapshot_bytes: u64 = MAX_SNAPSHOT_BYTES(
        "--max-snapshot-bytes",
        "RAFTLITE_MAX_SNAPSHOT_BYTES",
        "BYTES"
    );

    /// Most public requests (SQL, admin) served at once; beyond, requests are refused at once
    /// with RESOURCE_EXHAUSTED. Raft traffic between nodes is never refused [default: 1024].
    max_concurrent_requests: usize = MAX_CONCURRENT_REQUESTS(
        "--max-concurrent-requests",
        "RAFTLITE_MAX_CONCURRENT_REQUESTS",
        "N"
    );

    /// Most client connections held at once (TLS handshakes under way included); beyond,
    /// a new connection is closed at once. Lowered at start to fit the open-file limit, so
    /// that connections can never take the files the node needs [default: 4096].
    max_connections: usize = MAX_CONNECTIONS("--max-connections", "RAFTLITE_MAX_CONNECTIONS", "N");

    /// Deadline of a public request in milliseconds; a shorter client deadline (grpc-timeout)
    /// wins. Past it the request answers DEADLINE_EXCEEDED [default: 30000].
    request_timeout_ms: u64 =
        REQUEST_TIMEOUT_MS("--request-timeout-ms", "RAFTLITE_REQUEST_TIMEOUT_MS", "MS");

    /// Wipe and re-sync from peers when local data belongs to another cluster [default: true
    /// with TLS, else false].
    #[arg(value_parser = clap::builder::BoolishValueParser::new())]
    auto_resync: bool = AUTO_RESYNC("--auto-resync", "RAFTLITE_AUTO_RESYNC", "BOOL");

    /// Threads (SQLite connections) serving reads [default: 4].
    read_threads: usize = READ_THREADS("--read-threads", "RAFTLITE_READ_THREADS", "N");

    /// Threads running the node's network and Raft tasks, up to 1024; 0: one per CPU this
    /// process may use (a container's CPU limit counts) [default: 0]. Several nodes sharing a
    /// machine's cores (`raftlite dev`, `raftlite bench`) each get their share.
    worker_threads: usize = WORKER_THREADS("--worker-threads", "RAFTLITE_WORKER_THREADS", "N");

    /// Most write requests in one group commit [default: 1024].
    max_batch_requests: usize =
        MAX_BATCH_REQUESTS("--max-batch-requests", "RAFTLITE_MAX_BATCH_REQUESTS", "N");

    /// Group commits in flight at once, 1 to 8: above 1 the leader executes the next batch
    /// on top of deltas still waiting for their quorum (the write pipeline). It pays where
    /// nodes have cores of their own and the round trip dominates; where nodes share a few
    /// cores it only cuts the same work into smaller batches [default: 1].
    write_pipeline_depth: usize = WRITE_PIPELINE_DEPTH(
        "--write-pipeline-depth",
        "RAFTLITE_WRITE_PIPELINE_DEPTH",
        "N"
    );

    /// Longest a client statement may run, in milliseconds; a shorter client deadline wins.
    /// Past it the statement is interrupted inside SQLite and its request answers
    /// DEADLINE_EXCEEDED [default: 5000].
    statement_timeout_ms: u64 = STATEMENT_TIMEOUT_MS(
        "--statement-timeout-ms",
        "RAFTLITE_STATEMENT_TIMEOUT_MS",
        "MS"
    );

    /// An interactive transaction with no call for this long, in milliseconds, is rolled back
    /// (it holds the write lock meanwhile) [default: 5000].
    transaction_idle_timeout_ms: u64 = TRANSACTION_IDLE_TIMEOUT_MS(
        "--transaction-idle-timeout-ms",
        "RAFTLITE_TRANSACTION_IDLE_TIMEOUT_MS",
        "MS"
    );

    /// An interactive transaction is rolled back this long after it began, in milliseconds,
    /// however busy (no client holds the write lock longer). At most 25000: the applier waits
    /// at most 30 s for the write lock [default: 20000].
    transaction_max_ms: u64 = TRANSACTION_MAX_MS(
        "--transaction-max-ms",
        "RAFTLITE_TRANSACTION_MAX_MS",
        "MS"
    );

    /// Most bytes of pages one write request (or group commit) may change; a request over it
    /// is refused alone with RESOURCE_EXHAUSTED and never proposed. At least 1048576, at most
    /// 134217728 (half a peer message) [default: 67108864 (64 MiB)].
    max_delta_bytes: usize =
        MAX_DELTA_BYTES("--max-delta-bytes", "RAFTLITE_MAX_DELTA_BYTES", "BYTES");

    /// Largest string, blob or row a statement may build, bind or read, in bytes; bigger ones
    /// fail with RESOURCE_EXHAUSTED. Also sizes SQLite's heap limit. At least 1024, at most
    /// 1000000000 [default: 67108864 (64 MiB)].
    max_value_bytes: usize =
        MAX_VALUE_BYTES("--max-value-bytes", "RAFTLITE_MAX_VALUE_BYTES", "BYTES");

    /// Enforce FOREIGN KEY constraints (SQLite's `PRAGMA foreign_keys`, the same for every
    /// client; clients cannot change it) [default: true].
    #[arg(value_parser = clap::builder::BoolishValueParser::new())]
    foreign_keys: bool = FOREIGN_KEYS("--foreign-keys", "RAFTLITE_FOREIGN_KEYS", "BOOL");

    /// Let triggers fire triggers recursively (SQLite's `PRAGMA recursive_triggers`, the same
    /// for every client) [default: false].
    #[arg(value_parser = clap::builder::BoolishValueParser::new())]
    recursive_triggers: bool =
        RECURSIVE_TRIGGERS("--recursive-triggers", "RAFTLITE_RECURSIVE_TRIGGERS", "BOOL");

    /// Archive URL: s3://BUCKET/PREFIX, file:///DIR, or "none" [default:
    /// file://<data-dir>/archive]. S3 credentials: RAFTLITE_ACCESS_KEY_ID /
    /// RAFTLITE_SECRET_ACCESS_KEY or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; encryption key:
    /// RAFTLITE_ARCHIVE_KEY (64 hex digits).
    archive: String = ARCHIVE("--archive", "RAFTLITE_ARCHIVE", "URL");

    /// S3 endpoint, e.g. http://minio:9000 (path-style requests) [default: AWS_ENDPOINT_URL,
    /// else AWS].
    archive_endpoint: String =
        ARCHIVE_ENDPOINT("--archive-endpoint", "RAFTLITE_ARCHIVE_ENDPOINT", "URL");

    /// S3 region [default: AWS_REGION, else us-east-1].
    archive_region: String =
        ARCHIVE_REGION("--archive-region", "RAFTLITE_ARCHIVE_REGION", "REGION");

    /// Seconds between full snapshots uploaded to the archive [default: 3600].
    archive_snapshot_interval_s: u64 = ARCHIVE_SNAPSHOT_INTERVAL_S(
        "--archive-snapshot-interval-s",
        "RAFTLITE_ARCHIVE_SNAPSHOT_INTERVAL_S",
        "SECONDS"
    );

    /// Seconds archived snapshots are kept (the newest always is) [default: 86400].
    archive_retention_s: u64 =
        ARCHIVE_RETENTION_S("--archive-retention-s", "RAFTLITE_ARCHIVE_RETENTION_S", "SECONDS");

    /// Milliseconds new log entries gather before a segment is uploaded [default: 200].
    archive_flush_ms: u64 =
        ARCHIVE_FLUSH_MS("--archive-flush-ms", "RAFTLITE_ARCHIVE_FLUSH_MS", "MS");

    /// Most log entries kept for an archive that is behind; beyond, the archive is caught up
    /// with a fresh snapshot [default: 50000].
    archive_max_held_entries: u64 = ARCHIVE_MAX_HELD_ENTRIES(
        "--archive-max-held-entries",
        "RAFTLITE_ARCHIVE_MAX_HELD_ENTRIES",
        "N"
    );

    /// OTLP/gRPC collector that receives traces, e.g. http://otel-collector:4317; unset or
    /// "off": no trace export. Without this flag, its variable and the file setting, the
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT is read [default: off].
    otlp_endpoint: String = OTLP_ENDPOINT("--otlp-endpoint", "RAFTLITE_OTLP_ENDPOINT", "URL");

    /// Log format [default: text].
    log_format: LogFormat = LOG_FORMAT("--log-format", "RAFTLITE_LOG_FORMAT", "FORMAT");

    /// Log filter, e.g. "info" or "info,raftlite=debug" [default: info].
    log_level: String = LOG_LEVEL("--log-level", "RAFTLITE_LOG", "FILTER");
}

/// The archive a node ships its log and snapshots to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    pub location: crate::archive::ArchiveLocation,
    pub settings: crate::archive::ArchiverSettings,
}

/// The TLS files of a node: given all three or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificate (PEM) that peer certificates must be signed by.
    pub ca: PathBuf,
}

/// Validated runtime configuration of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's id, ≥ 1.
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Address the client gRPC server (SQL, admin, health) binds.
    pub listen: SocketAddr,
    /// Address the peer gRPC server (Raft traffic between nodes) binds; differs from
    /// `listen`.
    pub peer_listen: SocketAddr,
    /// HOST:PORT clients are told to reach this node at (status, leader hints).
    pub advertise_addr: String,
    /// HOST:PORT peers reach this node at: `peers[node_id]` when this node is in `peers`.
    pub peer_advertise_addr: String,
    /// Initial membership, node id to PEER address (HOST:PORT). Contains this node, unless
    /// `auto_join`.
    pub peers: BTreeMap<u64, String>,
    /// `None`: no TLS, on either port.
    pub tls: Option<TlsFiles>,
    /// The client tokens file; `None`: clients are not authenticated.
    pub auth_file: Option<PathBuf>,
    /// Serve a non-loopback address without TLS or tokens (validation allowed it because
    /// `insecure` was set; the node warns at start).
    pub insecure: bool,
    /// Largest snapshot accepted from a peer, in bytes, ≥ 1 MiB.
    pub max_snapshot_bytes: u64,
    /// Peers came from a StatefulSet pattern: a node that is not a voter of the running
    /// cluster (a scale-up, or a pod re-created after a scale-down) adds itself.
    pub auto_join: bool,
    /// Where `/metrics` is served; `None` when turned off.
    pub metrics_addr: Option<SocketAddr>,
    /// How the node id was derived from the pod, when it was (for the startup log).
    pub node_id_source: Option<String>,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Log entries between snapshots, ≥ 1.
    pub snapshot_every: u64,
    pub max_request_bytes: usize,
    /// Public requests served at once, ≥ 1.
    pub max_concurrent_requests: usize,
    /// Client connections held at once, ≥ 1 (before the open-file limit lowers it).
    pub max_connections: usize,
    /// Deadline of a public request (a shorter client deadline wins).
    pub request_timeout: Duration,
    /// Wipe and re-sync when local data belongs to another cluster.
    pub auto_resync: bool,
    /// ≥ 1.
    pub read_threads: usize,
    /// Threads of the node's async runtime, 1 to [`MAX_WORKER_THREADS`].
    pub worker_threads: usize,
    /// Group-commit cap, ≥ 1.
    pub max_batch_requests: usize,
    /// Group commits in flight at once, 1 to [`MAX_WRITE_PIPELINE_DEPTH`].
    pub write_pipeline_depth: usize,
    /// Longest a client statement runs (a shorter client deadline wins).
    pub statement_timeout: Duration,
    /// An interactive transaction idle this long is rolled back.
    pub transaction_idle_timeout: Duration,
    /// An interactive transaction open this long is rolled back, however busy.
    pub transaction_max: Duration,
    /// Most page bytes of one proposed delta.
    pub max_delta_bytes: usize,
    /// Largest value (string, blob, row) of a statement, in `MIN_VALUE_BYTES..=1e9`.
    pub max_value_bytes: usize,
    /// `PRAGMA foreign_keys` of every connection that runs client SQL.
    pub foreign_keys: bool,
    /// `PRAGMA recursive_triggers` of every connection that runs client SQL.
    pub recursive_triggers: bool,
    /// `None`: archiving is off (`archive: none`).
    pub archive: Option<ArchiveConfig>,
    /// OTLP/gRPC endpoint traces are exported to; `None`: no export.
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
    /// A valid `tracing_subscriber::EnvFilter` directive.
    pub log_level: String,
}

impl Config {
    /// The options of this node's SQLite database. A node also caps SQLite's process-wide heap
    /// (see `db/bounds.rs`), sized from `max_value_bytes` and `read_threads`.
    pub fn db_options(&self) -> crate::db::DbOptions {
        crate::db::DbOptions {
            read_threads: self.read_threads,
            max_value_bytes: self.max_value_bytes,
            foreign_keys: self.foreign_keys,
            recursive_triggers: self.recursive_triggers,
            limit_process_heap: true,
            max_delta_bytes: self.max_delta_bytes,
            ..Default::default()
        }
    }
}

/// What is wrong with a `${...}` or `$` in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpandProblem {
    /// `${VAR}` without default, and `VAR` is not set.
    Unset,
    /// `${` without a closing `}` on the same line.
    Unterminated,
    /// `${...}` that is neither `${VAR}` nor `${VAR:-default}`.
    Unsupported,
    /// `$VAR`: shell style, which is not expanded.
    BareName,
    /// The value of `VAR` contains a line break.
    Multiline,
}

impl ExpandProblem {
    fn describe(self, var: &str) -> String {
        match self {
            Self::Unset => format!(
                "environment variable {var} is not set and ${{{var}}} has no default \
                 (write ${{{var}:-value}} for a default, ${{{var}:-}} to allow empty)"
            ),
            Self::Unterminated => format!("`{var}` has no closing `}}` on this line"),
            Self::Unsupported => format!(
                "`{var}` is not supported: write ${{VAR}} or ${{VAR:-default}} \
                 (VAR made of letters, digits and _), or $$ for a literal $"
            ),
            Self::BareName => format!(
                "`${var}` is not expanded: write ${{{var}}}, or $${var} for the literal text"
            ),
            Self::Multiline => format!(
                "the value of environment variable {var} contains a line break, \
                 which would change the structure of the file"
            ),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting was given nowhere.
    #[error("{setting}: missing (set {flag}, {env} or {setting} in the config file)")]
    Missing {
        setting: &'static str,
        flag: &'static str,
        env: &'static str,
    },

    /// A setting has a value that cannot work.
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },

    /// Environment expansion in the config file failed.
    #[error("{}:{line}: {}", .file.display(), .problem.describe(.var))]
    Expand {
        file: PathBuf,
        /// 1-based line in `file`.
        line: usize,
        /// The variable name, or the offending text for syntax problems.
        var: String,
        problem: ExpandProblem,
    },

    /// The config file (after expansion) is not valid YAML for [`FileConfig`].
    #[error("{}: {source}", .file.display())]
    Parse {
        file: PathBuf,
        source: serde_yaml::Error,
    },

    /// The config file could not be read.
    #[error("reading config file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The setting (config file key) the error is about, if it is about one.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            Self::Missing { setting, .. } | Self::Invalid { setting, .. } => Some(setting),
            Self::Expand { .. } | Self::Parse { .. } | Self::Io { .. } => None,
        }
    }
}

/// The OpenTelemetry SDKs' standard variable, read when `otlp_endpoint` is set nowhere else.
pub const OTEL_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Reads the config file named by `--config` (if any), lays the flags and environment
/// variables over it and validates the result.
pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    let file = match &args.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    let mut merged = file.overlay(args);
    if merged.otlp_endpoint.is_none() {
        merged.otlp_endpoint = lookup_process_env(OTEL_ENDPOINT_ENV);
    }
    merged
        .with_pod_identity(lookup_process_env, crate::cluster::pod::kernel_hostname)?
        .validate()
}

/// Parses `1=host:port,2=host:port` (spaces around entries allowed, empty entries ignored).
/// Addresses are checked later, by [`FileConfig::validate`].
pub fn peers_from_str(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = parse_peer_entry(entry).map_err(|message| invalid(&PEERS, message))?;
        insert_peer(&mut peers, id, addr).map_err(|message| invalid(&PEERS, message))?;
    }
    Ok(peers)
}

fn parse_peer_entry(entry: &str) -> Result<(u64, String), String> {
    let Some((id, addr)) = entry.split_once('=') else {
        return Err(format!("{entry:?} is not ID=HOST:PORT"));
    };
    let id = id
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{entry:?}: {:?} is not a node id", id.trim()))?;
    Ok((id, addr.trim().to_owned()))
}

fn insert_peer(peers: &mut BTreeMap<u64, String>, id: u64, addr: String) -> Result<(), String> {
    match peers.insert(id, addr) {
        Some(_) => Err(format!("node {id} is listed twice")),
        None => Ok(()),
    }
}

fn deserialize_peers<'de, D>(deserializer: D) -> Result<Option<BTreeMap<u64, String>>, D::Error>
where
    D: Deserializer<'de>,
{
    struct PeersVisitor;

    impl<'de> Visitor<'de> for PeersVisitor {
        type Value = Option<BTreeMap<u64, String>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(
                r#"peers as a map {1: "host:port"}, a list ["1=host:port"] or a string "1=host:port,2=host:port""#,
            )
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            peers_from_str(s).map(Some).map_err(E::custom)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut peers = BTreeMap::new();
            while let Some((id, addr)) = map.next_entry::<u64, String>()? {
                insert_peer(&mut peers, id, addr.trim().to_owned())
                    .map_err(|m| de::Error::custom(format!("peers: {m}")))?;
            }
            Ok(Some(peers))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut peers = BTreeMap::new();
            while let Some(entry) = seq.next_element::<String>()? {
                let (id, addr) = parse_peer_entry(entry.trim())
                    .map_err(|m| de::Error::custom(format!("peers: {m}")))?;
                insert_peer(&mut peers, id, addr)
                    .map_err(|m| de::Error::custom(format!("peers: {m}")))?;
            }
            Ok(Some(peers))
        }
    }

    deserializer.deserialize_any(PeersVisitor)
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in `text` (see the module docs), looking
/// variables up with `lookup`. `file` is only used in error messages.
pub fn expand_env(
    text: &str,
    file: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let fail = |var: &str, problem| ConfigError::Expand {
            file: file.to_owned(),
            line: index + 1,
            var: var.to_owned(),
            problem,
        };
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(after_dollar) = after.strip_prefix('$') {
                out.push('$');
                rest = after_dollar;
            } else if let Some(inner_and_rest) = after.strip_prefix('{') {
                let Some(close) = inner_and_rest.find('}') else {
                    let text = format!("${{{}", inner_and_rest.trim_end());
                    return Err(fail(&text, ExpandProblem::Unterminated));
                };
                let inner = &inner_and_rest[..close];
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                if !is_var_name(name) {
                    return Err(fail(&format!("${{{inner}}}"), ExpandProblem::Unsupported));
                }
                let value = match (lookup(name), default) {
                    (Some(value), Some(default)) if value.is_empty() => default.to_owned(),
                    (Some(value), _) => value,
                    (None, Some(default)) => default.to_owned(),
                    (None, None) => return Err(fail(name, ExpandProblem::Unset)),
                };
                if value.contains(['\n', '\r']) {
                    return Err(fail(name, ExpandProblem::Multiline));
                }
                out.push_str(&value);
                rest = &inner_and_rest[close + 1..];
            } else if after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                return Err(fail(&after[..end], ExpandProblem::BareName));
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn lookup_process_env(name: &str) -> Option<String> {
    // A value that is not UTF-8 is passed on lossily rather than treated as unset, so that it
    // fails visibly in validation instead of reporting a set variable as missing.
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

impl FileConfig {
    /// Reads and parses a config file, expanding variables from the process environment.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path, lookup_process_env)
    }

    /// Parses config file text after expanding variables with `lookup`. `file` names the
    /// file in error messages.
    pub fn from_yaml(
        text: &str,
        file: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let expanded = expand_env(text, file, lookup)?;
        let parse_error = |source| ConfigError::Parse {
            file: file.to_owned(),
            source,
        };
        // A file with nothing but comments is an empty config, not an error.
        let value: serde_yaml::Value = serde_yaml::from_str(&expanded).map_err(parse_error)?;
        if value.is_null() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(&expanded).map_err(parse_error)
    }

    /// The archive settings alone, validated (for `raftlite restore --config`).
    pub fn archive_config(&self) -> Result<Option<ArchiveConfig>, ConfigError> {
        let data_dir = match (&self.archive, &self.data_dir) {
            (_, Some(d)) => d.clone(),
            (Some(_), None) => PathBuf::new(),
            (None, None) => {
                return Err(ConfigError::Missing {
                    setting: DATA_DIR.key,
                    flag: DATA_DIR.flag,
                    env: DATA_DIR.env,
                })
            }
        };
        validate_archive(
            &data_dir,
            self.archive.clone(),
            self.archive_endpoint.clone(),
            self.archive_region.clone(),
            self.archive_snapshot_interval_s,
            self.archive_retention_s,
            self.archive_flush_ms,
            self.archive_max_held_entries,
        )
    }

    /// When no `node_id` is given, derives it from the StatefulSet pod this node runs in
    /// (`POD_NAME`, else `HOSTNAME`, else the hostname: ordinal + 1, see [`crate::cluster::pod`]).
    /// A name that is not a StatefulSet pod name is an error that says how to fix it.
    pub fn with_pod_identity(
        mut self,
        env: impl Fn(&str) -> Option<String>,
        kernel_hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Self, ConfigError> {
        use crate::cluster::pod::{pod_identity, StatefulSetPeers};
        if self.node_id.is_some() {
            return Ok(self);
        }
        let identity = pod_identity(env, kernel_hostname).map_err(|problem| {
            invalid(
                &NODE_ID,
                format!(
                    "not set (--node-id, RAFTLITE_NODE_ID or node_id in the config file), and \
                     {problem}"
                ),
            )
        })?;
        if let Some(Ok(statefulset)) = self
            .peers_from_statefulset
            .as_deref()
            .map(StatefulSetPeers::parse)
        {
            statefulset
                .check_member(&identity)
                .map_err(|problem| invalid(&NODE_ID, problem))?;
        }
        self.node_id = Some(identity.node_id());
        self.node_id_source = Some(identity.describe());
        Ok(self)
    }

    /// Applies defaults and checks every setting. Errors name the setting and where to set it.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let node_id = required(self.node_id, &NODE_ID)?;
        if node_id == 0 {
            return Err(invalid(&NODE_ID, "0 is not a node id: ids start at 1"));
        }

        let data_dir = required(self.data_dir, &DATA_DIR)?;
        if data_dir.as_os_str().is_empty() {
            return Err(invalid(&DATA_DIR, "is empty"));
        }

        let listen_text = required(self.listen, &LISTEN)?;
        let listen: SocketAddr = listen_text.trim().parse().map_err(|_| {
            invalid(
                &LISTEN,
                format!(
                    "{listen_text:?} is not HOST:PORT \
                     (an IP address and port to bind, e.g. 0.0.0.0:7000 or [::]:7000)"
                ),
            )
        })?;
        if listen.port() == 0 {
            return Err(invalid(
                &LISTEN,
                format!("{listen_text:?} has port 0: clients need a fixed port to connect to"),
            ));
        }

        let peer_listen = match self.peer_listen {
            Some(text) => {
                let addr: SocketAddr = text.trim().parse().map_err(|_| {
                    invalid(
                        &PEER_LISTEN,
                        format!(
                            "{text:?} is not HOST:PORT \
                             (an IP address and port to bind, e.g. 0.0.0.0:7001 or [::]:7001)"
                        ),
                    )
                })?;
                if addr.port() == 0 {
                    return Err(invalid(
                        &PEER_LISTEN,
                        format!("{text:?} has port 0: peers need a fixed port to connect to"),
                    ));
                }
                addr
            }
            None => {
                let port = listen.port().checked_add(1).ok_or_else(|| {
                    invalid(
                        &PEER_LISTEN,
                        format!(
                            "missing: it defaults to the port of listen ({listen}) + 1, which is \
                             out of range; set {}, {} or peer_listen in the config file",
                            PEER_LISTEN.flag, PEER_LISTEN.env
                        ),
                    )
                })?;
                SocketAddr::new(listen.ip(), port)
            }
        };
        let same_ip = |a: IpAddr, b: IpAddr| a == b || a.is_unspecified() || b.is_unspecified();
        if peer_listen.port() == listen.port() && same_ip(peer_listen.ip(), listen.ip()) {
            return Err(invalid(
                &PEER_LISTEN,
                format!(
                    "{peer_listen} takes the port of listen ({listen}): the peer port must \
                     differ from the client port"
                ),
            ));
        }

        let statefulset = match (self.peers_from_statefulset, self.replicas) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    &REPLICAS,
                    "only applies with peers_from_statefulset (the initial members are pods \
                     0..replicas of that StatefulSet)",
                ))
            }
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    setting: REPLICAS.key,
                    flag: REPLICAS.flag,
                    env: REPLICAS.env,
                })
            }
            (Some(pattern), Some(replicas)) => {
                let statefulset = crate::cluster::pod::StatefulSetPeers::parse(&pattern)
                    .map_err(|problem| invalid(&PEERS_FROM_STATEFULSET, problem))?;
                if replicas == 0 {
                    return Err(invalid(&REPLICAS, "must be at least 1"));
                }
                if self.peers.is_some() {
                    return Err(invalid(
                        &PEERS_FROM_STATEFULSET,
                        "give either peers or peers_from_statefulset, not both",
                    ));
                }
                Some((statefulset, replicas))
            }
        };
        let auto_join = statefulset.is_some();
        let (mut peers, own_addr) = match statefulset {
            // A pod beyond the initial members is not in peers: it joins the running cluster.
            Some((sts, replicas)) => (sts.peers(replicas), Some(sts.node_addr(node_id))),
            None => (self.peers.unwrap_or_default(), None),
        };
        check_peers(&peers)?;
        if !auto_join && !peers.is_empty() && !peers.contains_key(&node_id) {
            let ids: Vec<_> = peers.keys().collect();
            return Err(invalid(
                &PEERS,
                format!(
                    "node {node_id} (this node) is not in peers {ids:?}: peers is the full \
                     initial membership and must include this node (is node_id right?)"
                ),
            ));
        }

        // This node's PEER address: its entry in peers, else (a joining pod) its StatefulSet
        // name. The client address others are told defaults to the same host, listen's port.
        let own_addr = peers.get(&node_id).cloned().or(own_addr);
        let advertise_addr = match (self.advertise_addr, own_addr.as_ref()) {
            (Some(given), _) => {
                let given = given.trim().to_owned();
                check_host_port(&given)
                    .map_err(|e| invalid(&ADVERTISE_ADDR, format!("{given:?} {e}")))?;
                given
            }
            (None, Some(own)) => with_port(own, listen.port()),
            (None, None) if listen.ip().is_unspecified() => {
                return Err(invalid(
                    &ADVERTISE_ADDR,
                    format!(
                        "missing: listen ({listen}) is a wildcard address that clients cannot \
                         connect to; set --advertise-addr, RAFTLITE_ADVERTISE_ADDR or \
                         advertise_addr in the config file, or list this node in peers"
                    ),
                ));
            }
            (None, None) => listen.to_string(),
        };
        let peer_advertise_addr = match own_addr {
            Some(own) => own,
            None if !peer_listen.ip().is_unspecified() => peer_listen.to_string(),
            None => with_port(&advertise_addr, peer_listen.port()),
        };
        if peers.is_empty() {
            peers.insert(node_id, peer_advertise_addr.clone());
        }

        let tls = validate_tls(self.tls_cert, self.tls_key, self.tls_ca)?;
        let auth_file = self.auth_file;
        if auth_file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(invalid(&AUTH_FILE, "is empty"));
        }
        let insecure = self.insecure.unwrap_or(false);

        let max_snapshot_bytes = self
            .max_snapshot_bytes
            .unwrap_or_else(default_max_snapshot_bytes);
        if max_snapshot_bytes < MIN_SNAPSHOT_BYTES {
            return Err(invalid(
                &MAX_SNAPSHOT_BYTES,
                format!("{max_snapshot_bytes} is less than {MIN_SNAPSHOT_BYTES} (1 MiB)"),
            ));
        }

        let metrics_addr = match self.metrics_addr.as_deref().map(str::trim) {
            None => Some(default_metrics_addr()),
            Some("" | "off") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    &METRICS_ADDR,
                    format!("{text:?} is not HOST:PORT (an IP address and port, e.g. 0.0.0.0:9090) or \"off\""),
                )
            })?),
        };

        let heartbeat_ms = self.heartbeat_ms.unwrap_or_else(default_heartbeat_ms);
        if heartbeat_ms == 0 {
            return Err(invalid(&HEARTBEAT_MS, "must be at least 1"));
        }
        let min_ms = self
            .election_timeout_min_ms
            .unwrap_or_else(default_election_timeout_min_ms);
        if min_ms <= heartbeat_ms.saturating_mul(2) {
            return Err(invalid(
                &ELECTION_TIMEOUT_MIN_MS,
                format!(
                    "{min_ms} must be greater than 2 × heartbeat_ms ({heartbeat_ms}), or followers \
                     start elections while the leader is healthy"
                ),
            ));
        }
        let max_ms = self
            .election_timeout_max_ms
            .unwrap_or_else(default_election_timeout_max_ms);
        if max_ms <= min_ms {
            return Err(invalid(
                &ELECTION_TIMEOUT_MAX_MS,
                format!(
                    "{max_ms} must be greater than election_timeout_min_ms ({min_ms}): \
                     randomized timeouts keep nodes from splitting the vote"
                ),
            ));
        }

        let snapshot_every = self.snapshot_every.unwrap_or_else(default_snapshot_every);
        if snapshot_every == 0 {
            return Err(invalid(&SNAPSHOT_EVERY, "must be at least 1"));
        }

        let max_request_bytes = self
            .max_request_bytes
            .unwrap_or_else(default_max_request_bytes);
        if !(MIN_REQUEST_BYTES..=MAX_REQUEST_BYTES).contains(&max_request_bytes) {
            return Err(invalid(
                &MAX_REQUEST_BYTES_SETTING,
                format!(
                    "{max_request_bytes} is outside {MIN_REQUEST_BYTES}..={MAX_REQUEST_BYTES} \
                     (1 KiB to 1 GiB)"
                ),
            ));
        }

        let max_concurrent_requests = self
            .max_concurrent_requests
            .unwrap_or_else(default_max_concurrent_requests);
        if max_concurrent_requests == 0 {
            return Err(invalid(&MAX_CONCURRENT_REQUESTS, "must be at least 1"));
        }
        let max_connections = self.max_connections.unwrap_or_else(default_max_connections);
        if max_connections == 0 {
            return Err(invalid(&MAX_CONNECTIONS, "must be at least 1"));
        }
        let request_timeout_ms = self
            .request_timeout_ms
            .unwrap_or_else(default_request_timeout_ms);
        if request_timeout_ms == 0 {
            return Err(invalid(&REQUEST_TIMEOUT_MS, "must be at least 1"));
        }

        let read_threads = self.read_threads.unwrap_or_else(default_read_threads);
        if read_threads == 0 {
            return Err(invalid(&READ_THREADS, "must be at least 1"));
        }

        let worker_threads = match self.worker_threads.unwrap_or(0) {
            0 => default_worker_threads(),
            n if n > MAX_WORKER_THREADS => {
                return Err(invalid(
                    &WORKER_THREADS,
                    format!("must be at most {MAX_WORKER_THREADS} (0: one per CPU)"),
                ))
            }
            n => n,
        };

        let max_batch_requests = self
            .max_batch_requests
            .unwrap_or_else(default_max_batch_requests);
        if max_batch_requests == 0 {
            return Err(invalid(&MAX_BATCH_REQUESTS, "must be at least 1"));
        }

        let write_pipeline_depth = self
            .write_pipeline_depth
            .unwrap_or_else(default_write_pipeline_depth);
        if !(1..=MAX_WRITE_PIPELINE_DEPTH).contains(&write_pipeline_depth) {
            return Err(invalid(
                &WRITE_PIPELINE_DEPTH,
                format!("must be 1 to {MAX_WRITE_PIPELINE_DEPTH}"),
            ));
        }

        let statement_timeout_ms = self
            .statement_timeout_ms
            .unwrap_or_else(default_statement_timeout_ms);
        if statement_timeout_ms == 0 {
            return Err(invalid(&STATEMENT_TIMEOUT_MS, "must be at least 1"));
        }
        let transaction_idle_timeout_ms = self
            .transaction_idle_timeout_ms
            .unwrap_or_else(default_transaction_idle_timeout_ms);
        if transaction_idle_timeout_ms == 0 {
            return Err(invalid(&TRANSACTION_IDLE_TIMEOUT_MS, "must be at least 1"));
        }
        let transaction_max_ms = self
            .transaction_max_ms
            .unwrap_or_else(default_transaction_max_ms);
        if !(1..=MAX_TRANSACTION_MAX_MS).contains(&transaction_max_ms) {
            return Err(invalid(
                &TRANSACTION_MAX_MS,
                format!(
                    "{transaction_max_ms} is outside 1..={MAX_TRANSACTION_MAX_MS} (a transaction \
                     holds the write lock, and the applier waits at most 30 s for it)"
                ),
            ));
        }
        let max_delta_bytes = self.max_delta_bytes.unwrap_or_else(default_max_delta_bytes);
        let max_delta_limit = crate::peer::PEER_MESSAGE_LIMIT / 2;
        if !((1 << 20)..=max_delta_limit).contains(&max_delta_bytes) {
            return Err(invalid(
                &MAX_DELTA_BYTES,
                format!(
                    "{max_delta_bytes} is outside 1048576..={max_delta_limit} (1 MiB to half a \
                     peer message: every delta must fit the Raft entry a follower accepts)"
                ),
            ));
        }

        let max_value_bytes = self.max_value_bytes.unwrap_or_else(default_max_value_bytes);
        let max_value_limit = crate::db::SQLITE_MAX_LENGTH;
        if !(MIN_VALUE_BYTES..=max_value_limit).contains(&max_value_bytes) {
            return Err(invalid(
                &MAX_VALUE_BYTES,
                format!(
                    "{max_value_bytes} is outside {MIN_VALUE_BYTES}..={max_value_limit} \
                     (1 KiB to SQLite's largest value)"
                ),
            ));
        }

        let archive = validate_archive(
            &data_dir,
            self.archive,
            self.archive_endpoint,
            self.archive_region,
            self.archive_snapshot_interval_s,
            self.archive_retention_s,
            self.archive_flush_ms,
            self.archive_max_held_entries,
        )?;

        let otlp_endpoint = match self.otlp_endpoint.as_deref().map(str::trim) {
            None | Some("" | "off") => None,
            Some(url) => {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                    return Err(invalid(
                        &OTLP_ENDPOINT,
                        format!(
                            "{url:?} is not an http:// or https:// URL of an OTLP/gRPC collector \
                             (e.g. http://otel-collector:4317), or \"off\""
                        ),
                    ));
                }
                Some(url.to_owned())
            }
        };

        let log_level = self
            .log_level
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(default_log_level);
        if log_level.is_empty() {
            return Err(invalid(&LOG_LEVEL, "is empty (use e.g. \"info\")"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(invalid(
                &LOG_LEVEL,
                format!("{log_level:?} is not a log filter ({e})"),
            ));
        }

        // Last, so that a malformed setting is reported as such first.
        check_exposure(
            listen,
            peer_listen,
            tls.is_some(),
            auth_file.is_some(),
            insecure,
        )?;

        Ok(Config {
            node_id,
            data_dir,
            listen,
            peer_listen,
            advertise_addr,
            peer_advertise_addr,
            peers,
            tls: tls.clone(),
            auth_file,
            insecure,
            max_snapshot_bytes,
            auto_join,
            metrics_addr,
            node_id_source: self.node_id_source,
            heartbeat: Duration::from_millis(heartbeat_ms),
            election_timeout_min: Duration::from_millis(min_ms),
            election_timeout_max: Duration::from_millis(max_ms),
            snapshot_every,
            max_request_bytes,
            max_concurrent_requests,
            max_connections,
            request_timeout: Duration::from_millis(request_timeout_ms),
            auto_resync: self
                .auto_resync
                .unwrap_or_else(|| default_auto_resync(tls.is_some())),
            read_threads,
            worker_threads,
            max_batch_requests,
            write_pipeline_depth,
            statement_timeout: Duration::from_millis(statement_timeout_ms),
            transaction_idle_timeout: Duration::from_millis(transaction_idle_timeout_ms),
            transaction_max: Duration::from_millis(transaction_max_ms),
            max_delta_bytes,
            max_value_bytes,
            foreign_keys: self.foreign_keys.unwrap_or_else(default_foreign_keys),
            recursive_triggers: self
                .recursive_triggers
                .unwrap_or_else(default_recursive_triggers),
            archive,
            otlp_endpoint,
            log_format: self.log_format.unwrap_or_default(),
            log_level,
        })
    }
}

/// The archive settings: the URL (default `file://<data_dir>/archive`, `none` turns archiving
/// off), the S3 endpoint and region, and the archiver's timings.
#[allow(clippy::too_many_arguments)]
fn validate_archive(
    data_dir: &Path,
    url: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    snapshot_interval_s: Option<u64>,
    retention_s: Option<u64>,
    flush_ms: Option<u64>,
    max_held_entries: Option<u64>,
) -> Result<Option<ArchiveConfig>, ConfigError> {
    use crate::archive::{ArchiveLocation, ArchiveUrl, ArchiverSettings};
    let url = match url.map(|u| u.trim().to_owned()) {
        Some(u) if u.eq_ignore_ascii_case(ARCHIVE_NONE) => return Ok(None),
        Some(u) if u.is_empty() => {
            return Err(invalid(
                &ARCHIVE,
                "is empty: write s3://BUCKET/PREFIX, file:///DIR or none",
            ))
        }
        Some(u) => ArchiveUrl::parse(&u).map_err(|e| invalid(&ARCHIVE, e))?,
        None => {
            let dir = if data_dir.is_absolute() {
                data_dir.join("archive")
            } else {
                std::env::current_dir()
                    .map(|cwd| cwd.join(data_dir).join("archive"))
                    .map_err(|e| invalid(&ARCHIVE, format!("cannot resolve data_dir: {e}")))?
            };
            ArchiveUrl::File { dir }
        }
    };
    let endpoint = endpoint
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty());
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(invalid(
                &ARCHIVE_ENDPOINT,
                format!("{e:?} is not an http:// or https:// URL"),
            ));
        }
    }
    let region = region
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let snapshot_interval_s =
        snapshot_interval_s.unwrap_or_else(default_archive_snapshot_interval_s);
    if snapshot_interval_s == 0 {
        return Err(invalid(&ARCHIVE_SNAPSHOT_INTERVAL_S, "must be at least 1"));
    }
    let retention_s = retention_s.unwrap_or_else(default_archive_retention_s);
    if retention_s < snapshot_interval_s {
        return Err(invalid(
            &ARCHIVE_RETENTION_S,
            format!(
                "{retention_s} is shorter than archive_snapshot_interval_s                  ({snapshot_interval_s}): no point in time between snapshots could be restored"
            ),
        ));
    }
    let flush_ms = flush_ms.unwrap_or_else(default_archive_flush_ms);
    if flush_ms > 60_000 {
        return Err(invalid(
            &ARCHIVE_FLUSH_MS,
            format!("{flush_ms} is over a minute"),
        ));
    }
    let max_held_entries = max_held_entries.unwrap_or_else(default_archive_max_held_entries);
    if max_held_entries == 0 {
        return Err(invalid(&ARCHIVE_MAX_HELD_ENTRIES, "must be at least 1"));
    }
    Ok(Some(ArchiveConfig {
        location: ArchiveLocation {
            url,
            endpoint,
            region,
        },
        settings: ArchiverSettings {
            snapshot_interval: Duration::from_secs(snapshot_interval_s),
            retention: Duration::from_secs(retention_s),
            flush: Duration::from_millis(flush_ms),
            max_held_entries,
        },
    }))
}

/// TLS takes its three files together: all of them, or none.
fn validate_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    let files = [(&TLS_CERT, cert), (&TLS_KEY, key), (&TLS_CA, ca)];
    for (setting, file) in &files {
        if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(invalid(setting, "is empty"));
        }
    }
    match files {
        [(_, None), (_, None), (_, None)] => Ok(None),
        [(_, Some(cert)), (_, Some(key)), (_, Some(ca))] => Ok(Some(TlsFiles { cert, key, ca })),
        files => {
            let given: Vec<String> = files
                .iter()
                .filter(|(_, file)| file.is_some())
                .map(|(setting, _)| setting.key.to_owned())
                .collect();
            let missing: Vec<&Setting> = files
                .iter()
                .filter(|(_, file)| file.is_none())
                .map(|(setting, _)| *setting)
                .collect();
            let add: Vec<String> = missing
                .iter()
                .map(|s| format!("{} ({}, {})", s.key, s.flag, s.env))
                .collect();
            Err(invalid(
                missing[0],
                format!(
                    "missing: TLS takes tls_cert, tls_key and tls_ca together, and only {} {} \
                     set; also set {}",
                    and_list(&given),
                    if given.len() == 1 { "is" } else { "are" },
                    and_list(&add)
                ),
            ))
        }
    }
}

/// Secure by default: a node that listens beyond loopback needs TLS and client tokens, unless
/// `insecure` says to run without them. The error names exactly what to add.
fn check_exposure(
    listen: SocketAddr,
    peer_listen: SocketAddr,
    tls: bool,
    auth_file: bool,
    insecure: bool,
) -> Result<(), ConfigError> {
    if insecure {
        return Ok(());
    }
    let exposed = [(&LISTEN, listen), (&PEER_LISTEN, peer_listen)]
        .into_iter()
        .find(|(_, addr)| !addr.ip().to_canonical().is_loopback());
    let Some((setting, addr)) = exposed else {
        return Ok(());
    };
    let mut add: Vec<String> = Vec::new();
    if !tls {
        add.extend([TLS_CERT.flag, TLS_KEY.flag, TLS_CA.flag].map(str::to_owned));
    }
    if !auth_file {
        add.push(AUTH_FILE.flag.to_owned());
    }
    if add.is_empty() {
        return Ok(());
    }
    Err(invalid(
        setting,
        format!(
            "{addr} is not a loopback address, so the node needs TLS and client tokens: add {} \
             (or {} to run without {})",
            and_list(&add),
            INSECURE.flag,
            if add.len() == 1 { "it" } else { "them" }
        ),
    ))
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// `addr` (HOST:PORT, checked) with its port replaced.
fn with_port(addr: &str, port: u16) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    format!("{host}:{port}")
}

/// Checks every peer id and address, and that no two peers share an address.
fn check_peers(peers: &BTreeMap<u64, String>) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for (&id, addr) in peers {
        if id == 0 {
            return Err(invalid(&PEERS, "node 0: ids start at 1"));
        }
        check_host_port(addr).map_err(|e| invalid(&PEERS, format!("node {id}: {addr:?} {e}")))?;
        if let Some(other) = seen.insert(addr.to_ascii_lowercase(), id) {
            return Err(invalid(
                &PEERS,
                format!(
                    "nodes {other} and {id} have the same address {addr:?}; each node needs its \
                     own (a pod name or HOSTNAME that is the same on every pod looks like this)"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks an address other nodes connect to: `host:port`, `ip:port` or `[ipv6]:port`, with a
/// non-zero port and a host that is not a wildcard address. Returns what is wrong.
fn check_host_port(addr: &str) -> Result<(), String> {
    const SHAPE: &str =
        "is not HOST:PORT (e.g. raftlite-0.raftlite:7000, 10.0.0.5:7000 or [fd00::5]:7000)";
    if addr.contains("://") {
        return Err("must be HOST:PORT without a scheme such as http://".to_owned());
    }
    let (host, port) = if let Some(bracketed) = addr.strip_prefix('[') {
        let Some((ip, port)) = bracketed.split_once("]:") else {
            return Err(SHAPE.to_owned());
        };
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("has {ip:?} in brackets, which is not an IPv6 address"))?;
        (IpAddr::V6(ip).to_string(), port)
    } else {
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(SHAPE.to_owned());
        };
        if host.contains(':') {
            return Err("is an IPv6 address without brackets: write [ADDRESS]:PORT".to_owned());
        }
        (host.to_owned(), port)
    };
    let valid_host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if host.is_empty() || !host.chars().all(valid_host_char) {
        return Err(SHAPE.to_owned());
    }
    match port.parse::<u16>() {
        Ok(0) => return Err("has port 0".to_owned()),
        Ok(_) => {}
        Err(_) => return Err(SHAPE.to_owned()),
    }
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err("is a wildcard address, which other nodes cannot connect to".to_owned());
    }
    Ok(())
}

fn required<T>(value: Option<T>, setting: &Setting) -> Result<T, ConfigError> {
    value.ok_or(ConfigError::Missing {
        setting: setting.key,
        flag: setting.flag,
        env: setting.env,
    })
}

fn invalid(setting: &Setting, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.key,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use clap::Parser;

    use super::*;

    /// Serializes tests that let clap read the process environment.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse_cli(argv: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("raftlite").chain(argv.iter().copied()))
            .map(|c| c.serve)
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        move |name| vars.get(name).map(|v| (*v).to_owned())
    }

    fn expand(text: &str, vars: &[(&str, &str)]) -> Result<String, ConfigError> {
        expand_env(text, Path::new("test.yaml"), env(vars))
    }

    fn yaml(text: &str, vars: &[(&str, &str)]) -> Result<FileConfig, ConfigError> {
        FileConfig::from_yaml(text, Path::new("test.yaml"), env(vars))
    }

    /// The smallest valid single-node configuration.
    fn minimal() -> FileConfig {
        FileConfig {
            node_id: Some(1),
            data_dir: Some("/data".into()),
            listen: Some("127.0.0.1:7001".into()),
            ..FileConfig::default()
        }
    }

    /// Peer addresses (port 7001, the chart's peer port).
    fn three_peers() -> BTreeMap<u64, String> {
        (1..=3)
            .map(|id| (id, format!("raftlite-{}.raftlite:7001", id - 1)))
            .collect()
    }

    fn expand_problem(result: Result<String, ConfigError>) -> (usize, String, ExpandProblem) {
        match result {
            Err(ConfigError::Expand {
                line, var, problem, ..
            }) => (line, var, problem),
            other => panic!("expected an expansion error, got {other:?}"),
        }
    }

    // ---- expansion ----

    #[test]
    fn expands_set_variables() -> Result<(), ConfigError> {
        let vars = [("POD_NAME", "raftlite-2"), ("NS", "prod")];
        assert_eq!(
            expand("a: ${POD_NAME}.x.${NS}:7000\n", &vars)?,
            "a: raftlite-2.x.prod:7000\n"
        );
        assert_eq!(expand("${POD_NAME}${NS}", &vars)?, "raftlite-2prod");
        Ok(())
    }

    #[test]
    fn default_applies_when_unset_or_empty() -> Result<(), ConfigError> {
        assert_eq!(expand("${A:-x}", &[])?, "x");
        assert_eq!(expand("${A:-x}", &[("A", "")])?, "x");
        assert_eq!(expand("${A:-x}", &[("A", "set")])?, "set");
        assert_eq!(expand("${A:-a b:c}", &[])?, "a b:c");
        assert_eq!(expand("${A:-}", &[])?, "");
        assert_eq!(expand("k: '${A:-}'", &[])?, "k: ''");
        Ok(())
    }

    #[test]
    fn set_but_empty_variable_without_default_is_empty() -> Result<(), ConfigError> {
        assert_eq!(expand("k: '${A}'", &[("A", "")])?, "k: ''");
        Ok(())
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() -> Result<(), ConfigError> {
        assert_eq!(expand("$$", &[])?, "$");
        assert_eq!(expand("$${A}", &[])?, "${A}");
        assert_eq!(expand("$$$${A}", &[("A", "v")])?, "$${A}");
        assert_eq!(expand("$$${A}", &[("A", "v")])?, "$v");
        assert_eq!(expand("$$HOME", &[])?, "$HOME");
        Ok(())
    }

    #[test]
    fn lone_dollar_not_before_a_name_is_literal() -> Result<(), ConfigError> {
        assert_eq!(expand("costs $5 or $ 6 $", &[])?, "costs $5 or $ 6 $");
        assert_eq!(expand("a$\nb", &[])?, "a$\nb");
        Ok(())
    }

    #[test]
    fn text_without_dollars_is_unchanged() -> Result<(), ConfigError> {
        let text = "a: 1\r\nb: [x, y]\n\n# c\nd: \"é\"";
        assert_eq!(expand(text, &[])?, text);
        Ok(())
    }

    #[test]
    fn unset_variable_without_default_is_an_error_naming_variable_and_line() {
        let text = "a: 1\nb: 2\nadvertise_addr: \"${POD_NAME}.raftlite:7000\"\n";
        let err = expand(text, &[]).expect_err("unset variable must fail");
        let message = err.to_string();
        let (line, var, problem) = expand_problem(Err(err));
        assert_eq!(
            (line, var.as_str(), problem),
            (3, "POD_NAME", ExpandProblem::Unset)
        );
        assert!(message.starts_with("test.yaml:3: "), "{message}");
        assert!(message.contains("POD_NAME is not set"), "{message}");
        assert!(message.contains("${POD_NAME:-}"), "{message}");
    }

    #[test]
    fn line_numbers_count_crlf_lines() {
        let (line, var, _) = expand_problem(expand("a: 1\r\nb: 2\r\nc: ${X}\r\n", &[]));
        assert_eq!((line, var.as_str()), (3, "X"));
    }

    #[test]
    fn malformed_expansions_are_errors() {
        let cases = [
            ("k: ${A", ExpandProblem::Unterminated, "${A"),
            ("k: ${A\n}", ExpandProblem::Unterminated, "${A"),
            ("k: ${}", ExpandProblem::Unsupported, "${}"),
            ("k: ${1A}", ExpandProblem::Unsupported, "${1A}"),
            ("k: ${A-x}", ExpandProblem::Unsupported, "${A-x}"),
            ("k: ${A:=x}", ExpandProblem::Unsupported, "${A:=x}"),
            ("k: ${A:?x}", ExpandProblem::Unsupported, "${A:?x}"),
            ("k: ${ A }", ExpandProblem::Unsupported, "${ A }"),
            ("k: $HOME/x", ExpandProblem::BareName, "HOME"),
            ("k: pa$_x", ExpandProblem::BareName, "_x"),
        ];
        for (text, expected, snippet) in cases {
            let (line, var, problem) = expand_problem(expand(text, &[("A", "v"), ("HOME", "/h")]));
            assert_eq!(
                (line, problem, var.as_str()),
                (1, expected, snippet),
                "{text}"
            );
        }
    }

    #[test]
    fn error_messages_suggest_the_fix() {
        let message = |text| expand(text, &[]).map(|_| ()).expect_err(text).to_string();
        assert!(message("k: $HOME").contains("write ${HOME}"));
        assert!(message("k: ${A-x}").contains("${VAR:-default}"));
        assert!(message("k: ${A").contains("no closing `}`"));
    }

    #[test]
    fn values_with_line_breaks_are_refused() {
        let (line, var, problem) = expand_problem(expand("\nk: ${A}", &[("A", "x\ny: 1")]));
        assert_eq!(
            (line, var.as_str(), problem),
            (2, "A", ExpandProblem::Multiline)
        );
    }

    #[test]
    fn full_line_comments_are_not_expanded_but_trailing_ones_are() -> Result<(), ConfigError> {
        assert_eq!(
            expand("# ${UNSET} $HOME\n  # ${X}\n", &[])?,
            "# ${UNSET} $HOME\n  # ${X}\n"
        );
        assert_eq!(expand("k: 1 # ${A}", &[("A", "v")])?, "k: 1 # v");
        Ok(())
    }

    #[test]
    fn expansion_works_in_numbers_booleans_and_keys() -> Result<(), ConfigError> {
        let file = yaml(
            "node_id: ${ID}\nauto_resync: ${RESYNC:-false}\npeers:\n  ${ID}: \"${HOST}:7000\"\n",
            &[("ID", "2"), ("HOST", "raftlite-1")],
        )?;
        assert_eq!(file.node_id, Some(2));
        assert_eq!(file.auto_resync, Some(false));
        assert_eq!(
            file.peers,
            Some(BTreeMap::from([(2, "raftlite-1:7000".to_owned())]))
        );
        Ok(())
    }

    // ---- peers ----

    #[test]
    fn peers_from_str_parses_entries() -> Result<(), ConfigError> {
        let expected = BTreeMap::from([(1, "a:7000".to_owned()), (2, "[::1]:7000".to_owned())]);
        assert_eq!(peers_from_str("1=a:7000,2=[::1]:7000")?, expected);
        assert_eq!(peers_from_str(" 1 = a:7000 , 2=[::1]:7000, ")?, expected);
        assert_eq!(peers_from_str("")?, BTreeMap::new());
        Ok(())
    }

    #[test]
    fn peers_from_str_rejects_malformed_entries() {
        for (text, fragment) in [
            ("1:a:7000", "is not ID=HOST:PORT"),
            ("x=a:7000", "is not a node id"),
            ("-1=a:7000", "is not a node id"),
            ("1=a:7000,1=b:7000", "node 1 is listed twice"),
        ] {
            let err = peers_from_str(text).expect_err(text);
            assert_eq!(err.setting(), Some("peers"), "{text}");
            assert!(err.to_string().contains(fragment), "{text}: {err}");
        }
    }

    #[test]
    fn peers_map_list_and_string_syntaxes_agree() -> Result<(), ConfigError> {
        let expected = Some(BTreeMap::from([
            (1, "a:7000".to_owned()),
            (2, "b:7000".to_owned()),
        ]));
        let map = yaml("peers:\n  1: a:7000\n  2: \"b:7000\"\n", &[])?;
        let flow_map = yaml("peers: {1: a:7000, 2: b:7000}", &[])?;
        let list = yaml("peers:\n  - 1=a:7000\n  - \"2=b:7000\"\n", &[])?;
        let string = yaml("peers: ${PEERS}", &[("PEERS", "1=a:7000,2=b:7000")])?;
        for file in [map, flow_map, list, string] {
            assert_eq!(file.peers, expected);
        }
        assert_eq!(yaml("peers:\n", &[])?.peers, None);
        Ok(())
    }

    #[test]
    fn peers_yaml_rejects_duplicates_and_wrong_shapes() {
        for (text, fragment) in [
            ("peers: [\"1=a:1\", \"1=b:1\"]", "node 1 is listed twice"),
            ("peers: [\"a:1\"]", "is not ID=HOST:PORT"),
            ("peers: 7", "peers as a map"),
            ("peers: {x: a:1}", "invalid"),
        ] {
            let err = yaml(text, &[]).expect_err(text);
            assert!(matches!(err, ConfigError::Parse { .. }), "{text}: {err:?}");
            assert!(err.to_string().contains(fragment), "{text}: {err}");
        }
    }

    #[test]
    fn peers_flag_is_parsed_by_clap() -> Result<(), clap::Error> {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let args = parse_cli(&["--peers", "1=a:7000,2=b:7000"])?;
        assert_eq!(args.peers.map(|p| p.len()), Some(2));
        let err = parse_cli(&["--peers", "1=a:7000,1=b:7000"]).expect_err("duplicate id");
        assert!(err.to_string().contains("--peers"), "{err}");
        Ok(())
    }

    // ---- file parsing ----

    #[test]
    fn empty_or_comment_only_file_is_an_empty_config() -> Result<(), ConfigError> {
        assert_eq!(yaml("", &[])?, FileConfig::default());
        assert_eq!(yaml("# nothing here\n\n", &[])?, FileConfig::default());
        Ok(())
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let err = yaml("node_id: 1\nheartbeat: 100\n", &[]).expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("unknown field `heartbeat`"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.starts_with("test.yaml: "), "{message}");
    }

    #[test]
    fn wrong_types_are_parse_errors() {
        let err = yaml("node_id: one\n", &[]).expect_err("not a number");
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        let err = yaml("log_format: xml\n", &[]).expect_err("unknown format");
        assert!(err.to_string().contains("xml"), "{err}");
    }

    // ---- precedence ----

    #[test]
    fn defaults_fill_in_what_nothing_sets() -> Result<(), ConfigError> {
        let config = minimal().validate()?;
        assert_eq!(
            config.heartbeat,
            Duration::from_millis(default_heartbeat_ms())
        );
        assert_eq!(config.election_timeout_min, Duration::from_millis(300));
        assert_eq!(config.worker_threads, default_worker_threads());
        assert!(config.worker_threads >= 1);
        assert_eq!(config.election_timeout_max, Duration::from_millis(600));
        assert_eq!(config.snapshot_every, 10_000);
        assert_eq!(config.max_request_bytes, 16 * 1024 * 1024);
        assert_eq!(config.max_concurrent_requests, 1024);
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.otlp_endpoint, None);
        assert!(!config.auto_resync, "off without TLS");
        assert_eq!(config.max_snapshot_bytes, 1 << 30);
        assert_eq!(
            (config.tls, config.auth_file, config.insecure),
            (None, None, false)
        );
        assert_eq!(config.read_threads, 4);
        assert_eq!(config.max_batch_requests, 1024);
        assert_eq!(config.max_value_bytes, 64 << 20);
        assert!(
            config.foreign_keys,
            "on, as raftlite's SQLite always had it"
        );
        assert!(!config.recursive_triggers);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_level, "info");
        Ok(())
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() -> Result<(), ConfigError> {
        let file = yaml(
            "node_id: 1\ndata_dir: /file\nlisten: 127.0.0.1:7001\nheartbeat_ms: 50\n\
             read_threads: 8\nlog_format: json\nauto_resync: false\n",
            &[],
        )?;
        let args = ServeArgs {
            data_dir: Some("/flag".into()),
            read_threads: Some(2),
            ..ServeArgs::default()
        };
        let config = file.overlay(&args).validate()?;
        assert_eq!(config.data_dir, PathBuf::from("/flag"));
        assert_eq!(config.read_threads, 2);
        assert_eq!(config.heartbeat, Duration::from_millis(50));
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(!config.auto_resync);
        assert_eq!(config.snapshot_every, default_snapshot_every());
        Ok(())
    }

    #[test]
    fn flag_beats_env_var_beats_file() -> Result<(), Box<dyn std::error::Error>> {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let vars = [
            ("RAFTLITE_HEARTBEAT_MS", "70"),
            ("RAFTLITE_READ_THREADS", "6"),
            ("RAFTLITE_AUTO_RESYNC", "no"),
            ("RAFTLITE_LOG", "debug"),
        ];
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let parsed = parse_cli(&["--read-threads", "3"]);
        for (name, _) in vars {
            std::env::remove_var(name);
        }
        let args = parsed?;
        assert_eq!(args.read_threads, Some(3), "flag wins over env");
        assert_eq!(args.heartbeat_ms, Some(70), "env is read");
        assert_eq!(args.auto_resync, Some(false), "boolish env value");
        assert_eq!(args.log_level.as_deref(), Some("debug"));

        let file = yaml(
            "node_id: 1\ndata_dir: /d\nlisten: 127.0.0.1:7001\n\
             heartbeat_ms: 90\nread_threads: 9\nsnapshot_every: 5\nlog_level: warn\n",
            &[],
        )?;
        let config = file.overlay(&args).validate()?;
        assert_eq!(config.read_threads, 3, "flag > file");
        assert_eq!(config.heartbeat, Duration::from_millis(70), "env > file");
        assert_eq!(config.log_level, "debug", "env > file");
        assert_eq!(config.snapshot_every, 5, "file > default");
        assert!(!config.auto_resync);
        Ok(())
    }

    #[test]
    fn every_flag_has_an_env_var_and_the_cli_is_well_formed() {
        use clap::CommandFactory;
        let command = Cli::command();
        command.clone().debug_assert();
        for arg in command.get_arguments().filter(|a| a.get_long().is_some()) {
            if arg.get_id() == "help" {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.as_deref().is_some_and(|e| e.starts_with("RAFTLITE_")),
                "--{:?} has no RAFTLITE_ env var",
                arg.get_long()
            );
        }
    }

    #[test]
    fn each_flag_is_its_file_key_in_kebab_case() {
        // The settings! list spells the flag and the field (the file key) separately.
        use clap::CommandFactory;
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()), "{id}");
        }
    }

    #[test]
    fn flags_parse_into_serve_args() -> Result<(), clap::Error> {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let args = parse_cli(&[
            "--config",
            "/etc/raftlite.yaml",
            "--node-id",
            "2",
            "--data-dir",
            "/d",
            "--listen",
            "0.0.0.0:7000",
            "--advertise-addr",
            "b:7000",
            "--heartbeat-ms",
            "50",
            "--election-timeout-min-ms",
            "150",
            "--election-timeout-max-ms",
            "300",
            "--snapshot-every",
            "7",
            "--max-request-bytes",
            "4096",
            "--auto-resync",
            "false",
            "--read-threads",
            "2",
            "--max-batch-requests",
            "64",
            "--max-value-bytes",
            "1048576",
            "--foreign-keys",
            "false",
            "--recursive-triggers",
            "on",
            "--log-format",
            "json",
            "--log-level",
            "warn",
        ])?;
        assert_eq!(args.config, Some(PathBuf::from("/etc/raftlite.yaml")));
        assert_eq!(args.node_id, Some(2));
        assert_eq!(args.listen.as_deref(), Some("0.0.0.0:7000"));
        assert_eq!(args.auto_resync, Some(false));
        assert_eq!(args.log_format, Some(LogFormat::Json));
        assert_eq!(args.max_batch_requests, Some(64));
        assert_eq!(args.max_value_bytes, Some(1 << 20));
        assert_eq!(
            (args.foreign_keys, args.recursive_triggers),
            (Some(false), Some(true))
        );
        assert_eq!(
            parse_cli(&[])?,
            ServeArgs::default(),
            "nothing given stays None"
        );
        Ok(())
    }

    // ---- validation ----

    #[test]
    fn single_node_without_peers_lists_itself() -> Result<(), ConfigError> {
        let config = minimal().validate()?;
        assert_eq!(config.advertise_addr, "127.0.0.1:7001");
        assert_eq!(config.peer_listen, SocketAddr::from(([127, 0, 0, 1], 7002)));
        assert_eq!(config.peer_advertise_addr, "127.0.0.1:7002");
        assert_eq!(
            config.peers,
            BTreeMap::from([(1, "127.0.0.1:7002".to_owned())]),
            "peers are peer addresses"
        );
        Ok(())
    }

    #[test]
    fn advertise_addr_comes_from_flag_then_peers_then_listen() -> Result<(), ConfigError> {
        let wildcard = FileConfig {
            listen: Some("0.0.0.0:7000".into()),
            insecure: Some(true),
            ..minimal()
        };
        // The client address: the host of this node's peer address, listen's port.
        let from_peers = FileConfig {
            peers: Some(three_peers()),
            ..wildcard.clone()
        }
        .validate()?;
        assert_eq!(from_peers.advertise_addr, "raftlite-0.raftlite:7000");
        assert_eq!(from_peers.peer_advertise_addr, "raftlite-0.raftlite:7001");
        assert_eq!(from_peers.peers, three_peers());

        // Without peers, the peer address is the advertised host with peer_listen's port.
        let given = FileConfig {
            advertise_addr: Some("raftlite-0.raftlite:7000".into()),
            ..wildcard.clone()
        }
        .validate()?;
        assert_eq!(given.advertise_addr, "raftlite-0.raftlite:7000");
        assert_eq!(given.peer_advertise_addr, "raftlite-0.raftlite:7001");
        assert_eq!(
            given.peers,
            BTreeMap::from([(1, "raftlite-0.raftlite:7001".to_owned())])
        );

        // A client address need not match the peer address (a load balancer, another name).
        let different = FileConfig {
            advertise_addr: Some("db.example.com:443".into()),
            peers: Some(three_peers()),
            ..wildcard.clone()
        }
        .validate()?;
        assert_eq!(different.advertise_addr, "db.example.com:443");
        assert_eq!(different.peer_advertise_addr, "raftlite-0.raftlite:7001");

        let ipv6 = FileConfig {
            listen: Some("[::1]:7000".into()),
            ..minimal()
        }
        .validate()?;
        assert_eq!(ipv6.advertise_addr, "[::1]:7000");
        assert_eq!(ipv6.peer_advertise_addr, "[::1]:7001");
        let ipv6_peers = FileConfig {
            listen: Some("[::]:7000".into()),
            peers: Some(BTreeMap::from([(1, "[fd00::1]:7001".to_owned())])),
            ..wildcard.clone()
        }
        .validate()?;
        assert_eq!(ipv6_peers.advertise_addr, "[fd00::1]:7000");
        Ok(())
    }

    #[test]
    fn every_validation_error_names_its_setting() {
        let wildcard = FileConfig {
            listen: Some("0.0.0.0:7000".into()),
            ..minimal()
        };
        let with_peers = FileConfig {
            peers: Some(three_peers()),
            ..minimal()
        };
        let peers = |pairs: &[(u64, &str)]| FileConfig {
            peers: Some(pairs.iter().map(|(id, a)| (*id, (*a).to_owned())).collect()),
            ..minimal()
        };
        let cases: Vec<(FileConfig, &str, &str)> =
            vec![
            (
                FileConfig { node_id: None, ..minimal() },
                "node_id",
                "node_id: missing (set --node-id, RAFTLITE_NODE_ID or node_id in the config file)",
            ),
            (FileConfig { node_id: Some(0), ..minimal() }, "node_id", "ids start at 1"),
            (
                FileConfig { data_dir: None, ..minimal() },
                "data_dir",
                "data_dir: missing (set --data-dir, RAFTLITE_DATA_DIR",
            ),
            (FileConfig { data_dir: Some("".into()), ..minimal() }, "data_dir", "is empty"),
            (
                FileConfig { max_connections: Some(0), ..minimal() },
                "max_connections",
                "max_connections: must be at least 1",
            ),
            (
                FileConfig { max_concurrent_requests: Some(0), ..minimal() },
                "max_concurrent_requests",
                "max_concurrent_requests: must be at least 1",
            ),
            (
                FileConfig { request_timeout_ms: Some(0), ..minimal() },
                "request_timeout_ms",
                "request_timeout_ms: must be at least 1",
            ),
            (
                FileConfig { otlp_endpoint: Some("collector:4317".into()), ..minimal() },
                "otlp_endpoint",
                "otlp_endpoint: \"collector:4317\" is not an http:// or https:// URL",
            ),
            (
                FileConfig { listen: None, ..minimal() },
                "listen",
                "listen: missing (set --listen, RAFTLITE_LISTEN",
            ),
            (
                FileConfig { listen: Some("abc".into()), ..minimal() },
                "listen",
                "listen: \"abc\" is not HOST:PORT",
            ),
            (
                FileConfig { listen: Some("raftlite-0:7000".into()), ..minimal() },
                "listen",
                "is not HOST:PORT",
            ),
            (FileConfig { listen: Some("127.0.0.1:0".into()), ..minimal() }, "listen", "port 0"),
            (wildcard.clone(), "advertise_addr", "advertise_addr: missing: listen (0.0.0.0:7000)"),
            (
                FileConfig { advertise_addr: Some("0.0.0.0:7000".into()), ..wildcard.clone() },
                "advertise_addr",
                "wildcard address",
            ),
            (
                FileConfig { advertise_addr: Some("http://a:7000".into()), ..minimal() },
                "advertise_addr",
                "without a scheme",
            ),
            (
                FileConfig { advertise_addr: Some("a".into()), ..minimal() },
                "advertise_addr",
                "advertise_addr: \"a\" is not HOST:PORT",
            ),
            (
                FileConfig { node_id: Some(4), ..with_peers.clone() },
                "peers",
                "peers: node 4 (this node) is not in peers [1, 2, 3]",
            ),
            (peers(&[(0, "a:1"), (1, "b:1")]), "peers", "node 0"),
            (peers(&[(1, "a:1"), (2, "b")]), "peers", "node 2: \"b\" is not HOST:PORT"),
            (peers(&[(1, "a:1"), (2, "b:99999")]), "peers", "node 2: \"b:99999\""),
            (peers(&[(1, "a:1"), (2, "::1:7000")]), "peers", "without brackets"),
            (peers(&[(1, "a:1"), (2, "[zz]:7000")]), "peers", "not an IPv6 address"),
            (peers(&[(1, "a:1"), (2, "[::]:7000")]), "peers", "wildcard address"),
            (peers(&[(1, "a b:1"), (2, "b:1")]), "peers", "node 1: \"a b:1\""),
            (peers(&[(1, "a:1"), (2, "A:1")]), "peers", "nodes 1 and 2 have the same address"),
            (FileConfig { heartbeat_ms: Some(0), ..minimal() }, "heartbeat_ms", "at least 1"),
            (
                FileConfig {
                    heartbeat_ms: Some(100),
                    election_timeout_min_ms: Some(50),
                    ..minimal()
                },
                "election_timeout_min_ms",
                "election_timeout_min_ms: 50 must be greater than 2 × heartbeat_ms (100)",
            ),
            (
                FileConfig { election_timeout_min_ms: Some(200), ..minimal() },
                "election_timeout_min_ms",
                "200 must be greater than 2 × heartbeat_ms (100)",
            ),
            (
                FileConfig { election_timeout_max_ms: Some(300), ..minimal() },
                "election_timeout_max_ms",
                "300 must be greater than election_timeout_min_ms (300)",
            ),
            (FileConfig { snapshot_every: Some(0), ..minimal() }, "snapshot_every", "at least 1"),
            (
                FileConfig { max_request_bytes: Some(10), ..minimal() },
                "max_request_bytes",
                "10 is outside",
            ),
            (
                FileConfig { max_request_bytes: Some(2 << 30), ..minimal() },
                "max_request_bytes",
                "is outside",
            ),
            (FileConfig { read_threads: Some(0), ..minimal() }, "read_threads", "at least 1"),
            (
                FileConfig { worker_threads: Some(1025), ..minimal() },
                "worker_threads",
                "at most 1024",
            ),
            (
                FileConfig { write_pipeline_depth: Some(0), ..minimal() },
                "write_pipeline_depth",
                "1 to 8",
            ),
            (
                FileConfig { write_pipeline_depth: Some(9), ..minimal() },
                "write_pipeline_depth",
                "1 to 8",
            ),
            (
                FileConfig { max_value_bytes: Some(1023), ..minimal() },
                "max_value_bytes",
                "1023 is outside 1024..=1000000000",
            ),
            (
                FileConfig { max_value_bytes: Some(1_000_000_001), ..minimal() },
                "max_value_bytes",
                "is outside",
            ),
            (
                FileConfig { max_batch_requests: Some(0), ..minimal() },
                "max_batch_requests",
                "at least 1",
            ),
            (FileConfig { log_level: Some(" ".into()), ..minimal() }, "log_level", "is empty"),
            (
                FileConfig { replicas: Some(3), ..minimal() },
                "replicas",
                "only applies with peers_from_statefulset",
            ),
            (
                FileConfig { peers_from_statefulset: Some("a.b:1".into()), ..minimal() },
                "replicas",
                "replicas: missing (set --replicas, RAFTLITE_REPLICAS",
            ),
            (
                FileConfig {
                    peers_from_statefulset: Some("a.b:1".into()),
                    replicas: Some(0),
                    ..minimal()
                },
                "replicas",
                "at least 1",
            ),
            (
                FileConfig {
                    peers_from_statefulset: Some("a:1".into()),
                    replicas: Some(3),
                    ..minimal()
                },
                "peers_from_statefulset",
                "is not NAME.SERVICE",
            ),
            (
                FileConfig {
                    peers_from_statefulset: Some("a.b:1".into()),
                    replicas: Some(3),
                    ..with_peers.clone()
                },
                "peers_from_statefulset",
                "not both",
            ),
            (
                FileConfig { metrics_addr: Some("localhost:9090".into()), ..minimal() },
                "metrics_addr",
                "is not HOST:PORT",
            ),
            (
                FileConfig { log_level: Some("info,[".into()), ..minimal() },
                "log_level",
                "is not a log filter",
            ),
        ];
        for (file, setting, fragment) in cases {
            let description = format!("{file:?}");
            let err = file.validate().expect_err(&description);
            let message = err.to_string();
            assert_eq!(err.setting(), Some(setting), "{message}");
            assert!(message.starts_with(&format!("{setting}: ")), "{message}");
            assert!(
                message.contains(fragment),
                "expected {fragment:?} in {message:?}"
            );
        }
    }

    #[test]
    fn node_id_from_the_pod_only_when_not_given() -> Result<(), ConfigError> {
        let pod = [("POD_NAME", "raftlite-1")];
        let given = minimal().with_pod_identity(env(&pod), || None)?;
        assert_eq!((given.node_id, given.node_id_source), (Some(1), None));

        let derived = FileConfig {
            node_id: None,
            ..minimal()
        }
        .with_pod_identity(env(&pod), || None)?;
        assert_eq!(derived.node_id, Some(2));

        let err = FileConfig {
            node_id: None,
            ..minimal()
        }
        .with_pod_identity(env(&[("HOSTNAME", "0.0.0.0")]), || None)
        .expect_err("HOSTNAME=0.0.0.0");
        assert_eq!(err.setting(), Some("node_id"));
        let message = err.to_string();
        assert!(
            message.starts_with("node_id: not set (--node-id"),
            "{message}"
        );
        assert!(message.contains("is an IP address"), "{message}");

        let err = FileConfig {
            node_id: None,
            peers_from_statefulset: Some("raftlite.raftlite:7000".into()),
            replicas: Some(3),
            ..minimal()
        }
        .with_pod_identity(env(&[("POD_NAME", "myapp-0")]), || None)
        .expect_err("pod of another statefulset");
        assert!(err.to_string().contains("StatefulSet \"myapp\""), "{err}");
        Ok(())
    }

    #[test]
    fn peers_from_statefulset_and_joining_pods() -> Result<(), ConfigError> {
        // The pattern's port is the PEER port; clients use listen's port on the same host.
        let sts = |node_id| FileConfig {
            node_id: Some(node_id),
            listen: Some("0.0.0.0:7000".into()),
            insecure: Some(true),
            peers_from_statefulset: Some("raftlite.raftlite.ns.svc.cluster.local:7001".into()),
            replicas: Some(3),
            ..minimal()
        };
        let first = sts(1).validate()?;
        assert_eq!(first.peers.len(), 3);
        assert_eq!(
            first.advertise_addr,
            "raftlite-0.raftlite.ns.svc.cluster.local:7000"
        );
        assert_eq!(
            first.peer_advertise_addr,
            "raftlite-0.raftlite.ns.svc.cluster.local:7001"
        );
        assert!(first.auto_join);
        let joining = sts(4).validate()?;
        assert!(!joining.peers.contains_key(&4));
        assert_eq!(
            joining.advertise_addr,
            "raftlite-3.raftlite.ns.svc.cluster.local:7000"
        );
        assert_eq!(
            joining.peer_advertise_addr,
            "raftlite-3.raftlite.ns.svc.cluster.local:7001"
        );
        Ok(())
    }

    // ---- security settings ----

    /// TLS files and a tokens file: what a node on a non-loopback address needs.
    fn secured(file: FileConfig) -> FileConfig {
        FileConfig {
            tls_cert: Some("/tls/node.crt".into()),
            tls_key: Some("/tls/node.key".into()),
            tls_ca: Some("/tls/ca.crt".into()),
            auth_file: Some("/auth/auth.yaml".into()),
            ..file
        }
    }

    #[test]
    fn peer_listen_defaults_to_the_next_port_of_listen() -> Result<(), ConfigError> {
        let wildcard = FileConfig {
            listen: Some("0.0.0.0:7000".into()),
            advertise_addr: Some("a:7000".into()),
            insecure: Some(true),
            ..minimal()
        };
        let derived = wildcard.clone().validate()?;
        assert_eq!(derived.peer_listen, SocketAddr::from(([0, 0, 0, 0], 7001)));
        let explicit = FileConfig {
            peer_listen: Some(" 10.0.0.5:9000 ".into()),
            ..wildcard
        }
        .validate()?;
        assert_eq!(
            explicit.peer_listen,
            SocketAddr::from(([10, 0, 0, 5], 9000))
        );
        assert_eq!(explicit.peer_advertise_addr, "10.0.0.5:9000");
        Ok(())
    }

    #[test]
    fn security_setting_errors_name_their_setting() {
        let exposed = FileConfig {
            listen: Some("0.0.0.0:7000".into()),
            advertise_addr: Some("a:7000".into()),
            ..minimal()
        };
        let cases: Vec<(FileConfig, &str, &str)> =
            vec![
            (
                FileConfig { listen: Some("127.0.0.1:65535".into()), ..minimal() },
                "peer_listen",
                "peer_listen: missing: it defaults to the port of listen (127.0.0.1:65535) + 1, \
                 which is out of range; set --peer-listen, RAFTLITE_PEER_LISTEN",
            ),
            (
                FileConfig { peer_listen: Some("127.0.0.1:7001".into()), ..minimal() },
                "peer_listen",
                "peer_listen: 127.0.0.1:7001 takes the port of listen (127.0.0.1:7001)",
            ),
            (
                FileConfig { peer_listen: Some("0.0.0.0:7001".into()), ..minimal() },
                "peer_listen",
                "takes the port of listen",
            ),
            (
                FileConfig { peer_listen: Some("127.0.0.1:0".into()), ..minimal() },
                "peer_listen",
                "port 0",
            ),
            (
                FileConfig { peer_listen: Some("localhost:7002".into()), ..minimal() },
                "peer_listen",
                "peer_listen: \"localhost:7002\" is not HOST:PORT",
            ),
            (
                FileConfig { tls_cert: Some("/c".into()), ..minimal() },
                "tls_key",
                "tls_key: missing: TLS takes tls_cert, tls_key and tls_ca together, and only \
                 tls_cert is set; also set tls_key (--tls-key, RAFTLITE_TLS_KEY) and tls_ca \
                 (--tls-ca, RAFTLITE_TLS_CA)",
            ),
            (
                FileConfig { tls_key: Some("/k".into()), tls_ca: Some("/ca".into()), ..minimal() },
                "tls_cert",
                "and only tls_key and tls_ca are set; also set tls_cert (--tls-cert, \
                 RAFTLITE_TLS_CERT)",
            ),
            (
                FileConfig {
                    tls_cert: Some("/c".into()),
                    tls_key: Some("/k".into()),
                    ..minimal()
                },
                "tls_ca",
                "also set tls_ca (--tls-ca, RAFTLITE_TLS_CA)",
            ),
            (
                FileConfig { tls_key: Some("".into()), ..secured(minimal()) },
                "tls_key",
                "tls_key: is empty",
            ),
            (
                FileConfig { auth_file: Some("".into()), ..secured(minimal()) },
                "auth_file",
                "auth_file: is empty",
            ),
            (
                FileConfig { max_snapshot_bytes: Some((1 << 20) - 1), ..minimal() },
                "max_snapshot_bytes",
                "max_snapshot_bytes: 1048575 is less than 1048576 (1 MiB)",
            ),
            (
                exposed.clone(),
                "listen",
                "listen: 0.0.0.0:7000 is not a loopback address, so the node needs TLS and \
                 client tokens: add --tls-cert, --tls-key, --tls-ca and --auth-file \
                 (or --insecure to run without them)",
            ),
            (
                FileConfig { auth_file: None, ..secured(exposed.clone()) },
                "listen",
                "add --auth-file (or --insecure to run without it)",
            ),
            (
                FileConfig { auth_file: Some("/auth.yaml".into()), ..exposed.clone() },
                "listen",
                "add --tls-cert, --tls-key and --tls-ca (or --insecure to run without them)",
            ),
            (
                FileConfig { peer_listen: Some("0.0.0.0:7002".into()), ..minimal() },
                "peer_listen",
                "peer_listen: 0.0.0.0:7002 is not a loopback address",
            ),
            (
                FileConfig { insecure: Some(false), ..exposed.clone() },
                "listen",
                "is not a loopback address",
            ),
        ];
        for (file, setting, fragment) in cases {
            let description = format!("{file:?}");
            let err = file.validate().expect_err(&description);
            let message = err.to_string();
            assert_eq!(err.setting(), Some(setting), "{message}");
            assert!(message.starts_with(&format!("{setting}: ")), "{message}");
            assert!(
                message.contains(fragment),
                "expected {fragment:?} in {message:?}"
            );
        }
    }

    #[test]
    fn non_loopback_nodes_start_with_tls_and_tokens_or_insecure() -> Result<(), ConfigError> {
        let exposed = FileConfig {
            listen: Some("0.0.0.0:7000".into()),
            peers: Some(three_peers()),
            ..minimal()
        };
        let config = secured(exposed.clone()).validate()?;
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: "/tls/node.crt".into(),
                key: "/tls/node.key".into(),
                ca: "/tls/ca.crt".into(),
            })
        );
        assert_eq!(
            config.auth_file.as_deref(),
            Some(Path::new("/auth/auth.yaml"))
        );
        assert!(!config.insecure);

        let insecure = FileConfig {
            insecure: Some(true),
            ..exposed
        }
        .validate()?;
        assert!(insecure.insecure);
        assert_eq!((insecure.tls, insecure.auth_file), (None, None));

        // Loopback, IPv4 or IPv6, needs neither.
        for listen in ["127.0.0.1:7000", "127.1.2.3:7000", "[::1]:7000"] {
            let local = FileConfig {
                listen: Some(listen.into()),
                ..minimal()
            }
            .validate()?;
            assert_eq!((local.tls, local.insecure), (None, false), "{listen}");
        }
        Ok(())
    }

    #[test]
    fn auto_resync_defaults_to_on_only_with_tls() -> Result<(), ConfigError> {
        let tls = FileConfig {
            tls_cert: Some("/c".into()),
            tls_key: Some("/k".into()),
            tls_ca: Some("/ca".into()),
            ..minimal()
        };
        assert!(!minimal().validate()?.auto_resync);
        assert!(tls.clone().validate()?.auto_resync);
        for explicit in [false, true] {
            for file in [minimal(), tls.clone()] {
                let config = FileConfig {
                    auto_resync: Some(explicit),
                    ..file
                }
                .validate()?;
                assert_eq!(config.auto_resync, explicit, "an explicit value wins");
            }
        }
        Ok(())
    }

    #[test]
    fn max_snapshot_bytes_accepts_one_mib_and_more() -> Result<(), ConfigError> {
        for bytes in [1 << 20, 5 << 30] {
            let config = FileConfig {
                max_snapshot_bytes: Some(bytes),
                ..minimal()
            }
            .validate()?;
            assert_eq!(config.max_snapshot_bytes, bytes);
        }
        Ok(())
    }

    #[test]
    fn insecure_is_a_switch_on_the_command_line() -> Result<(), Box<dyn std::error::Error>> {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(parse_cli(&["--insecure"])?.insecure, Some(true));
        let args = parse_cli(&["--insecure", "--node-id", "2"])?;
        assert_eq!((args.insecure, args.node_id), (Some(true), Some(2)));
        assert_eq!(parse_cli(&["--insecure=false"])?.insecure, Some(false));
        assert_eq!(parse_cli(&[])?.insecure, None);

        for (value, expected) in [("true", true), ("false", false)] {
            std::env::set_var("RAFTLITE_INSECURE", value);
            let parsed = parse_cli(&[]);
            std::env::remove_var("RAFTLITE_INSECURE");
            assert_eq!(
                parsed?.insecure,
                Some(expected),
                "RAFTLITE_INSECURE={value}"
            );
        }

        assert_eq!(yaml("insecure: true\n", &[])?.insecure, Some(true));
        Ok(())
    }

    #[test]
    fn security_flags_parse_into_serve_args() -> Result<(), Box<dyn std::error::Error>> {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let args = parse_cli(&[
            "--peer-listen",
            "0.0.0.0:7001",
            "--tls-cert",
            "/c",
            "--tls-key",
            "/k",
            "--tls-ca",
            "/ca",
            "--auth-file",
            "/a.yaml",
            "--max-snapshot-bytes",
            "2097152",
        ])?;
        assert_eq!(args.peer_listen.as_deref(), Some("0.0.0.0:7001"));
        assert_eq!(
            (
                args.tls_cert.clone(),
                args.tls_key.clone(),
                args.tls_ca.clone()
            ),
            (Some("/c".into()), Some("/k".into()), Some("/ca".into()))
        );
        assert_eq!(args.auth_file.as_deref(), Some(Path::new("/a.yaml")));
        assert_eq!(args.max_snapshot_bytes, Some(2 << 20));

        let file = yaml(
            "peer_listen: 0.0.0.0:7001\ntls_cert: /c\ntls_key: /k\ntls_ca: /ca\n\
             auth_file: /a.yaml\nmax_snapshot_bytes: 2097152\n",
            &[],
        )?;
        let cli = ServeArgs {
            peer_listen: file.peer_listen.clone(),
            tls_cert: file.tls_cert.clone(),
            tls_key: file.tls_key.clone(),
            tls_ca: file.tls_ca.clone(),
            auth_file: file.auth_file.clone(),
            max_snapshot_bytes: file.max_snapshot_bytes,
            ..ServeArgs::default()
        };
        assert_eq!(cli, args, "the file keys read the same values");
        Ok(())
    }

    #[test]
    fn metrics_addr_default_off_and_explicit() -> Result<(), ConfigError> {
        assert_eq!(
            minimal().validate()?.metrics_addr,
            Some(default_metrics_addr())
        );
        let off = FileConfig {
            metrics_addr: Some("off".into()),
            ..minimal()
        };
        assert_eq!(off.validate()?.metrics_addr, None);
        let explicit = FileConfig {
            metrics_addr: Some("127.0.0.1:9191".into()),
            ..minimal()
        };
        assert_eq!(
            explicit.validate()?.metrics_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 9191)))
        );
        Ok(())
    }

    #[test]
    fn accepted_address_forms() {
        for addr in [
            "a:1",
            "raftlite-0.raftlite.ns.svc.cluster.local:7000",
            "10.0.0.5:7000",
            "[fd00::5]:65535",
        ] {
            assert_eq!(check_host_port(addr), Ok(()), "{addr}");
        }
    }

    // ---- the sample file and load() ----

    #[test]
    fn example_file_loads_with_pod_environment() -> Result<(), ConfigError> {
        let text = include_str!("../config.example.yaml");
        let vars = [
            ("NODE_ID", "2"),
            ("POD_NAME", "raftlite-1"),
            ("POD_NAMESPACE", "prod"),
        ];
        let config = FileConfig::from_yaml(text, Path::new("config.example.yaml"), env(&vars))?
            .validate()?;
        let addr = |ordinal| format!("raftlite-{ordinal}.raftlite.prod.svc.cluster.local:7000");
        let peer = |ordinal| format!("raftlite-{ordinal}.raftlite.prod.svc.cluster.local:7001");
        assert_eq!(config.node_id, 2);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/raftlite"));
        assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 7000)));
        assert_eq!(config.peer_listen, SocketAddr::from(([0, 0, 0, 0], 7001)));
        assert_eq!(config.advertise_addr, addr(1));
        assert_eq!(config.peer_advertise_addr, peer(1));
        assert_eq!(
            config.peers,
            BTreeMap::from([(1, peer(0)), (2, peer(1)), (3, peer(2))])
        );
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: "/etc/raftlite/tls/raftlite-1.crt".into(),
                key: "/etc/raftlite/tls/raftlite-1.key".into(),
                ca: "/etc/raftlite/tls/ca.crt".into(),
            })
        );
        assert_eq!(
            config.auth_file.as_deref(),
            Some(Path::new("/etc/raftlite/auth/auth.yaml"))
        );
        assert!(!config.insecure);
        assert_eq!(config.max_snapshot_bytes, 1 << 30);
        assert_eq!(config.heartbeat, Duration::from_millis(100));
        assert_eq!(config.election_timeout_min, Duration::from_millis(300));
        assert_eq!(config.election_timeout_max, Duration::from_millis(600));
        assert_eq!(config.snapshot_every, 10_000);
        assert_eq!(config.max_request_bytes, 16 << 20);
        assert!(config.auto_resync, "on by default with TLS");
        assert_eq!((config.read_threads, config.max_batch_requests), (4, 1024));
        assert_eq!(config.worker_threads, default_worker_threads());
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_level, "info");
        Ok(())
    }

    #[test]
    fn example_file_derives_node_id_from_pod_name() -> Result<(), ConfigError> {
        let text = include_str!("../config.example.yaml");
        let vars = [("POD_NAME", "raftlite-2")];
        let config = FileConfig::from_yaml(text, Path::new("config.example.yaml"), env(&vars))?
            .with_pod_identity(env(&vars), || None)?
            .validate()?;
        assert_eq!(config.node_id, 3);
        assert_eq!(
            config.node_id_source.as_deref(),
            Some("POD_NAME=raftlite-2 (ordinal 2 + 1)")
        );
        assert_eq!(config.metrics_addr, Some(default_metrics_addr()));
        assert!(!config.auto_join);

        let vars = [
            ("POD_NAME", "raftlite-4"),
            ("POD_NAMESPACE", "prod"),
            (
                "PEERS_FROM_STATEFULSET",
                "raftlite.raftlite.prod.svc.cluster.local:7000",
            ),
            ("REPLICAS", "3"),
        ];
        let mut file = FileConfig::from_yaml(text, Path::new("x.yaml"), env(&vars))?;
        file.peers = None;
        let config = file.with_pod_identity(env(&vars), || None)?.validate()?;
        assert_eq!(config.node_id, 5);
        assert!(config.auto_join);
        assert_eq!(config.peers.len(), 3, "initial members only");
        assert_eq!(
            config.advertise_addr,
            "raftlite-4.raftlite.prod.svc.cluster.local:7000"
        );
        Ok(())
    }

    #[test]
    fn example_file_refuses_to_start_without_pod_name() {
        let text = include_str!("../config.example.yaml");
        let file = Path::new("config.example.yaml");
        let err = FileConfig::from_yaml(text, file, env(&[("NODE_ID", "1")]))
            .expect_err("POD_NAME unset");
        let line = text
            .lines()
            .position(|l| l.starts_with("advertise_addr:"))
            .map(|i| i + 1);
        assert!(
            matches!(err, ConfigError::Expand { line: l, .. } if Some(l) == line),
            "{err:?}"
        );
    }

    #[test]
    fn example_file_does_not_drift_from_the_settings() {
        // Every setting of ServeArgs (but --config) is documented in the example file.
        use clap::CommandFactory;
        let text = include_str!("../config.example.yaml");
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "config" || id == "help" {
                continue;
            }
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{id}:"))),
                "{id} missing"
            );
        }
    }

    #[test]
    fn load_reads_the_file_and_reports_its_path() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("raftlite.yaml");
        std::fs::write(
            &path,
            "node_id: 3
data_dir: /d
listen: 127.0.0.1:7003
read_threads: 2
",
        )?;
        let args = ServeArgs {
            config: Some(path.clone()),
            read_threads: Some(5),
            ..ServeArgs::default()
        };
        let config = load(&args)?;
        assert_eq!((config.node_id, config.read_threads), (3, 5));

        std::fs::write(
            &path,
            "node_id: 3
data_dir: ${RAFTLITE_TEST_NEVER_SET_7f3a}
",
        )?;
        let message = load(&args).expect_err("unset variable").to_string();
        assert!(
            message.starts_with(&format!("{}:2: ", path.display())),
            "{message}"
        );

        let missing = ServeArgs {
            config: Some(dir.path().join("absent.yaml")),
            ..ServeArgs::default()
        };
        let err = load(&missing).expect_err("no such file");
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.yaml"), "{err}");
        Ok(())
    }

    // ---- archive ----

    #[test]
    fn archive_defaults_to_a_directory_in_data_dir_and_none_turns_it_off() -> Result<(), ConfigError>
    {
        use crate::archive::ArchiveUrl;
        let config = yaml("node_id: 1\ndata_dir: /d\nlisten: 127.0.0.1:7001\n", &[])?.validate()?;
        let archive = config.archive.expect("archiving is on by default");
        assert_eq!(
            archive.location.url,
            ArchiveUrl::File {
                dir: "/d/archive".into()
            }
        );
        assert_eq!(
            archive.settings.snapshot_interval,
            Duration::from_secs(3600)
        );
        assert_eq!(archive.settings.max_held_entries, 50_000);
        let off = yaml(
            "node_id: 1\ndata_dir: /d\nlisten: 127.0.0.1:7001\narchive: none\n",
            &[],
        )?
        .validate()?;
        assert_eq!(off.archive, None);
        let s3 = yaml(
            "node_id: 1\ndata_dir: /d\nlisten: 127.0.0.1:7001\narchive: s3://b/p\n\
             archive_endpoint: http://minio:9000\narchive_flush_ms: 50\n",
            &[],
        )?
        .validate()?
        .archive
        .expect("on");
        assert_eq!(
            s3.location.url,
            ArchiveUrl::S3 {
                bucket: "b".into(),
                prefix: "p".into()
            }
        );
        assert_eq!(s3.location.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(s3.settings.flush, Duration::from_millis(50));
        Ok(())
    }

    #[test]
    fn archive_errors_name_the_setting() -> Result<(), ConfigError> {
        let base = "node_id: 1\ndata_dir: /d\nlisten: 127.0.0.1:7001\n";
        for (extra, setting) in [
            ("archive: ftp://x\n", "archive"),
            ("archive: file://relative\n", "archive"),
            (
                "archive: s3://b\narchive_endpoint: minio:9000\n",
                "archive_endpoint",
            ),
            (
                "archive_snapshot_interval_s: 0\n",
                "archive_snapshot_interval_s",
            ),
            (
                "archive_snapshot_interval_s: 600\narchive_retention_s: 60\n",
                "archive_retention_s",
            ),
            ("archive_max_held_entries: 0\n", "archive_max_held_entries"),
        ] {
            let err = yaml(&format!("{base}{extra}"), &[])?
                .validate()
                .expect_err(extra);
            assert_eq!(err.setting(), Some(setting), "{extra}: {err}");
        }
        Ok(())
    }
}
