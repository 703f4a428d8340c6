#!/usr/bin/env python3
"""Catch-up throughput with 1, 2 and 4 `projector run` instances sharing partitions (issue #9).

Use `bench/scale` (it starts the stack and builds the release binary). One generated
history is published once; then, from an empty graph each time:

  single     one instance, `[partitions] count = 1` (the reference: no partitions, no leases)
  n = 1,2,4  n instances with `count = --partitions`, timed from their start until every
             partition of every stream has stored the stream's last sequence

Results: bench/results/scale.json and a markdown table on stdout.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dev"))
import stackreset  # noqa: E402

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
NEO4J_URI = os.environ.get("NEO4J_URI", "bolt://127.0.0.1:7687")
VALKEY_URL = os.environ.get("VALKEY_URL", "redis://127.0.0.1:6379")
PROJECTED = ["SCALE_PLANNING_EVENTS", "SCALE_CONTEXT_EVENTS", "SCALE_ORCHESTRATOR_EVENTS", "SCALE_AGENT_RESPONSES"]
ALL_STREAMS = PROJECTED + ["SCALE_AGENT_COMMANDS", "SCALE_PROJECTOR_DLQ"]


def log(msg):
    print(f"scale: {msg}", file=sys.stderr, flush=True)


def config(partitions, ttl):
    """The bench config under its own names (SCALE_*, scale-main, scale:), with partitions."""
    text = (ROOT / "bench" / "projector.toml").read_text()
    text = text.replace("BENCH_", "SCALE_").replace('"bench.', '"scale.').replace('"bench:', '"scale:')
    text = text.replace("bench-main", "scale-main")
    text = text.replace("# A projector reads some streams",
                        f'[partitions]\ncount = {partitions}\nlease_ttl = "{ttl}s"\n'
                        f'lease_bucket = "SCALE_LEASES"\n\n# A projector reads some streams')
    path = ROOT / "bench" / "results" / f"scale-p{partitions}.toml"
    path.write_text(text)
    return path


def sh(args, env):
    log("$ " + " ".join(str(a) for a in args))
    p = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"scale: {args[1]} exited {p.returncode}")
    return p.stdout


async def reset_graph():
    """Empties the graph, caches and leases of this benchmark; the streams stay."""
    import nats

    await stackreset.reset(NATS_URL, NEO4J_URI, VALKEY_URL, [], "scale.", ["scale"], ["scale:"])
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for name in ["KV_SCALE_LEASES"]:
        try:
            await js.delete_stream(name)
        except Exception as e:
            if "not found" not in str(e).lower():
                raise
    # Durable consumers of the previous round would start where it ended.
    for s in PROJECTED:
        for c in await js.consumers_info(s):
            await js.delete_consumer(s, c.name)
    await nc.close()


async def caught_up(partitions):
    """Whether every partition of every projected stream stored the stream's last sequence."""
    import nats
    from neo4j import AsyncGraphDatabase

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    last = {s: (await js.stream_info(s)).state.last_seq for s in PROJECTED}
    await nc.close()
    d = AsyncGraphDatabase.driver(NEO4J_URI, auth=None)
    async with d.session() as s:
        r = await s.run("MATCH (c:Checkpoint {gen: 'scale-main'}) RETURN c.stream AS s, c.partition AS p, c.seq AS q")
        got = {(rec["s"], rec["p"]): rec["q"] async for rec in r}
    await d.close()
    return all(got.get((s, p)) == last[s] for s in PROJECTED for p in range(partitions))


def cpu_seconds(pid):
    """User + system CPU seconds a process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def neo4j_pid():
    run = Path(os.environ.get("STACK_DIR", ROOT / ".local")) / "run" / "neo4j.pid"
    return int(run.read_text().strip())


def timed_instances(binary, cfg, n, partitions, first_port):
    """Seconds until caught up, and the CPU cores Neo4j and the instances used meanwhile."""
    env = dict(os.environ, PROJECTOR_CONFIG=str(cfg), PROJECTOR_LOG=os.environ.get("PROJECTOR_LOG", "warn"))
    asyncio.run(reset_graph())
    neo = neo4j_pid()
    neo0 = cpu_seconds(neo)
    t0 = time.monotonic()
    procs = [subprocess.Popen([binary, "run", "--instance", f"i{i}", "--metrics-addr", f"127.0.0.1:{first_port + i}"],
                              env=env) for i in range(n)]
    last_cpu = {p.pid: 0.0 for p in procs}
    try:
        while not asyncio.run(caught_up(partitions)):
            if any(p.poll() is not None for p in procs):
                raise SystemExit("scale: an instance exited early")
            for p in procs:
                last_cpu[p.pid] = max(last_cpu[p.pid], cpu_seconds(p.pid))
            time.sleep(0.5)
        secs = time.monotonic() - t0
        for p in procs:
            last_cpu[p.pid] = max(last_cpu[p.pid], cpu_seconds(p.pid))
        return secs, dict(neo4j_cores=round((cpu_seconds(neo) - neo0) / secs, 2),
                          projector_cores=round(sum(last_cpu.values()) / secs, 2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "projector"))
    ap.add_argument("--stories", type=int, default=720, help="stories to generate (~28 events each)")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--instances", default="1,2,4")
    ap.add_argument("--port", type=int, default=19490, help="metrics ports from here")
    args = ap.parse_args()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    single = config(1, 10)
    parted = config(args.partitions, 10)
    env = dict(os.environ, PROJECTOR_CONFIG=str(single), PROJECTOR_LOG="warn")
    asyncio.run(stackreset.reset(NATS_URL, NEO4J_URI, VALKEY_URL, ALL_STREAMS, "scale.", ["scale"], ["scale:"]))
    sh([args.binary, "streams", "ensure"], env)
    out = sh([args.binary, "bench", "gen", "--stories", args.stories, "--seed", 5, "--publish"], env)
    events = int(re.search(r"published (\d+) events", out).group(1))
    results = dict(started=datetime.now(timezone.utc).isoformat(timespec="seconds"), events=events,
                   partitions=args.partitions, cores=os.cpu_count(), rows=[])
    # A cold Neo4j JVM is twice as slow (docs/benchmarks.md): warm it with a scratch ceiling run.
    sh([args.binary, "bench", "ceiling", "--stories", 300, "--seed", 99, "--generation", "scale-warmup"], env)
    sh([args.binary, "generations", "drop", "scale-warmup", "--yes"], env)

    def single_round(label):
        secs, cpu = timed_instances(args.binary, single, 1, 1, args.port)
        results["rows"].append(dict(instances=1, partitions=1, seconds=round(secs, 1), events_per_s=round(events / secs),
                                    note=label, **cpu))
        log(f"single ({label}): {events / secs:.0f} events/s")

    single_round("first")
    for n in [int(x) for x in args.instances.split(",")]:
        secs, cpu = timed_instances(args.binary, parted, n, args.partitions, args.port)
        results["rows"].append(dict(instances=n, partitions=args.partitions, seconds=round(secs, 1),
                                    events_per_s=round(events / secs), **cpu))
        log(f"{n} instance(s), {args.partitions} partitions: {events / secs:.0f} events/s")
    single_round("again, last")  # the same reference after the others: drift of the machine
    (ROOT / "bench" / "results" / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{events} events, {results['cores']} cores\n\n| instances | partitions | seconds | events/s | Neo4j cores | projector cores |\n|---|---|---|---|---|---|")
    for r in results["rows"]:
        note = f" ({r['note']})" if r.get("note") else ""
        print(f"| {r['instances']}{note} | {r['partitions']} | {r['seconds']} | {r['events_per_s']} | "
              f"{r['neo4j_cores']} | {r['projector_cores']} |")


if __name__ == "__main__":
    main()
