"""A real local cluster for the tests: `raftlite dev` started as a child process.

`raftlite dev --nodes 3 --base-port P --data-dir D [--secure]` runs three `raftlite serve`
children on loopback and prints a banner once they have a leader. The banner's `url:` line
(when the binary prints one) is the connection URL, with the token and CA of a `--secure`
cluster; without it the URL is built from the ports (node i serves clients on P+i-1). The
cluster is stopped with SIGINT to the PID started here, as Ctrl-C would, and it stops its
nodes; a node is killed by the PID of the `serve` child whose `--node-id` it is.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import raftlite
from raftlite.url import parse_url

CLIENT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_BIN = CLIENT_DIR / ".." / ".." / "target" / "debug" / "raftlite"
START_DEADLINE = 90.0
STOP_GRACE = 30.0


def raftlite_binary() -> Path:
    """The server binary: $RAFTLITE_BIN, else target/debug/raftlite of this checkout."""
    path = Path(os.environ.get("RAFTLITE_BIN", DEFAULT_BIN)).resolve()
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"the raftlite server binary is missing at {path}: build it (`cargo build -p "
            "raftlite`) or point RAFTLITE_BIN at one; the cluster tests need a real cluster"
        )
    return path


def free_base_port(count: int) -> int:
    """A base port with `count` free loopback ports from it on."""
    for _ in range(50):
        base = random.randrange(20000, 60000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"found no {count} free consecutive ports on 127.0.0.1")


class DevCluster:
    def __init__(self, binary: Path, data_dir: Path, *, nodes: int = 3, secure: bool = False):
        self.binary = binary
        self.dir = data_dir
        self.nodes = nodes
        self.secure = secure
        self.base_port = free_base_port(2 * nodes)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.banner = ""

    @property
    def addrs(self) -> list[str]:
        return [f"127.0.0.1:{self.base_port + i}" for i in range(self.nodes)]

    def start(self) -> DevCluster:
        command = [
            str(self.binary),
            "dev",
            "--nodes",
            str(self.nodes),
            "--base-port",
            str(self.base_port),
            "--data-dir",
            str(self.dir / "data"),
        ]
        if self.secure:
            command.append("--secure")
        self.stdout = self.dir / "dev.stdout"
        self.stderr = self.dir / "dev.stderr"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            self.url = self._wait_for_banner(command)
            self._wait_for_a_write()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_banner(self, command: list[str]) -> str:
        """Waits for the banner's `leader:` line; returns the URL it gives, or one built from
        the ports."""
        deadline = time.monotonic() + START_DEADLINE
        leader_seen_at = None
        while True:
            self.banner = self.stdout.read_text(errors="replace")
            url = re.search(r"^\s*url:\s*(raftlite://\S+)\s*$", self.banner, re.M)
            if url:
                return url.group(1)
            if leader_seen_at is None and re.search(r"^leader:", self.banner, re.M):
                leader_seen_at = time.monotonic()
            # A `url:` line printed apart from the rest gets a moment to appear.
            if leader_seen_at is not None and time.monotonic() - leader_seen_at > 0.5:
                if self.secure:
                    raise RuntimeError(
                        f"`{' '.join(command)}` printed no `url:` line (needed for the token "
                        f"and CA of a secure cluster):\n{self.banner}"
                    )
                return "raftlite://" + ",".join(self.addrs)
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"`{' '.join(command)}` exited with {self.proc.returncode}:\n"
                    f"{self.banner}{self.stderr.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"`{' '.join(command)}` printed no banner in time")
            time.sleep(0.1)

    def _wait_for_a_write(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        conn = raftlite.connect(self.url, autocommit=True, retry_deadline=5)
        try:
            while True:
                try:
                    conn.execute("CREATE TABLE IF NOT EXISTS pytest_ready (x)")
                    return
                except raftlite.OperationalError:
                    if time.monotonic() > deadline:
                        raise
        finally:
            conn.close()

    def status(self) -> dict:
        """`raftlite status --json` as the first node that answers sees it."""
        target = parse_url(self.url)
        last = ""
        for addr in target.nodes:
            command = [str(self.binary), "status", "--json", "--addr"]
            if target.tls_ca:
                command += [f"https://{addr}", "--tls-ca", target.tls_ca]
            else:
                command.append(addr)
            env = dict(os.environ)
            if target.token:
                env["RAFTLITE_TOKEN"] = target.token
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
            if done.returncode == 0:
                return json.loads(done.stdout)
            last = done.stderr
        raise RuntimeError(f"no node answered `raftlite status`: {last}")

    def leader(self) -> int:
        """The leader's node id, once a node knows it."""
        deadline = time.monotonic() + 30
        while True:
            leader = self.status().get("leader", 0)
            if leader:
                return int(leader)
            if time.monotonic() > deadline:
                raise RuntimeError("no leader")
            time.sleep(0.2)

    def node_pid(self, node_id: int) -> int:
        """The PID of node `node_id`: the child of our `raftlite dev` started with
        `--node-id node_id`."""
        pid = self.node_pids().get(node_id)
        if pid is None:
            raise RuntimeError(f"node {node_id} of `raftlite dev` is not running")
        return pid

    def node_pids(self) -> dict[int, int]:
        """Node id -> PID of the `raftlite serve` children of our `raftlite dev`."""
        assert self.proc is not None
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid != self.proc.pid or b"serve" not in args:
                continue
            if b"--node-id" in args:
                found[int(args[args.index(b"--node-id") + 1])] = int(entry.name)
        return found

    def kill_node(self, node_id: int) -> None:
        os.kill(self.node_pid(node_id), signal.SIGKILL)

    def stop(self) -> None:
        """SIGINT to `raftlite dev` (it stops its nodes), SIGKILL if it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            stuck = self.node_pids().values()
            self.proc.kill()
            self.proc.wait()
            for pid in stuck:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
