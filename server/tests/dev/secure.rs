//! The banner's `url:` line, with and without `--secure`: the CLI reaches the cluster through
//! it alone, and a secure cluster wants TLS and its token.

use std::path::Path;

use raftlite_client::ClusterUrl;

use crate::common::{assert_all_gone, cli, signal, start_dev, Dev, NODES};

/// Creates a table, writes a row and reads it back through `addr`.
fn round_trip(addr: &str) {
    let (ok, out, err) = cli(&[
        "sql",
        "--addr",
        addr,
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v)",
    ]);
    assert!(ok, "create: {out}{err}");
    let (ok, out, err) = cli(&[
        "sql",
        "--addr",
        addr,
        "INSERT INTO kv VALUES (?1, ?2)",
        "a",
        "1",
    ]);
    assert!(
        ok && out.starts_with("rows_affected=1 "),
        "insert: {out}{err}"
    );
    let (ok, out, err) = cli(&["sql", "--addr", addr, "SELECT k, v FROM kv"]);
    assert!(ok, "select: {err}");
    assert_eq!(out, "a\t1\n");
}

/// The `try:` lines pass the URL, quoted for the shell.
fn check_try_lines(dev: &Dev, url: &str) {
    let quoted = format!("--addr '{url}'");
    let tries: Vec<&String> = dev
        .banner
        .iter()
        .filter(|l| l.contains(" sql ") || l.contains(" status "))
        .collect();
    assert_eq!(tries.len(), 2, "{:#?}", dev.banner);
    for line in tries {
        assert!(line.contains(&quoted), "{line}");
    }
}

fn stop(mut dev: Dev) {
    signal(dev.launcher.id(), libc::SIGTERM);
    assert_all_gone(&dev, true);
    let _ = dev.launcher.wait();
}

#[test]
fn the_url_of_a_plain_cluster_lists_its_nodes() {
    let dev = start_dev(&[]);
    let url = dev.banner_value("url: ").to_owned();
    let nodes: Vec<String> = dev.ports[..usize::from(NODES)]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    assert_eq!(url, format!("raftlite://{}", nodes.join(",")));
    check_try_lines(&dev, &url);
    round_trip(&url);
    stop(dev);
}

#[test]
fn a_secure_cluster_wants_tls_and_its_token_which_the_url_carries() {
    let dev = start_dev(&["--secure"]);
    let url = dev.banner_value("url: ").to_owned();
    let parsed = ClusterUrl::parse(&url).expect("the banner's URL parses");
    assert_eq!(parsed.name.as_deref(), Some("dev"));
    let token = parsed.token().expect("a token").to_owned();
    let ca = parsed.tls_ca.clone().expect("a CA");
    assert!(
        ca.is_absolute() && ca.starts_with(&dev.dir),
        "{}",
        ca.display()
    );
    assert!(ca.is_file(), "{}", ca.display());
    assert_eq!(parsed.nodes.len(), usize::from(NODES));
    check_try_lines(&dev, &url);

    // Every node runs as in production: TLS files and an auth file.
    for &pid in &dev.nodes {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        for flag in ["--tls-cert", "--tls-key", "--tls-ca", "--auth-file"] {
            assert!(args.iter().any(|a| a == flag), "node {pid}: {args:?}");
        }
    }

    round_trip(&url);
    let (ok, out, err) = cli(&["status", "--addr", &url]);
    assert!(ok, "status: {out}{err}");

    // The same nodes without the token: TLS works, the call is refused.
    let first = &parsed.nodes[0];
    let ca_arg = ca.to_string_lossy();
    let (ok, out, err) = cli(&["sql", "--addr", first, "--tls-ca", &ca_arg, "SELECT 1"]);
    assert!(!ok, "no token: {out}");
    assert!(err.starts_with("error: UNAUTHENTICATED"), "{err}");
    // And with it, given as a flag next to a plain address.
    let (ok, out, err) = cli(&[
        "sql", "--addr", first, "--tls-ca", &ca_arg, "--token", &token, "SELECT 1",
    ]);
    assert!(ok && out == "1\n", "{out}{err}");
    assert!(Path::new(&ca).exists());
    stop(dev);
}
