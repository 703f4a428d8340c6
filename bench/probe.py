#!/usr/bin/env python3
"""A short latency probe (docs/benchmarks.md, "Story order and node locks"): empties the bench
streams and graph (unless --no-reset), starts `projector run` with any extra args after --,
loads RATE events/s for --warm s then --meas s, and prints per phase the mean/p50/p99 of
the event latency (publish to commit), the batch time and the batch size. Run after
`bench/run` set up the stack and venv:  .local/venv/bin/python bench/probe.py [-- run args]
Prints p50/p99 of event latency, batch_seconds and batch_size per phase."""
import asyncio, json, os, re, subprocess, sys, time, urllib.request, argparse
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench")); sys.path.insert(0, str(ROOT / "dev"))
import harness as H
ap = argparse.ArgumentParser()
ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "projector"))
ap.add_argument("--rate", default="200"); ap.add_argument("--warm", type=int, default=20)
ap.add_argument("--meas", type=int, default=40); ap.add_argument("--no-reset", action="store_true")
ap.add_argument("--first", type=int, default=700001)
ap.add_argument("run_args", nargs="*")
a = ap.parse_args()
env = dict(os.environ, PROJECTOR_CONFIG=str(H.CONFIG), PROJECTOR_LOG=os.environ.get("PROJECTOR_LOG", "warn"))
b = a.binary
if not a.no_reset:
    asyncio.run(H.reset()); H.sh([b, "streams", "ensure"], env=env)
port = 19474
M = f"http://127.0.0.1:{port}/metrics"
live = subprocess.Popen([b, "run", "--metrics-addr", f"127.0.0.1:{port}", *a.run_args], env=env)
def hist(name):
    text = urllib.request.urlopen(M, timeout=5).read().decode()
    bk, cnt, s = {}, 0.0, 0.0
    for l in text.splitlines():
        if l.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', l).group(1); bk[le] = bk.get(le, 0) + float(l.rsplit(" ",1)[1])
        elif l.startswith(name + "_count"): cnt += float(l.rsplit(" ",1)[1])
        elif l.startswith(name + "_sum"): s += float(l.rsplit(" ",1)[1])
    return bk, cnt, s
def q(before, after, p):
    cum = sorted(((float("inf") if k=="+Inf" else float(k)), after[k]-before.get(k,0)) for k in after)
    tot = cum[-1][1]; lo, prev = 0, 0
    for bnd, c in cum:
        if c >= p*tot:
            if bnd == float("inf"): return lo
            return lo + (bnd-lo)*(p*tot-prev)/max(c-prev,1e-9)
        lo, prev = bnd, c
    return lo
try:
    for _ in range(100):
        try: urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1); break
        except Exception: time.sleep(0.2)
    first = a.first
    for phase, secs in (("warm", a.warm), ("meas", a.meas)):
        if secs <= 0: continue
        H.wait_lag_zero(M)
        snaps = {n: hist(n) for n in ("projector_event_latency_seconds","projector_batch_seconds","projector_batch_size")}
        H.sh([b, "bench", "load", "--rate", a.rate, "--duration", f"{secs}s", "--first-story", str(first), "--seed", "1"], env=env)
        first += 100000
        time.sleep(3); H.wait_lag_zero(M)
        out = []
        for n,(bk,c,s) in snaps.items():
            bk2,c2,s2 = hist(n); k = 1000 if "seconds" in n else 1
            dc = c2-c
            out.append(f"{n.split('_',1)[1]}: n={dc:.0f} mean={(s2-s)/max(dc,1)*k:.2f} p50={q(bk,bk2,.5)*k:.2f} p99={q(bk,bk2,.99)*k:.2f}")
        print(f"== {phase} {secs}s @{a.rate}: " + " | ".join(out), flush=True)
finally:
    live.terminate(); live.wait()
