#!/usr/bin/env python3
"""The change feed under load (issue #21; docs/benchmarks.md, "The change feed").

Empties the bench streams and graph, starts `projector run`, and loads RATE events/s twice
for --meas seconds after a warm-up: once with no feed client, once while `projector bench
feed` holds --clients connections to GET /v1/changes. Prints and writes to
bench/results/feed.json, per phase: publish-to-commit p50/p99 (the projector's histogram),
the projector's CPU (% of one core) and peak RSS; for the loaded phase also the feed
delivery latency (changelog entry, written right after the commit, to arrival) p50/p99/max,
events delivered, clients dropped or lost, and the CPU of the client process (it shares the
machine's cores with the projector and the servers).

Run after `bench/run` set up the stack and venv:
  .local/venv/bin/python bench/feed.py [--clients 1000] [--rate 200] [--meas 30]"""
import argparse, asyncio, json, os, subprocess, sys, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench")); sys.path.insert(0, str(ROOT / "dev"))
import harness as H

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "projector"))
ap.add_argument("--clients", type=int, default=1000)
ap.add_argument("--rate", default="200")
ap.add_argument("--warm", type=int, default=20)
ap.add_argument("--meas", type=int, default=30)
a = ap.parse_args()

env = dict(os.environ, PROJECTOR_CONFIG=str(H.CONFIG), PROJECTOR_LOG=os.environ.get("PROJECTOR_LOG", "warn"))
b = a.binary
port = 19475
M = f"http://127.0.0.1:{port}/metrics"


def cpu_seconds(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def load(secs, first):
    H.sh([b, "bench", "load", "--rate", a.rate, "--duration", f"{secs}s", "--first-story", str(first), "--seed", "1"], env=env)


def phase(live, name, secs, first, clients):
    H.wait_lag_zero(M)
    before, _ = H.scrape(M)
    rss = H.RssSampler(live.pid)
    c0, t0 = cpu_seconds(live.pid), time.monotonic()
    feed = None
    if clients:
        feed = subprocess.Popen([b, "bench", "feed", "--url", f"http://127.0.0.1:{port}", "--clients", str(clients),
                                 "--duration", f"{secs + 10}s"], stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(3)  # every client connected and caught up before the load starts
    f0 = cpu_seconds(feed.pid) if feed else 0.0
    ft0 = time.monotonic()
    load(secs, first)
    time.sleep(3)
    H.wait_lag_zero(M)
    c1, t1 = cpu_seconds(live.pid), time.monotonic()
    # The clients share the 2 cores: their CPU, while they still run, says how much.
    feed_cpu = round(100 * (cpu_seconds(feed.pid) - f0) / (t1 - ft0), 1) if feed else None
    after, _ = H.scrape(M)
    row = dict(phase=name, clients=clients, rate=float(a.rate), seconds=secs,
               publish_to_commit_ms=H.quantiles(before, after),
               projector_cpu_pct=round(100 * (c1 - c0) / (t1 - t0), 1), projector_rss=rss.finish())
    if feed:
        out, _ = feed.communicate()
        if feed.returncode != 0:
            raise H.Failed(f"bench feed exited {feed.returncode}")
        row["feed"] = json.loads(out.strip().splitlines()[-1])
        row["feed_clients_cpu_pct"] = feed_cpu
    H.log(json.dumps(row))
    return row


asyncio.run(H.reset())
H.sh([b, "streams", "ensure"], env=env)
live = subprocess.Popen([b, "run", "--metrics-addr", f"127.0.0.1:{port}"], env=env)
try:
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1); break
        except Exception:
            time.sleep(0.2)
    H.wait_lag_zero(M)
    load(a.warm, 800001)
    rows = [phase(live, "no feed clients", a.meas, 810001, 0),
            phase(live, f"{a.clients} feed clients", a.meas, 820001, a.clients)]
finally:
    live.terminate(); live.wait()
out = ROOT / "bench" / "results" / "feed.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(rows, indent=2) + "\n")
print(json.dumps(rows, indent=2))
