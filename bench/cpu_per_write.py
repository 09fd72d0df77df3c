#!/usr/bin/env python3
"""CPU time per acknowledged write, by role, in the writer phases of a bench run: one client,
16 and 64 clients of their own, then 16 and 64 writers on one client; and how long the
threads of each role waited for a CPU once woken.

    cargo build --release -p raftlite
    python3 bench/cpu_per_write.py ./target/release/raftlite [bench flags...]
    python3 bench/cpu_per_write.py ./target/release/raftlite --insecure --archive none

Runs `raftlite bench --seconds 5 --json` in a fresh data directory. One second into each of
the five phases it reads the user + system CPU time of every process of the run from
`/proc/PID/stat` (the leader, the followers, the load generator), again 2.5 s later, and
divides by the writes acknowledged in that window (the phase's writes/s times the window).
The leader's `write-batcher` thread, which executes every write, is also shown on its own
(part of the leader's time, not added to the total again).

The second line of each phase is the scheduler's side (`/proc/PID/task/*/schedstat`, summed
over each role's threads): the time they spent runnable but not running (woken, waiting for
a CPU: on a virtual machine also the time it takes the host to wake an idle virtual CPU),
and how many times they were put on a CPU, both per write. Every blocking point of a write
(a packet, a disk completion, a hand-off between threads) is one such wait.

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

PHASES = ('1 clients', '16 clients', '64 clients', '16 writers on one client',
          '64 writers on one client')
WINDOW_S = 2.5


def cpu_seconds(pid, task=None):
    path = '/proc/%d/stat' % pid if task is None else '/proc/%d/task/%d/stat' % (pid, task)
    try:
        with open(path) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def sched_stats(pid):
    """Thread id -> (nanoseconds on a CPU, nanoseconds runnable and waiting, times put on a
    CPU) for each of pid's threads."""
    stats = {}
    try:
        tasks = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return stats
    for task in tasks:
        try:
            with open('/proc/%d/task/%s/schedstat' % (pid, task)) as f:
                stats[task] = [int(x) for x in f.read().split()[:3]]
        except (OSError, ValueError):
            continue
    return stats


def sched_delta(before, after):
    """(wait ns, times on a CPU) between two `sched_stats` of a process, over the threads that
    lived through both."""
    wait = sum(after[t][1] - before[t][1] for t in after if t in before)
    slices = sum(after[t][2] - before[t][2] for t in after if t in before)
    return wait, slices


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
            sched_before = {pid: sched_stats(pid) for pid in roles}
            batcher_before = sum(cpu_seconds(pid, task) for pid, task in batcher)
            started = time.monotonic()
            time.sleep(WINDOW_S)
            used = {}
            waits = {}
            for pid, role in roles.items():
                used[role] = used.get(role, 0.0) + cpu_seconds(pid) - before[pid]
                wait, slices = sched_delta(sched_before[pid], sched_stats(pid))
                total_wait, total_slices = waits.get(role, (0, 0))
                waits[role] = (total_wait + wait, total_slices + slices)
            batcher_used = sum(cpu_seconds(pid, task) for pid, task in batcher) - batcher_before
            windows[phase] = (used, waits, batcher_used, time.monotonic() - started)
        report = json.loads(bench.communicate()[0])
        if bench.returncode != 0:
            sys.exit('the bench failed:\n' + progress())
        phases = {p['name']: p for p in report['phases']}
        for phase, (used, waits, batcher_used, seconds) in windows.items():
            rate = phases['1-row insert, ' + phase]['ops_per_sec']
            writes = rate * seconds
            parts = ', '.join('%s %.1f' % (role, 1e6 * cpu / writes)
                              for role, cpu in sorted(used.items()))
            print('%s: %.0f writes/s; CPU µs per write: %s; total %.1f (leader\'s write-batcher '
                  '%.1f, busy %.0f %%)'
                  % (phase, rate, parts, 1e6 * sum(used.values()) / writes,
                     1e6 * batcher_used / writes, 100 * batcher_used / seconds))
            print('  waiting for a CPU once woken, µs per write (times on a CPU per write): %s; '
                  'total %.1f (%.1f)'
                  % (', '.join('%s %.1f (%.1f)' % (role, wait / 1e3 / writes, slices / writes)
                               for role, (wait, slices) in sorted(waits.items())),
                     sum(w for w, _ in waits.values()) / 1e3 / writes,
                     sum(s for _, s in waits.values()) / writes))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
