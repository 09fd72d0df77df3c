//! Finding the binaries under test.

use std::path::{Path, PathBuf};

/// The `raftlite` binary to run: `RAFTLITE_BIN` if set, else `<target>/debug/raftlite` with
/// `<target>` the `CARGO_TARGET_DIR` of this run (or of the build of this crate), or the
/// workspace's `target/`.
///
/// Panics with the command to run when the binary does not exist: cargo cannot build another
/// package's binary for an integration test, so the README's test command builds it first.
pub fn raftlite_binary() -> PathBuf {
    target_binary("raftlite", "RAFTLITE_BIN", "raftlite")
}

/// The example counter app (`examples/counter`) for the Docker scenarios:
/// `RAFTLITE_COUNTER_BIN` if set, else `<target>/debug/raftlite-counter` (see
/// [`raftlite_binary`]).
pub fn counter_binary() -> PathBuf {
    target_binary(
        "raftlite-counter",
        "RAFTLITE_COUNTER_BIN",
        "raftlite-counter",
    )
}

fn target_binary(name: &str, env: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env}={} does not exist or is not a file",
            path.display()
        );
        return path;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cluster-tests lives inside the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .map(|dir| {
            if dir.is_relative() {
                workspace.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "the {name} binary is missing at {}: build it first with `cargo build -p {package}` \
         (same CARGO_TARGET_DIR), or point {env} at one",
        path.display()
    );
    path
}
