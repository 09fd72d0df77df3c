//! t70: the docker compose mirror of the Helm chart, for real. The image is built `FROM scratch`
//! from the binary under test (nothing is pulled); `docker/smoke.sh` then starts three
//! containers on their own network and checks, phase by phase: a leader is elected with three
//! voters, a write goes through every pod, a fourth pod joins by itself (scale-up), `cluster
//! retain 3` removes it (scale-down), a stopped pod comes back with its volume and catches up,
//! every pod reports healthy. The script tears its containers, network and volumes down.

use std::path::PathBuf;
use std::process::Command;

use cluster_tests::{init_tracing, raftlite_binary};
use tracing::info;

const IMAGE: &str = "raftlite:cluster-test";

fn run(what: &str, command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e} (is docker installed?)"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    info!("{what}:\n{stdout}");
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

#[test]
fn compose_mirror_of_the_chart() {
    init_tracing();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cluster-tests lives inside the workspace")
        .to_path_buf();

    info!("phase 1: build {IMAGE} FROM scratch from the binary under test");
    run(
        "docker/build-image.sh",
        Command::new(root.join("docker/build-image.sh"))
            .arg(IMAGE)
            .env("BINARY", raftlite_binary())
            .env("BASE_IMAGE", "scratch"),
    );

    info!("phase 2: docker/smoke.sh: election, writes, scale up and down, pod restart");
    run(
        "docker/smoke.sh",
        Command::new(root.join("docker/smoke.sh")).env("RAFTLITE_IMAGE", IMAGE),
    );
}
