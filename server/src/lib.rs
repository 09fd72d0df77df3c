//! raftlite node library. See ARCHITECTURE.md for the write path, apply path, reads and
//! snapshots.

pub mod db;
