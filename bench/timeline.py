#!/usr/bin/env python3
"""Where a one-client write's time goes, step by step, from a timeline build's stamps.

    cargo build --release -p raftlite --features timeline
    mkdir /tmp/tl && RAFTLITE_TIMELINE=/tmp/tl ./target/release/raftlite bench \\
        --seconds 3 --insecure --archive none
    python3 bench/timeline.py /tmp/tl
    python3 bench/timeline.py /tmp/tl --turnaround 16


Each process of the run (the load generator and every node) wrote `timeline-PID.tsv`: a
point's name, a log index (0 where none is known yet) and the monotonic clock in ns, which
all processes on a host share (`server/src/timeline.rs`). A write is taken when the load
generator sent it alone (its answer came back before the next was sent: the one-client
phases); the node that appended and sent it early is its leader; the follower whose answer
came first is the one that made it committed.

With `--turnaround N`: what follows a commit notice on the leader whose next batch holds N
writes (the N-client phase): when the 1st, middle and last responses leave the handlers,
reach the load generator and come back as the next writes, and when the next batch is captured.
"""
import bisect
import collections
import glob
import sys

# The leader's and the follower's steps, in the order a write normally takes them.
ORDER = ['client.send', 'rpc.in', 'batch.start', 'propose', 'log.append', 'early.call',
         'f.in', 'f.out', 'log.flushed', 'early.answer', 'repl.call', 'repl.used',
         'sm.apply', 'answer', 'rpc.out', 'client.recv', 'sm.applied']
# Steps that overlap the ones above, worth reading on their own.
SPANS = [('log.append', 'log.flushed'), ('early.call', 'early.answer'), ('f.in', 'f.out'),
         ('f.in', 'f.log.append'), ('f.log.append', 'f.log.flushed'),
         ('f.log.flushed', 'f.out'), ('log.flushed', 'repl.call'),
         ('early.answer', 'repl.used'), ('repl.used', 'sm.apply'), ('sm.apply', 'rpc.out'),
         ('answer', 'in_place'), ('in_place', 'sm.applied')]
UNINDEXED = ['rpc.in', 'batch.start', 'propose']
# Stamped only by builds that have the step (the commit in place at early commit).
OPTIONAL = ['in_place']
INDEXED = ['log.flushed', 'early.call', 'early.answer', 'repl.call', 'repl.used',
           'sm.apply', 'answer', 'rpc.out', 'sm.applied', 'in_place']


class Process:
    def __init__(self, path):
        self.times = collections.defaultdict(list)  # point -> sorted times
        self.indexed = collections.defaultdict(dict)  # point -> index -> first time
        self.appends = []  # (time, index) of log.append
        for line in open(path):
            point, index, ns = line.split('\t')
            index, ns = int(index), int(ns)
            self.times[point].append(ns)
            if point == 'log.append':
                self.appends.append((ns, index))
            if index and index not in self.indexed[point]:
                self.indexed[point][index] = ns
        for times in self.times.values():
            times.sort()
        self.appends.sort()
        self.append_times = [t for t, _ in self.appends]

    def first_within(self, point, a, b):
        times = self.times.get(point, [])
        k = bisect.bisect_left(times, a)
        return times[k] if k < len(times) and times[k] <= b else None

    def at(self, point, index):
        return self.indexed.get(point, {}).get(index)


def pct(values, q):
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else float('nan')


def writes(client, nodes):
    sends, recvs = client.times['client.send'], client.times['client.recv']
    for k in range(1, len(sends) - 1):
        s = sends[k]
        r_at = bisect.bisect_left(recvs, s)
        if r_at == 0 or r_at >= len(recvs):
            continue
        r = recvs[r_at]
        if not (recvs[r_at - 1] < s and r < sends[k + 1]):
            continue  # not alone: a multi-client phase
        for node in nodes:
            a = bisect.bisect_left(node.append_times, s)
            if a >= len(node.appends) or node.appends[a][0] > r:
                continue
            t_append, index = node.appends[a]
            if node.at('early.call', index) is None:
                continue  # a follower's append
            w = {'client.send': s, 'client.recv': r, 'log.append': t_append}
            for point in UNINDEXED:
                w[point] = node.first_within(point, s, r)
            for point in INDEXED:
                w[point] = node.at(point, index)
            answers = []
            for f in nodes:
                if f is node or f.at('f.out', index) is None:
                    continue
                answers.append((f.at('f.out', index), f))
            if answers:
                _, f = min(answers, key=lambda a: a[0])
                for point in ['f.in', 'f.out']:
                    w[point] = f.at(point, index)
                for point in ['log.append', 'log.flushed']:
                    w['f.' + point] = f.at(point, index)
            if all(w.get(p) is not None for p in ORDER + [b for _, b in SPANS] if p not in OPTIONAL):
                yield w
            break


def main(directory):
    processes = [Process(p) for p in glob.glob(directory + '/timeline-*.tsv')]
    clients = [p for p in processes if p.times.get('client.send')]
    if len(clients) != 1:
        sys.exit(f'{directory}: expected one load generator\'s stamps, found {len(clients)}')
    nodes = [p for p in processes if p is not clients[0]]
    found = list(writes(clients[0], nodes))
    if not found:
        sys.exit(f'{directory}: no one-client write with every stamp')
    print(f'{len(found)} one-client writes with every stamp; µs')
    print(f'{"step":<30} {"p10":>7} {"p50":>7} {"p90":>7}')
    for steps in (list(zip(ORDER, ORDER[1:])), SPANS):
        for a, b in steps:
            values = [(w[b] - w[a]) / 1000 for w in found
                      if w.get(a) is not None and w.get(b) is not None]
            if not values:
                continue
            print(f'{a + " -> " + b:<30} {pct(values, .1):7.1f} {pct(values, .5):7.1f} '
                  f'{pct(values, .9):7.1f}')
        print()
    total = [(w['client.recv'] - w['client.send']) / 1000 for w in found]
    print(f'{"client.send -> client.recv":<30} {pct(total, .1):7.1f} {pct(total, .5):7.1f} '
          f'{pct(total, .9):7.1f}')


# `batch.start` is stamped where the batch is captured: the writes that came while it
# gathered ran before (run ahead).
NEXT = 'the next batch is captured'


def turnaround(directory, n):
    processes = [Process(p) for p in glob.glob(directory + '/timeline-*.tsv')]
    client = [p for p in processes if p.times.get('client.send')][0]
    leader = max(processes, key=lambda p: len(p.times.get('early.call', [])))
    rpc_in, rpc_out = leader.times['rpc.in'], leader.times['rpc.out']
    starts, recvs = leader.times['batch.start'], client.times['client.recv']
    picks = [0, n // 2 - 1, n - 1]
    rows = collections.defaultdict(list)

    def after(times, t):
        return times[bisect.bisect_right(times, t):][:n]

    # The writers are answered at `answer` (early commit's notice), before the state
    # machine's apply; builds without that stamp answered at the apply.
    for t in leader.times.get('answer') or leader.times['sm.apply']:
        b = bisect.bisect_right(starts, t)
        if b >= len(starts):
            continue
        arrived = after(rpc_in, t)
        if bisect.bisect_right(rpc_in, starts[b]) - bisect.bisect_right(rpc_in, t) != n:
            continue  # not a batch of n writers
        for name, times in [('response handed to tonic', after(rpc_out, t)),
                            ('answer at the load generator', after(recvs, t)),
                            ('next write at the handler', arrived)]:
            if len(times) == n:
                for k in picks:
                    rows[f'{k + 1} of {n}: {name}'].append((times[k] - t) / 1000)
        rows[NEXT].append((starts[b] - t) / 1000)
    if not rows:
        sys.exit(f'{directory}: no batch of {n} writers')
    print(f'{len(rows[NEXT])} commit notices followed by a batch of {n}; '
          'µs after the notice')
    for name, values in rows.items():
        print(f'{name:<45} {pct(values, .1):7.0f} {pct(values, .5):7.0f} '
              f'{pct(values, .9):7.0f}')


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[2] == '--turnaround':
        turnaround(sys.argv[1], int(sys.argv[3]))
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit(__doc__)
