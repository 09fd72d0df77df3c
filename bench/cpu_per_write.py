#!/usr/bin/env python3
"""CPU time per acknowledged write, by role, in the 16- and 64-writer phases of a bench run:
16 and 64 clients of their own, then 16 and 64 writers on one client.

    cargo build --release -p raftlite
    python3 bench/cpu_per_write.py ./target/release/raftlite [bench flags...]
    python3 bench/cpu_per_write.py ./target/release/raftlite --insecure --archive none

Runs `raftlite bench --seconds 5 --json` in a fresh data directory. One second into each of
the four phases it reads the user + system CPU time of every process of the run from
`/proc/PID/stat` (the leader, the followers, the load generator), again 2.5 s later, and
divides by the writes acknowledged in that window (the phase's writes/s times the window).
The leader's `write-batcher` thread, which executes every write, is also shown on its own
(part of the leader's time, not added to the total again).

On a machine where the cluster and the load generator share the cores, a microsecond of CPU
that one write does not need is taken from the others: this is the number to compare
between builds when the throughput itself moves within the host's noise.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

PHASES = ('16 clients', '64 clients', '16 writers on one client', '64 writers on one client')
WINDOW_S = 2.5


def cpu_seconds(pid, task=None):
    path = '/proc/%d/stat' % pid if task is None else '/proc/%d/task/%d/stat' % (pid, task)
    try:
        with open(path) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def threads_named(pid, name):
    found = []
    try:
        for task in os.listdir('/proc/%d/task' % pid):
            with open('/proc/%d/task/%s/comm' % (pid, task)) as f:
                if f.read().strip() == name:
                    found.append(int(task))
    except OSError:
        pass
    return found


def node_roles(data_dir, leader):
    """pid -> 'leader' or 'follower' for the nodes serving from data_dir."""
    roles = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry) as f:
                args = f.read().split('\0')
        except OSError:
            continue
        if 'serve' in args and '--node-id' in args and any(
                a.startswith(data_dir + '/') for a in args):
            node = args[args.index('--node-id') + 1]
            roles[int(entry)] = 'leader' if node == leader else 'follower'
    return roles


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary, flags = sys.argv[1], sys.argv[2:]
    work = tempfile.mkdtemp(prefix='raftlite-cpu-')
    data_dir = os.path.join(work, 'cluster')
    log_path = os.path.join(work, 'bench.log')
    try:
        with open(log_path, 'w') as log:
            bench = subprocess.Popen(
                [binary, 'bench', '--seconds', '5', '--json', '--data-dir', data_dir] + flags,
                stdout=subprocess.PIPE, stderr=log)

        def progress():
            with open(log_path) as f:
                return f.read()

        windows = {}
        for phase in PHASES:
            while 'insert, ' + phase not in progress():
                if bench.poll() is not None:
                    sys.exit('the bench ended before the %s phase:\n%s' % (phase, progress()))
                time.sleep(0.2)
            time.sleep(1.0)
            leader = re.search(r'leader node (\d+)', progress()).group(1)
            roles = node_roles(data_dir, leader)
            roles[bench.pid] = 'load generator'
            batcher = [(pid, task) for pid, role in roles.items() if role == 'leader'
                       for task in threads_named(pid, 'write-batcher')]
            before = {pid: cpu_seconds(pid) for pid in roles}
            batcher_before = sum(cpu_seconds(pid, task) for pid, task in batcher)
            started = time.monotonic()
            time.sleep(WINDOW_S)
            used = {}
            for pid, role in roles.items():
                used[role] = used.get(role, 0.0) + cpu_seconds(pid) - before[pid]
            batcher_used = sum(cpu_seconds(pid, task) for pid, task in batcher) - batcher_before
            windows[phase] = (used, batcher_used, time.monotonic() - started)
        report = json.loads(bench.communicate()[0])
        if bench.returncode != 0:
            sys.exit('the bench failed:\n' + progress())
        phases = {p['name']: p for p in report['phases']}
        for phase, (used, batcher_used, seconds) in windows.items():
            rate = phases['1-row insert, ' + phase]['ops_per_sec']
            writes = rate * seconds
            parts = ', '.join('%s %.1f' % (role, 1e6 * cpu / writes)
                              for role, cpu in sorted(used.items()))
            print('%s: %.0f writes/s; CPU µs per write: %s; total %.1f (leader\'s write-batcher '
                  '%.1f, busy %.0f %%)'
                  % (phase, rate, parts, 1e6 * sum(used.values()) / writes,
                     1e6 * batcher_used / writes, 100 * batcher_used / seconds))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
