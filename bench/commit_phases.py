#!/usr/bin/env python3
"""Commit time per window of a live run, from its trace log (docs/benchmarks.md, Latency).

    PROJECTOR_LOG=info,engine::worker=trace projector run --log-format json 2> live.log
    projector bench load --rate 200 --duration 60s --first-story 870001 --seed 1
    bench/commit_phases.py live.log [--window 10]

Reads the workers' `commit phases` lines (fetch-to-ack of one batch: the graph transaction
including the wait for a transaction slot, the Valkey step, the outbox) and prints, per
window of seconds since the first batch, how many batches committed and their p50, p99
and max in milliseconds.
"""

import argparse
import json
from collections import defaultdict
from datetime import datetime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--window", type=int, default=10, help="seconds per row")
    args = ap.parse_args()
    windows, t0 = defaultdict(list), None
    with open(args.log) as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("message") != "commit phases":
                continue
            t = datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp()
            t0 = t if t0 is None else t0
            windows[int((t - t0) // args.window)].append(d["total_ms"])
    if not windows:
        raise SystemExit("no `commit phases` lines: run with PROJECTOR_LOG=...,engine::worker=trace --log-format json")
    print(f"{'from s':>6} {'batches':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for k in sorted(windows):
        xs = sorted(windows[k])
        print(f"{k * args.window:>6} {len(xs):>8} {xs[len(xs) // 2]:>8.1f} {xs[int(0.99 * (len(xs) - 1))]:>8.1f} {xs[-1]:>8.1f}")


if __name__ == "__main__":
    main()
