//! `raftlite shell` driven through a pseudo-terminal, as a person at a terminal would drive
//! it, against a `raftlite dev` cluster: multi-line statements, line editing, history (the
//! up arrow, and the history file), Ctrl-C, the dot-commands, errors.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{assert_all_gone, eventually, signal, start_dev};

const EXPECT_DEADLINE: Duration = Duration::from_secs(20);

/// A child process on the slave side of a pseudo-terminal; everything it writes is collected.
struct Pty {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
    /// Output before this offset has been matched already.
    seen: usize,
}

impl Pty {
    fn spawn(args: &[&str], home: &Path) -> Pty {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes the two descriptors it opens into the pointers given; the
        // name and termios pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let stdio = || Stdio::from(slave.try_clone().expect("dup the pty"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_raftlite"));
        command
            .args(args)
            .env("HOME", home)
            .env("TERM", "xterm")
            .env_remove("RAFTLITE_ADDR")
            .env_remove("RAFTLITE_HISTORY")
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio());
        // SAFETY: setsid(2) and ioctl(2) are async-signal-safe; nothing is allocated.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(|| {
                // A session of its own with the pty as controlling terminal, as a login has.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start raftlite shell");
        drop(slave);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the master");
        let mut answer = master.try_clone().expect("dup the master");
        let collected = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0_u8; 4096];
            // Ends with EIO once the child has exited and the slave is closed.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let chunk = &buf[..n];
                // Answer a cursor-position query as a terminal does (row 1, column 1).
                if chunk.windows(4).any(|w| w == b"\x1b[6n") {
                    let _ = answer.write_all(b"\x1b[1;1R");
                }
                collected.lock().expect("lock").extend_from_slice(chunk);
            }
        });
        Pty {
            child,
            master,
            output,
            seen: 0,
        }
    }

    fn send(&mut self, keys: &str) {
        self.master
            .write_all(keys.as_bytes())
            .expect("write to the pty");
    }

    /// Waits until `text` appears in the output after what was matched before; returns the
    /// output up to and including it.
    fn expect(&mut self, text: &str) -> String {
        let until = Instant::now() + EXPECT_DEADLINE;
        loop {
            {
                let output = self.output.lock().expect("lock");
                let fresh = &output[self.seen..];
                if let Some(at) = fresh.windows(text.len()).position(|w| w == text.as_bytes()) {
                    let end = self.seen + at + text.len();
                    let matched = String::from_utf8_lossy(&output[self.seen..end]).into_owned();
                    self.seen = end;
                    return matched;
                }
                if Instant::now() >= until {
                    panic!(
                        "{text:?} not in the output within {EXPECT_DEADLINE:?}; after the last match:\n{}",
                        String::from_utf8_lossy(fresh)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_interactive_session_through_a_pseudo_terminal() {
    let mut dev = start_dev(&[]);
    let url = dev.banner_value("url: ").to_owned();
    let home = tempfile::tempdir().expect("home");
    let mut shell = Pty::spawn(&["shell", "--addr", &url], home.path());
    shell.expect("raftlite shell on http://127.0.0.1:");
    shell.expect("raftlite> ");

    shell.send("CREATE TABLE kv (k TEXT PRIMARY KEY, v);\r");
    shell.expect("rows_affected=0 ");
    shell.expect("raftlite> ");

    // A statement over two lines: the second prompt is the continuation prompt.
    shell.send("INSERT INTO kv\r");
    shell.expect("...> ");
    shell.send("VALUES ('a', 40 + 2);\r");
    shell.expect("rows_affected=1 last_insert_rowid=1 ");
    shell.send("SELECT k, v FROM kv;\r");
    shell.expect("k\tv\r\na\t42\r\n");
    // A write's RETURNING rows, then its summary.
    shell.send("UPDATE kv SET v = v + 1 RETURNING v AS now;\r");
    shell.expect("now\r\n43\r\nrows_affected=1 ");

    // Line editing: a typo erased with backspace; then the up arrow brings it back.
    shell.send("SELECT 9\x7f1 + 1 AS two;\r");
    shell.expect("two\r\n2\r\n");
    shell.send("\x1b[A\r");
    let again = shell.expect("two\r\n2\r\n");
    assert!(!again.contains("error"), "{again}");

    // Ctrl-C drops an unfinished statement: what follows runs alone.
    shell.send("SELECT 'dropped'\r");
    shell.expect("...> ");
    shell.send("\x03");
    shell.expect("raftlite> ");
    shell.send("SELECT 6 * 7 AS answer;\r");
    let answer = shell.expect("answer\r\n42\r\n");
    assert!(!answer.contains("error"), "{answer}");

    shell.send(".tables\r");
    shell.expect("\r\nkv\r\n");
    shell.send(".schema KV\r");
    shell.expect("CREATE TABLE kv (k TEXT PRIMARY KEY, v);\r\n");
    shell.send(".consistency bounded 3\r");
    shell.expect("consistency: bounded 3\r\n");
    shell.send("SELECT count(*) AS n FROM kv;\r");
    shell.expect("n\r\n1\r\n");
    shell.send(".consistency sometimes\r");
    shell.expect("error: INVALID_ARGUMENT: unknown consistency \"sometimes\"");
    shell.send(".status\r");
    shell.expect("(answered by node ");
    shell.expect("leader");
    shell.send("SELEC 1;\r");
    shell.expect("error: INVALID_ARGUMENT: near \"SELEC\": syntax error");

    // A transaction: its prompt, its own writes visible inside, nothing outside before the
    // commit (a second shell reads), then committed; a rolled-back one leaves nothing.
    shell.send(".begin\r");
    shell.expect("raftlite*> ");
    shell.send("INSERT INTO kv VALUES ('b', 1) RETURNING k;\r");
    shell.expect("k\r\nb\r\n");
    shell.send("SELECT count(*) AS n FROM kv;\r");
    shell.expect("n\r\n2\r\n");
    let outside = std::process::Command::new(env!("CARGO_BIN_EXE_raftlite"))
        .args(["sql", "--addr", &url, "SELECT count(*) FROM kv"])
        .output()
        .expect("raftlite sql");
    assert_eq!(
        String::from_utf8_lossy(&outside.stdout).trim(),
        "1",
        "{outside:?}"
    );
    shell.send(".begin\r");
    shell.expect("a transaction is already open");
    shell.send("COMMIT;\r");
    shell.expect("committed log_index=");
    shell.expect("raftlite> ");
    shell.send("BEGIN;\r");
    shell.expect("raftlite*> ");
    shell.send("DELETE FROM kv;\r");
    shell.expect("rows_affected=2 ");
    shell.send(".rollback\r");
    shell.expect("rolled back");
    shell.send("SELECT count(*) AS n FROM kv;\r");
    shell.expect("n\r\n2\r\n");
    shell.send(".commit\r");
    shell.expect("no transaction is open");
    shell.send(".help\r");
    shell.expect(".quit");

    shell.send(".quit\r");
    let exited = eventually(EXPECT_DEADLINE, || {
        shell.child.try_wait().ok().flatten().is_some()
    });
    assert!(exited, "the shell did not exit on .quit");
    let status = shell.child.wait().expect("status");
    assert!(status.success(), "{status}");

    let history =
        std::fs::read_to_string(home.path().join(".raftlite_history")).expect("the history file");
    for entry in [
        "CREATE TABLE kv",
        "VALUES ('a', 40 + 2);",
        ".tables",
        ".quit",
    ] {
        assert!(history.contains(entry), "{entry:?} not in {history}");
    }
    assert!(!history.contains("dropped"), "{history}");

    signal(dev.launcher.id(), libc::SIGTERM);
    assert_all_gone(&dev, true);
    let _ = dev.launcher.wait();
}
