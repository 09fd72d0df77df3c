//! `raftlite dev` and the commands run against it, as real processes of the built binary:
//! how it stops on signals, its secure mode and URL, and `raftlite shell` at a terminal.

mod common;
mod secure;
mod shell;
mod signals;
