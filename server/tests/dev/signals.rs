//! `raftlite dev` takes its nodes along however it ends: asked to stop by SIGTERM or SIGHUP
//! (as by Ctrl-C: nodes stopped, temporary data removed), or killed with SIGKILL (the nodes
//! get SIGTERM from the kernel and the last one out removes the temporary data).
//!
//! The nodes are found as the launcher's children in /proc before the signal; afterwards they
//! must be gone, their client and peer ports free again, and the temporary directory removed.

use crate::common::{assert_all_gone, eventually, signal, start_dev, STOP_DEADLINE};

/// The launcher stops its nodes and exits 0, as on Ctrl-C.
fn stops_gracefully_on(sig: i32) {
    let mut dev = start_dev(&[]);
    signal(dev.launcher.id(), sig);
    let exited = eventually(STOP_DEADLINE, || {
        dev.launcher.try_wait().ok().flatten().is_some()
    });
    assert_all_gone(&dev, true);
    assert!(exited, "the launcher did not exit after signal {sig}");
    let status = dev.launcher.wait().expect("status");
    assert!(status.success(), "launcher: {status}");
}

#[test]
fn sigterm_stops_the_nodes_and_removes_the_data() {
    stops_gracefully_on(libc::SIGTERM);
}

#[test]
fn sighup_stops_the_nodes_and_removes_the_data() {
    stops_gracefully_on(libc::SIGHUP);
}

#[test]
fn sigkill_of_the_launcher_takes_the_nodes_and_the_data_along() {
    let mut dev = start_dev(&[]);
    signal(dev.launcher.id(), libc::SIGKILL);
    let _ = dev.launcher.wait();
    assert_all_gone(&dev, true);
}
