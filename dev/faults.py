#!/usr/bin/env python3
"""The fault-injection suite (issue #8), against the real local stack. Use `dev/faults`.

One history (generated events plus a 1% poison mix: truncated, non-JSON, wrong-typed,
missing-field and unknown-subject messages, and good events in MessagePack), a live
`projector run`, and faults while it writes:

  crashes   kill -9 of the projector at random moments (seeded), restarted each time
  nats      NATS restarted (SIGTERM, start again on the same store)
  neo4j     Neo4j killed with SIGKILL and started again (store recovery)
  valkey    Valkey restarted
  stall     Neo4j frozen with SIGSTOP for --stall-seconds, then SIGCONT

Poison also lands on real stories of the history (issue #17): a wrong-typed approval or a
wrong-typed deliberation of story S, then later events of S on its stream (parked behind it)
and on other streams (they project: a block holds on its own stream only, D58). Mid-run, an
operator discards and retries some of them (`dlq discard`, `dlq retry --story`), which a
rebuild must honour. Before each fault a burst of new events is published so the projector
is writing when it hits. Then a second scenario on a 3-node JetStream cluster (three nats-server processes on
loopback, R3 streams; the projector given the three URLs): the planning stream's leader is
killed with SIGKILL while the projector catches up, events are published to the two
survivors, and the node is restarted. After each scenario, the invariants of issue #8:

  - `projector verify --against-rebuild`: the live graph equals a clean rebuild
  - parked = exactly the poison and the events behind it on its story's stream, less what
    the operator discarded or retried; each with a reason
  - a retried deliberation published its context.updated (the retry emits what live would)
  - each projected deliberation.completed gave exactly one context.updated (none doubled)
  - the projector is still running and /readyz says ready

Writes .local/faults/<name>.json and prints a markdown summary. Exit 1 if any invariant
fails.
"""

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stackreset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".local" / "faults"
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
NEO4J_URI = os.environ.get("NEO4J_URI", "bolt://127.0.0.1:7687")
VALKEY_URL = os.environ.get("VALKEY_URL", "redis://127.0.0.1:6379")
RUN_DIR = Path(os.environ.get("STACK_DIR", ROOT / ".local")) / "run"
PREFIX = "faults."


def log(msg):
    print(f"faults: {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


def config():
    """The bench config with its own names: this suite never touches other data."""
    text = (ROOT / "bench" / "projector.toml").read_text()
    text = text.replace("BENCH_", "FAULTS_").replace('"bench.', '"faults.').replace('"bench:', '"faults:')
    text = text.replace("bench-main", "faults-main")
    path = WORK / "projector.toml"
    path.write_text(text)
    return path


def sh(args, env, check=True):
    p = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if check and p.returncode != 0:
        raise Failed(f"{' '.join(str(a) for a in args[:3])} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    return p


def stack(*args):
    subprocess.run([ROOT / "dev" / "stack", *args], check=True, stdout=sys.stderr)


def pid_of(service):
    return int((RUN_DIR / f"{service}.pid").read_text().strip())


async def reset(streams, nats_url=NATS_URL, prefix="faults"):
    await stackreset.reset(nats_url, NEO4J_URI, VALKEY_URL, streams, prefix + ".", [prefix], [prefix + ":"])


def poison(n, seed):
    """n bad messages (subject, payload, headers) and the good MessagePack ones, each on its
    own story: a parked event holds back its story's later events, by design."""
    import msgpack

    rng = random.Random(seed)
    bad, good = [], []
    for i in range(n):
        story = f"US-BAD-{i:04d}"
        kind = i % 6
        if kind == 0:  # truncated JSON
            bad.append(("planning.story.created", f'{{"story_id": "{story}", "title": "cut'.encode(), None))
        elif kind == 1:  # not JSON at all
            bad.append(("planning.plan.approved", bytes(rng.randrange(256) for _ in range(40)), None))
        elif kind == 2:  # wrong type: plan_id must be a string
            bad.append(("planning.plan.approved", json.dumps({"story_id": story, "plan_id": 42, "approved_by": "po"}).encode(), None))
        elif kind == 3:  # missing a required field
            bad.append(("planning.task.created", json.dumps({"story_id": story, "title": "no task id"}).encode(), None))
        elif kind == 4:  # a subject the catalog does not have
            bad.append(("planning.story.exploded", json.dumps({"story_id": story}).encode(), None))
        else:  # says MessagePack, is JSON
            bad.append(("planning.story.created", json.dumps({"story_id": story, "title": "x", "created_by": "po"}).encode(),
                        {"Content-Type": "application/msgpack"}))
        mp_story = f"US-MP-{i:04d}"
        good.append(("planning.story.created",
                      msgpack.packb({"story_id": mp_story, "title": f"msgpack story {i}", "created_by": "po-mp",
                                     "timestamp": "2026-02-01T00:00:00Z"}),
                      {"Content-Type": "application/msgpack"}))
    return bad, good


def real_story_poison(n, first_story):
    """Poison on n real stories of the history (US-<first_story>...), with later events of each
    on several streams: (messages in publish order, {story: plan}). Even stories get a
    wrong-typed approval on the planning stream, then a transition (parked behind it), a
    milestone and a deliberation (other streams: they project); odd stories a wrong-typed
    deliberation, then a good one (parked behind it) and a transition (projects).
    The plan says what the operator does mid-run: "keep" (left parked), "discard" (the
    poison discarded, then the story retried: the event behind it projects), "retry"
    (retried while the poison still fails: held back; then both discarded)."""
    msgs, plan = [], {}
    t = "2026-03-01T00:00:00Z"
    for i in range(n):
        story = f"US-{first_story + i:04d}"
        plan[story] = ["keep", "discard", "retry"][i % 3]
        if i % 2 == 0:
            msgs.append(("planning.plan.approved", {"story_id": story, "plan_id": 12345, "approved_by": "po"}))
            msgs.append(("planning.story.transitioned", {"story_id": story, "from_phase": "DONE",
                                                          "to_phase": "ARCHIVED", "transitioned_by": "po", "timestamp": t}))
            msgs.append(("context.milestone.reached", {"story_id": story, "milestone": "FAULTS", "timestamp": t}))
            msgs.append(("orchestration.deliberation.completed", {
                "story_id": story, "task_id": f"T-F{i}", "timestamp": t,
                "decisions": [{"id": f"D-F{i}", "title": "after the poison", "rationale": "other stream", "decided_by": "arch"}]}))
        else:
            msgs.append(("orchestration.deliberation.completed", {"story_id": story, "task_id": 7, "decisions": "none"}))
            msgs.append(("orchestration.deliberation.completed", {
                "story_id": story, "task_id": f"T-F{i}", "timestamp": t,
                "decisions": [{"id": f"D-F{i}", "title": "behind the poison", "rationale": "same stream", "decided_by": "arch"}]}))
            msgs.append(("planning.story.transitioned", {"story_id": story, "from_phase": "DONE",
                                                          "to_phase": "ARCHIVED", "transitioned_by": "po", "timestamp": t}))
    return [(subj, json.dumps(body).encode(), None) for subj, body in msgs], plan


def operator_actions(b, env, plan):
    """The operator's mid-run decisions on the real-story poison (see real_story_poison):
    returns (ids discarded, ids re-projected)."""
    parked = json.loads(sh([b, "dlq", "list", "--json"], env).stdout)
    by_story = {}
    for p in parked:
        by_story.setdefault(p.get("story_id"), []).append(p)
    discarded, projected = [], []
    for story, what in sorted(plan.items()):
        mine = sorted(by_story.get(story, []), key=lambda p: p["seq"])
        if len(mine) != 2:
            raise Failed(f"{story}: expected its poison and the event behind it parked, found {[p['id'] for p in mine]}")
        poison_id = mine[0]["id"]
        op = dict(env, PROJECTOR_OPERATOR="faults-suite")
        if what == "discard":
            sh([b, "dlq", "discard", poison_id], op)
            r = json.loads(sh([b, "dlq", "retry", "--story", story, "--json"], op).stdout)
            discarded.append(poison_id)
            projected += r["projected"]
        elif what == "retry":
            r = json.loads(sh([b, "dlq", "retry", "--story", story, "--json"], op, check=False).stdout)
            if r["projected"] or len(r["held_back"]) != 1:
                raise Failed(f"{story}: a retry behind a still-failing poison projected {r['projected']}, held back {r['held_back']}")
            ids = [p["id"] for p in mine]
            sh([b, "dlq", "discard", *ids], op)
            discarded += ids
    log(f"operator: discarded {len(discarded)}, re-projected {len(projected)} parked events")
    return discarded, projected


async def publish_raw(messages):
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for subject, payload, headers in messages:
        await js.publish(PREFIX + subject, payload, headers=headers)
    await nc.close()


async def outbound_counts(streams, servers=(NATS_URL,), prefix=PREFIX):
    """(context.updated messages, deliberation.completed messages) in the streams."""
    import nats

    nc = await nats.connect(servers=list(servers))
    js = nc.jetstream()
    ctx = await js.stream_info(streams["context"], subjects_filter=prefix + "context.updated")
    orch = await js.stream_info(streams["orchestration"], subjects_filter=prefix + "orchestration.deliberation.completed")
    await nc.close()
    count = lambda info: sum((info.state.subjects or {}).values())
    return count(ctx), count(orch)


class Projector:
    """The live `projector run`, restartable; its stderr is appended to one log."""

    def __init__(self, binary, env, port, log_name="run.log"):
        self.binary, self.env, self.port = binary, env, port
        self.log_path = WORK / log_name
        self.log = open(self.log_path, "a")
        self.p = None

    def start(self):
        self.p = subprocess.Popen([self.binary, "run", "--metrics-addr", f"127.0.0.1:{self.port}"],
                                  env=self.env, stdout=self.log, stderr=self.log)

    def kill9(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except Exception:
            return None, ""

    def lag(self):
        status, text = self.get("/metrics")
        if status != 200:
            return None
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("projector_lag{"))

    def checkpoints(self):
        """{stream: checkpoint} from /metrics, or None when it does not answer."""
        status, text = self.get("/metrics")
        if status != 200:
            return None
        out = {}
        for line in text.splitlines():
            m = re.match(r'projector_checkpoint_sequence\{.*stream="([^"]+)".*\} (\S+)$', line)
            if m:
                out[m.group(1)] = int(float(m.group(2)))
        return out

    def wait_caught_up(self, timeout, servers):
        """Until ready, with every stream's checkpoint at the stream's last sequence twice in a
        row 1 s apart (the lag gauge alone can miss a batch in flight or an outbound event
        about to be published to a stream the projector reads)."""
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            if not self.alive():
                raise Failed(f"projector exited ({self.p.returncode}); see {self.log_path}")
            status, _ = self.get("/readyz")
            ckpts = self.checkpoints()
            if status == 200 and ckpts and self.lag() == 0:
                lasts = asyncio.run(last_seqs(servers, list(ckpts)))
                streak = streak + 1 if all(ckpts[s] == lasts[s] for s in ckpts) else 0
                if streak == 2:
                    return
            else:
                streak = 0
            time.sleep(1)
        raise Failed(f"projector not caught up within {timeout}s (lag {self.lag()}, checkpoints {self.checkpoints()})")


async def last_seqs(servers, streams):
    import nats

    nc = await nats.connect(servers=list(servers))
    js = nc.jetstream()
    try:
        return {s: (await js.stream_info(s)).state.last_seq for s in streams}
    finally:
        await nc.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "projector"))
    ap.add_argument("--stories", type=int, default=720, help="stories in the first history (~28 events each)")
    ap.add_argument("--crashes", type=int, default=20)
    ap.add_argument("--burst", type=int, default=3000, help="events published before each fault")
    ap.add_argument("--stall-seconds", type=float, default=70, help="SIGSTOP length (ack wait is 60 s)")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--name", default="latest")
    ap.add_argument("--port", type=int, default=19470, help="metrics ports: this and the next")
    ap.add_argument("--cluster-stories", type=int, default=300, help="stories in the cluster scenario's history")
    ap.add_argument("--cluster-port", type=int, default=19480,
                    help="cluster client ports: this +0..2, routes +10..12, monitoring +20..22")
    ap.add_argument("--only", choices=["single", "cluster"],
                    help="run one scenario: the single-server faults, or the 3-node cluster")
    args = ap.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    config()
    results = {}
    if args.only != "cluster":
        results.update(run_single(args))
    if args.only != "single":
        results["cluster"] = run_cluster(args, args.binary)
    (WORK / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(summary(results))
    failed = [k for k, ok in results.get("checks", {}).items() if not ok]
    failed += [f"cluster: {k}" for k, ok in results.get("cluster", {}).get("checks", {}).items() if not ok]
    if failed:
        raise Failed("invariant failed: " + ", ".join(failed))


def run_single(args):
    """The single-server scenario: history with poison, crashes and server faults."""
    cfg = WORK / "projector.toml"
    (WORK / "run.log").write_text("")
    env = dict(os.environ, PROJECTOR_CONFIG=str(cfg), PROJECTOR_LOG=os.environ.get("PROJECTOR_LOG", "info"))
    b = args.binary
    streams = {"planning": "FAULTS_PLANNING_EVENTS", "context": "FAULTS_CONTEXT_EVENTS",
               "orchestration": "FAULTS_ORCHESTRATOR_EVENTS", "commands": "FAULTS_AGENT_COMMANDS",
               "responses": "FAULTS_AGENT_RESPONSES", "dlq": "FAULTS_PROJECTOR_DLQ"}
    rng = random.Random(args.seed)
    asyncio.run(reset(list(streams.values())))
    sh([b, "streams", "ensure"], env)
    out = sh([b, "bench", "gen", "--stories", args.stories, "--seed", args.seed, "--publish"], env).stdout
    events = int(re.search(r"published (\d+) events", out).group(1))
    n_bad = max(6, events // 100)
    bad, good = poison(n_bad, args.seed)
    # Interleave: poison and MessagePack messages land among the generated ones' sequences.
    asyncio.run(publish_raw([m for pair in zip(bad, good) for m in pair]))
    n_real = max(6, args.stories // 40)
    real, plan = real_story_poison(n_real, 1)
    asyncio.run(publish_raw(real))
    log(f"history: {events} generated events, {len(bad)} poison, {len(good)} good MessagePack, "
        f"{n_real} real stories poisoned ({len(real)} messages)")

    results = dict(events=events, poison=len(bad), msgpack_good=len(good), real_poisoned=n_real, faults=[])
    proj = Projector(b, env, args.port)
    proj.start()
    try:
        run_faults(args, b, env, rng, proj, results, events + len(real), bad, good, streams, n_bad, plan)
    finally:
        if proj.alive():
            proj.p.terminate()
            proj.p.wait(timeout=60)
    return results


def run_faults(args, b, env, rng, proj, results, events, bad, good, streams, n_bad, plan):
    next_story = 600001

    def burst():
        nonlocal next_story
        rate = 3000
        secs = max(1, args.burst // rate)
        p = sh([b, "bench", "load", "--rate", rate, "--duration", f"{secs}s", "--first-story", next_story,
                "--seed", args.seed], env)
        next_story += 5000
        return json.loads(p.stdout.strip().splitlines()[-1])["published"]

    published = events + len(bad) + len(good)
    # 1. Crashes at random moments while catching up and under bursts.
    for i in range(args.crashes):
        if i % 4 == 0:
            published += burst()
        time.sleep(rng.uniform(0.2, 2.5))
        proj.kill9()
        proj.start()
    results["faults"].append(dict(fault="projector kill -9", count=args.crashes))
    log(f"{args.crashes} crashes done")

    # The operator acts on the real-story poison while the projector runs and bursts go on.
    proj.wait_caught_up(600, [NATS_URL])
    published += burst()
    discarded, projected = operator_actions(b, env, plan)
    results["faults"].append(dict(fault="dlq discard/retry mid-run", count=len(discarded) + len(projected)))

    # 2. Server faults, each right after a burst, so the projector is writing.
    def server_fault(name, action):
        nonlocal published
        published += burst()
        time.sleep(0.5)
        t0 = time.monotonic()
        action()
        results["faults"].append(dict(fault=name, count=1, seconds=round(time.monotonic() - t0, 1)))
        log(f"{name} done")

    server_fault("NATS restart", lambda: stack("restart", "nats"))

    def neo4j_kill():
        os.kill(pid_of("neo4j"), signal.SIGKILL)
        time.sleep(1)
        stack("start", "neo4j")

    server_fault("Neo4j kill -9 and restart", neo4j_kill)
    server_fault("Valkey restart", lambda: stack("restart", "valkey"))

    def stall():
        pid = pid_of("neo4j")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(args.stall_seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    server_fault(f"Neo4j SIGSTOP {args.stall_seconds:.0f} s", stall)

    # 3. The invariants.
    proj.wait_caught_up(600, [NATS_URL])
    checks, counts = invariants(b, env, proj, streams, bad, [NATS_URL], PREFIX, plan)
    results.update(published=published, checks=checks, **counts)


def expected_real_parked(plan):
    """(subject, story) of each real-story event still parked at the end: the poison and
    the event behind it of the stories the operator left alone."""
    out = []
    for i, (story, what) in enumerate(sorted(plan.items())):
        if what != "keep":
            continue
        n = int(story.removeprefix("US-")) - 1
        if n % 2 == 0:
            out += [("planning.plan.approved", story), ("planning.story.transitioned", story)]
        else:
            out += [("orchestration.deliberation.completed", story)] * 2
    return out


def invariants(b, env, proj, streams, bad, servers, prefix, plan=None):
    """Issue #8's and #17's invariants once the projector is caught up: ({check: ok}, counts)."""
    plan = plan or {}
    checks = {}
    v = sh([b, "verify", "--against-rebuild"], env, check=False)
    checks["live graph equals a clean rebuild"] = v.returncode == 0
    if v.returncode != 0:
        log(v.stdout + v.stderr)
    parked = json.loads(sh([b, "dlq", "list", "--json"], env).stdout)
    real = [p for p in parked if p.get("story_id") in plan]
    other = [p for p in parked if p.get("story_id") not in plan]
    # Poison whose story id cannot be read (truncated, not JSON) is parked with none.
    parked_subjects = sorted(p["subject"].removeprefix(prefix) for p in other)
    checks["every poison message parked, with a reason"] = (
        parked_subjects == sorted(m[0] for m in bad) and all(p["reason"] for p in parked))
    checks["no good event parked"] = all(p.get("story_id") is None or p["story_id"].startswith("US-BAD-") for p in other)
    got_real = sorted((p["subject"].removeprefix(prefix), p["story_id"]) for p in real)
    checks["real stories: exactly the poison and what is behind it on its stream, less the operator's"] = (
        got_real == sorted(expected_real_parked(plan)))
    if not checks["real stories: exactly the poison and what is behind it on its stream, less the operator's"]:
        log(f"real-story parked: {got_real}\nexpected: {sorted(expected_real_parked(plan))}")
    ctx, delib = asyncio.run(outbound_counts(streams, servers, prefix))
    # Deliberations that never projected: parked at the end, or discarded by the operator
    # (the wrong-typed ones of odd stories, and both of a "retry" story).
    unprojected = sum(1 for p in parked if p["subject"].removeprefix(prefix) == "orchestration.deliberation.completed")
    for i, (story, what) in enumerate(sorted(plan.items())):
        odd = (int(story.removeprefix("US-")) - 1) % 2 == 1
        if odd and what == "discard":
            unprojected += 1
        elif odd and what == "retry":
            unprojected += 2
    checks["one context.updated per projected deliberation.completed"] = ctx == delib - unprojected
    status, _ = proj.get("/readyz")
    checks["projector running and ready"] = proj.alive() and status == 200
    return checks, dict(parked=len(parked), context_updated=ctx, deliberations=delib,
                        deliberations_unprojected=unprojected)


class Cluster:
    """Three nats-server processes on loopback forming one JetStream cluster (fresh stores)."""

    def __init__(self, base_port):
        self.dir = WORK / "cluster"
        self.client = [base_port + i for i in range(3)]
        self.routes = [base_port + 10 + i for i in range(3)]
        self.monitor = [base_port + 20 + i for i in range(3)]
        self.procs = [None] * 3
        self.binary = Path(os.environ.get("VENV", ROOT / ".local" / "venv")) / "bin" / "nats-server"

    @property
    def servers(self):
        return [f"nats://127.0.0.1:{p}" for p in self.client]

    def name(self, i):
        return f"n{i + 1}"

    def start(self, i):
        store = self.dir / self.name(i)
        store.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.routes)
        conf = self.dir / f"{self.name(i)}.conf"
        conf.write_text(f"""server_name: {self.name(i)}
listen: 127.0.0.1:{self.client[i]}
http: 127.0.0.1:{self.monitor[i]}
jetstream {{ store_dir: "{store}" }}
cluster {{ name: faults, listen: 127.0.0.1:{self.routes[i]}, routes: [{routes}] }}
""")
        out = open(self.dir / f"{self.name(i)}.log", "a")
        self.procs[i] = subprocess.Popen([self.binary, "-c", conf], stdout=out, stderr=out)

    def wait_ready(self, i, timeout=60):
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor[i]}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.3)
        raise Failed(f"cluster node {self.name(i)} not ready within {timeout}s; see {self.dir}")

    def up(self):
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
        for i in range(3):
            self.start(i)
        for i in range(3):
            self.wait_ready(i)

    def kill9(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def down(self):
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)


async def stream_leader(servers, stream, not_this=None, timeout=60):
    """The server name leading `stream`, once it and every other stream of the suite have a
    leader that is not `not_this` (waiting out the elections after a kill)."""
    import nats

    nc = await nats.connect(servers=servers)
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                leaders = {i.config.name: i.cluster.leader if i.cluster else None
                           for i in await js.streams_info() if i.config.name.startswith("FAULTSC_")}
                if stream in leaders and all(l and l != not_this for l in leaders.values()):
                    return leaders[stream]
            except Exception:
                pass  # the API times out or answers 503 during an election
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    raise Failed(f"no leader for every FAULTSC_ stream within {timeout}s")


def run_cluster(args, b):
    """A 3-node cluster, R3 streams, the planning stream's leader killed while projecting."""
    cluster = Cluster(args.cluster_port)
    text = (WORK / "projector.toml").read_text()
    text = text.replace("FAULTS_", "FAULTSC_").replace('"faults.', '"faultsc.').replace('"faults:', '"faultsc:')
    text = text.replace("faults-main", "faultsc-main").replace("replicas = 1", "replicas = 3")
    text = re.sub(r'(?m)^url = "nats://[^"]*"', f'url = "{",".join(cluster.servers)}"', text)
    cfg = WORK / "projector-cluster.toml"
    cfg.write_text(text)
    env = dict(os.environ, PROJECTOR_CONFIG=str(cfg), PROJECTOR_LOG=os.environ.get("PROJECTOR_LOG", "info"))
    env.pop("NATS_URL", None)  # the config's list of three servers, not the dev stack's
    streams = {"context": "FAULTSC_CONTEXT_EVENTS", "orchestration": "FAULTSC_ORCHESTRATOR_EVENTS"}
    cluster.up()
    proj = None
    try:
        asyncio.run(reset([], cluster.servers[0], "faultsc"))
        for attempt in range(60):  # the meta leader may still be in election
            if sh([b, "streams", "ensure"], env, check=False).returncode == 0:
                break
            time.sleep(1)
        else:
            sh([b, "streams", "ensure"], env)
        out = sh([b, "bench", "gen", "--stories", args.cluster_stories, "--seed", args.seed, "--publish"], env).stdout
        published = int(re.search(r"published (\d+) events", out).group(1))
        (WORK / "cluster-run.log").write_text("")
        proj = Projector(b, env, args.port + 1, "cluster-run.log")
        proj.start()
        time.sleep(2)  # mid catch-up
        stream = "FAULTSC_PLANNING_EVENTS"
        leader = asyncio.run(stream_leader(cluster.servers, stream))
        victim = int(leader[1:]) - 1
        t0 = time.monotonic()
        cluster.kill9(victim)
        new_leader = asyncio.run(stream_leader([u for i, u in enumerate(cluster.servers) if i != victim], stream, leader))
        election = time.monotonic() - t0
        log(f"cluster: killed {leader} (leader of {stream}); {new_leader} leads after {election:.1f} s")
        p = sh([b, "bench", "load", "--rate", 1000, "--duration", "2s", "--first-story", 700001, "--seed", args.seed], env)
        published += json.loads(p.stdout.strip().splitlines()[-1])["published"]
        cluster.start(victim)
        cluster.wait_ready(victim)
        proj.wait_caught_up(600, cluster.servers)
        checks, counts = invariants(b, env, proj, streams, [], cluster.servers, "faultsc.")
        return dict(published=published, leader_killed=leader, new_leader=new_leader,
                    election_seconds=round(election, 1), checks=checks, **counts)
    finally:
        if proj is not None and proj.alive():
            proj.p.terminate()
            proj.p.wait(timeout=60)
        cluster.down()


def summary(r):
    lines = []
    if "checks" in r:
        lines += single_summary(r)
    c = r.get("cluster")
    if c:
        lines += ["", f"Cluster: 3 nats-server nodes, R3 streams, {c['published']} events; {c['leader_killed']} "
                      f"(leader of the planning stream) killed with SIGKILL mid-run, {c['new_leader']} leader "
                      f"after {c['election_seconds']} s, then restarted.", "", "| invariant | result |", "|---|---|"]
        for k, ok in c["checks"].items():
            lines.append(f"| {k} | {'ok' if ok else '**FAILED**'} |")
        lines.append(f"\nParked: {c['parked']}; context.updated: {c['context_updated']} for "
                     f"{c['deliberations']} deliberation.completed.")
    return "\n".join(lines) + "\n"


def single_summary(r):
    lines = [f"{r['published']} messages published ({r['events']} generated first, bursts during the faults, "
             f"{r['poison']} poison, {r['msgpack_good']} good MessagePack, "
             f"{r.get('real_poisoned', 0)} real stories poisoned).", "",
             "| fault | injected |", "|---|---|"]
    for f in r["faults"]:
        lines.append(f"| {f['fault']} | {f['count']} |")
    lines += ["", "| invariant | result |", "|---|---|"]
    for k, ok in r["checks"].items():
        lines.append(f"| {k} | {'ok' if ok else '**FAILED**'} |")
    lines.append(f"\nParked: {r['parked']} (poison: {r['poison']}); context.updated: {r['context_updated']} for "
                 f"{r['deliberations']} deliberation.completed, {r.get('deliberations_unprojected', 0)} of "
                 "them parked or discarded.")
    return lines


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        log(f"error: {e}")
        sys.exit(1)
