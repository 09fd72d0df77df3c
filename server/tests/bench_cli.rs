//! `raftlite bench --seconds 1 --json` end to end, in both configurations: what it reports
//! about the configuration, the floor object, and a ratio on every phase. Nothing about the
//! numbers themselves is asserted (they are timings); only that they were measured.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_raftlite"))
        .args(["bench", "--seconds", "1", "--json"])
        .args(args)
        .output()
        .expect("run raftlite bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "raftlite bench {args:?}: {}\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The floor's three p50s and the shared-disk flush's are numbers, each from some samples.
fn check_floor(json: &Value, tls: bool) {
    let floor = &json["floor"];
    for name in ["fsync", "fsync_shared", "sqlite_commit", "grpc_rtt"] {
        assert!(
            floor[format!("{name}_p50_ms")].is_f64(),
            "{name} in {floor}"
        );
        assert!(
            floor[format!("{name}_samples")].as_u64() > Some(0),
            "{name} in {floor}"
        );
    }
    assert_eq!(floor["grpc_tls"], tls, "{floor}");
}

/// Every phase has a `ratio`: a number except for failover, where none applies.
fn check_ratios(phases: &[Value]) {
    for phase in phases {
        let ratio = phase
            .get("ratio")
            .unwrap_or_else(|| panic!("no ratio: {phase}"));
        if phase["kind"] == "failover" {
            assert!(ratio.is_null(), "{phase}");
        } else {
            assert!(ratio.is_f64(), "{phase}");
            assert!(phase["ratio_kind"].is_string(), "{phase}");
        }
        assert_eq!(phase["errors"], 0, "{phase}");
    }
}

#[test]
fn the_default_configuration_runs_with_tls_tokens_and_the_archive() {
    let json = bench(&[]);
    let config = &json["configuration"];
    assert_eq!(config["name"], "default", "{config}");
    assert_eq!(config["peer_mtls"], true, "{config}");
    assert_eq!(config["client_token"], true, "{config}");
    assert_eq!(config["archive"], "file://<data-dir>/archive", "{config}");
    check_floor(&json, true);
    let phases = json["phases"].as_array().expect("phases");
    check_ratios(phases);
    let kinds: Vec<&str> = phases.iter().filter_map(|p| p["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"latency"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"failover"), "{kinds:?}");
    assert!(
        kinds.contains(&"write") && kinds.contains(&"read"),
        "{kinds:?}"
    );
    // Writers sharing one client's connection and write stream, as an application's tasks do.
    for n in [16, 64] {
        let name = format!("1-row insert, {n} writers on one client");
        let phase = phases
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no phase {name:?} in {phases:?}"));
        assert_eq!(phase["kind"], "write", "{phase}");
        assert_eq!(phase["clients"], n, "{phase}");
        assert!(phase["ops"].as_u64() > Some(0), "{phase}");
    }
}

#[test]
fn insecure_without_archive_on_one_node_has_no_failover_phase() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let kept = dir.path().join("kept");
    let kept_arg = kept.to_str().expect("a UTF-8 path");
    let json = bench(&[
        "--insecure",
        "--archive",
        "none",
        "--nodes",
        "1",
        "--data-dir",
        kept_arg,
    ]);
    // --data-dir keeps the node's data and log.
    let log = std::fs::read_to_string(kept.join("node-1.log")).expect("the node's log is kept");
    assert!(log.contains("raftlite node started"), "{log}");
    assert!(kept.join("node-1").is_dir());
    let config = &json["configuration"];
    assert_eq!(config["name"], "--insecure --archive none", "{config}");
    assert_eq!(config["peer_mtls"], false, "{config}");
    assert_eq!(config["archive"], "none", "{config}");
    check_floor(&json, false);
    let phases = json["phases"].as_array().expect("phases");
    check_ratios(phases);
    assert!(phases.iter().all(|p| p["kind"] != "failover"), "{phases:?}");
}

#[test]
fn a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("data.db"), b"someone's data").expect("write a file");
    let out = Command::new(env!("CARGO_BIN_EXE_raftlite"))
        .args(["bench", "--seconds", "1", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run raftlite bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.path().join("data.db")).expect("the file is still there"),
        b"someone's data"
    );
}
