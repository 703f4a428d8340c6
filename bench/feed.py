#!/usr/bin/env python3
"""The change feed under load (docs/benchmarks.md, "Change feed"): `projector run` projects
`bench load` at --rate events/s, first with no feed client, then with --clients feeds open
(`projector bench feed`). Reports, for each: publish-to-commit latency (the projector's
histogram), the projector's CPU (utime+stime over the window) and peak RSS; with the feeds,
delivery latency (commit's Valkey step to arrival at the client), events delivered, drops.

Run it with bench/feed (stack, release build, venv). Results: bench/results/feed.json.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def feeds_open(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next((float(l.split()[1]) for l in text.splitlines() if l.startswith("projector_feed_clients ")), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(harness.ROOT / "target" / "release" / "projector"))
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", default="200")
    ap.add_argument("--seconds", type=int, default=40)
    ap.add_argument("--warmup-seconds", type=int, default=20)
    ap.add_argument("--metrics-port", type=int, default=19464)
    args = ap.parse_args()
    env = dict(os.environ, PROJECTOR_CONFIG=str(harness.CONFIG), PROJECTOR_LOG=os.environ.get("PROJECTOR_LOG", "warn"))
    b, port = args.binary, args.metrics_port
    metrics = f"http://127.0.0.1:{port}/metrics"
    asyncio.run(harness.reset())
    harness.sh([b, "streams", "ensure"], env=env)
    live = subprocess.Popen([b, "run", "--metrics-addr", f"127.0.0.1:{port}"], env=env)
    result = dict(clients=args.clients, rate=float(args.rate), seconds=args.seconds)
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        else:
            raise harness.Failed("live projector never became ready")

        def measure(first, seconds):
            harness.wait_lag_zero(metrics)
            before, count0 = harness.scrape(metrics)
            rss = harness.RssSampler(live.pid)
            c0, t0 = cpu_seconds(live.pid), time.monotonic()
            out = harness.sh([b, "bench", "load", "--rate", args.rate, "--duration", f"{seconds}s",
                              "--first-story", str(first), "--seed", "7"], env=env)
            load = json.loads(out.strip().splitlines()[-1])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                after, count = harness.scrape(metrics)
                if count - count0 >= load["published"]:
                    break
                time.sleep(0.5)
            else:
                raise harness.Failed("not every published event was committed")
            cpu = (cpu_seconds(live.pid) - c0) / (time.monotonic() - t0)
            return dict(offered=load, commit=harness.quantiles(before, after),
                        cpu_cores=round(cpu, 3), rss=rss.finish())

        if args.warmup_seconds:
            # Neo4j's first live writes are slow whatever the projector does (harness.py, D21).
            measure(700001, args.warmup_seconds)
        result["without_feeds"] = measure(800001, args.seconds)
        harness.log(f"without feeds: {result['without_feeds']}")
        feed = subprocess.Popen([b, "bench", "feed", "--clients", str(args.clients),
                                 "--duration", f"{args.seconds + 25}s", "--url", f"http://127.0.0.1:{port}"],
                                env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(100):
            if (feeds_open(port) or 0) >= args.clients:
                break
            time.sleep(0.2)
        result["feeds_open"] = feeds_open(port)
        result["with_feeds"] = measure(850001, args.seconds)
        out, _ = feed.communicate(timeout=120)
        result["delivery"] = json.loads(out.strip().splitlines()[-1])
        harness.log(f"with feeds: {result['with_feeds']} delivery {result['delivery']}")
    finally:
        live.terminate()
        live.wait(timeout=60)
    out = harness.ROOT / "bench" / "results" / "feed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
