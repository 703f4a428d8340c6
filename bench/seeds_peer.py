#!/usr/bin/env python3
"""The seeds' approach, as the peer a user would otherwise run (benchmark scenario 3).

Written the way the seeds' *corrected* Context service is (seed 000/001): one nats-py
push subscription per subject, each with a durable name, an explicit stream and
`manual_ack=True`; per message one `session.execute_write(...)` through the official
neo4j driver, one Valkey call, then `msg.ack()`. It projects the generator's events into
the same labels, relationship types and properties projector writes (generation
`seeds-peer`), so the two figures price the same graph.

What it leaves out compared with projector (each makes it faster, not slower): version
guards on property groups, checkpoints, the parked-event path and the outbound
`context.updated` events.

Prints one JSON line: events, failed, redelivered (transient driver errors, nak'ed and
handled again), seconds, events_per_s. Stops when --expect events are
acked, or after --max-seconds (then the rate is over the events it did handle; the
per-event cost of this design does not fall with volume, so a prefix is a fair sample).
"""

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime

import nats
import redis.asyncio as aioredis
from nats.js.api import ConsumerConfig, DeliverPolicy
from neo4j import AsyncGraphDatabase
from nats.errors import ConnectionClosedError, ConnectionReconnectingError
from nats.errors import TimeoutError as NatsTimeout
from neo4j.exceptions import IncompleteCommit, ServiceUnavailable, SessionExpired, TransientError

# What the corrected seeds redeliver rather than count as lost: deadlocks and lock timeouts
# (TransientError), a connection that died mid-commit (IncompleteCommit: the statements are
# MERGEs, so running them again is safe), a driver that lost its server for a moment, and an
# ack that NATS did not take (the message stays unacked: JetStream delivers it again).
RETRIABLE = (IncompleteCommit, ServiceUnavailable, SessionExpired, TransientError,
             ConnectionClosedError, ConnectionReconnectingError, NatsTimeout)

GEN = "seeds-peer"

# subject (without prefix) -> stream key, as in seed 003.
SUBJECTS = {
    "planning.story.created": "planning",
    "planning.story.transitioned": "planning",
    "planning.plan.created": "planning",
    "planning.plan.approved": "planning",
    "planning.task.created": "planning",
    "context.milestone.reached": "context",
    "orchestration.agent.registered": "orchestration",
    "orchestration.deliberation.started": "orchestration",
    "orchestration.deliberation.completed": "orchestration",
    "orchestration.task.dispatched": "orchestration",
    "orchestration.task.completed": "orchestration",
    "agent.response.started": "responses",
    "agent.response.completed": "responses",
    "agent.response.failed": "responses",
}
STATUS = {
    "agent.response.started": "RUNNING",
    "agent.response.completed": "COMPLETED",
    "agent.response.failed": "FAILED",
}


def ms(ts):
    if not ts:
        return None
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def record(tx, story, subject, stream, seq, at):
    tx.append(
        (
            "MERGE (s:Story {gen: $gen, id: $story}) SET s.last_event = $summary "
            "MERGE (e:StoryEvent {gen: $gen, id: $id}) "
            "SET e.story_id = $story, e.subject = $subject, e.stream = $stream, "
            "e.seq = $seq, e.event_time_ms = $at, e.summary = $summary "
            "MERGE (s)-[:HAS_EVENT]->(e)",
            dict(
                story=story,
                id=f"{stream}:{seq}",
                subject=subject,
                stream=stream,
                seq=seq,
                at=at,
                summary=subject,
            ),
        )
    )


def rel(tx, a_label, a, ty, b_label, b):
    tx.append(
        (
            f"MERGE (a:{a_label} {{gen: $gen, id: $a}}) MERGE (b:{b_label} {{gen: $gen, id: $b}}) "
            f"MERGE (a)-[:{ty}]->(b)",
            dict(a=a, b=b),
        )
    )


def node(tx, label, id_, props):
    tx.append((f"MERGE (n:{label} {{gen: $gen, id: $id}}) SET n += $props", dict(id=id_, props=props)))


def statements(subject, e, stream, seq):
    """The graph writes of one event: the same shapes projector's projection gives."""
    tx = []
    story = e.get("story_id")
    at = ms(e.get("timestamp"))
    if subject == "planning.story.created":
        node(tx, "Story", story, dict(title=e.get("title"), created_by=e.get("created_by"), phase=e.get("phase") or "DRAFT"))
    elif subject == "planning.story.transitioned":
        node(tx, "Story", story, dict(phase=e["to_phase"], phase_changed_by=e.get("transitioned_by")))
        change = f"{story}:{stream}:{seq}"
        node(tx, "PhaseChange", change, dict(story_id=story, from_phase=e.get("from_phase"), to_phase=e["to_phase"], changed_by=e.get("transitioned_by"), at_ms=at))
        rel(tx, "Story", story, "HAD_PHASE", "PhaseChange", change)
    elif subject == "planning.plan.created":
        node(tx, "Plan", e["plan_id"], dict(story_id=story, version=e.get("version"), summary=e.get("summary"), created_at_ms=at))
        rel(tx, "Story", story, "HAS_PLAN", "Plan", e["plan_id"])
    elif subject == "planning.plan.approved":
        approval = f"{e['plan_id']}:{at}"
        node(tx, "PlanApproval", approval, dict(story_id=story, plan_id=e["plan_id"], approved_by=e.get("approved_by"), approved_at_ms=at))
        rel(tx, "Story", story, "HAS_PLAN", "Plan", e["plan_id"])
        rel(tx, "Story", story, "HAS_APPROVAL", "PlanApproval", approval)
        rel(tx, "PlanApproval", approval, "APPROVES", "Plan", e["plan_id"])
    elif subject == "planning.task.created":
        node(tx, "Task", e["task_id"], dict(story_id=story, title=e.get("title"), phase=e.get("phase"), plan_id=e.get("plan_id"), role=e.get("assigned_role"), status="CREATED"))
        rel(tx, "Story", story, "HAS_TASK", "Task", e["task_id"])
        if e.get("plan_id"):
            rel(tx, "Task", e["task_id"], "IN_PLAN", "Plan", e["plan_id"])
    elif subject == "context.milestone.reached":
        mid = f"{story}:{e['milestone']}"
        node(tx, "Milestone", mid, dict(story_id=story, name=e["milestone"], reached_at_ms=at))
        rel(tx, "Story", story, "REACHED", "Milestone", mid)
    elif subject == "orchestration.agent.registered":
        node(tx, "Agent", e["agent_id"], dict(role=e.get("role"), agent_type=e.get("agent_type")))
    elif subject == "orchestration.deliberation.started":
        did = e.get("deliberation_id") or e["task_id"]
        node(tx, "Deliberation", did, dict(story_id=story, task_id=e["task_id"], role=e.get("role"), started_at_ms=at))
        rel(tx, "Story", story, "HAS_TASK", "Task", e["task_id"])
        rel(tx, "Task", e["task_id"], "DELIBERATED_IN", "Deliberation", did)
    elif subject == "orchestration.deliberation.completed":
        did = e.get("deliberation_id") or e["task_id"]
        decisions = e.get("decisions") or []
        node(tx, "Deliberation", did, dict(completed_at_ms=at, decision_count=len(decisions)))
        rel(tx, "Story", story, "HAS_TASK", "Task", e["task_id"])
        rel(tx, "Task", e["task_id"], "DELIBERATED_IN", "Deliberation", did)
        for d in decisions:
            node(tx, "Decision", d["id"], dict(story_id=story, task_id=e["task_id"], title=d.get("title"), rationale=d.get("rationale"), decided_by=d.get("decided_by"), decided_at_ms=at))
            rel(tx, "Story", story, "HAS_DECISION", "Decision", d["id"])
            rel(tx, "Decision", d["id"], "FOR_TASK", "Task", e["task_id"])
            rel(tx, "Deliberation", did, "PRODUCED", "Decision", d["id"])
    elif subject in ("orchestration.task.dispatched", "orchestration.task.completed") or subject in STATUS:
        status = STATUS.get(subject) or ("DISPATCHED" if subject.endswith("dispatched") else "COMPLETED")
        node(tx, "Task", e["task_id"], dict(status=status, progress=e.get("progress"), error=e.get("error")))
        if e.get("agent_id"):
            node(tx, "Task", e["task_id"], dict(agent_id=e["agent_id"]))
            rel(tx, "Task", e["task_id"], "ASSIGNED_TO", "Agent", e["agent_id"])
        if story:
            rel(tx, "Story", story, "HAS_TASK", "Task", e["task_id"])
    if story:
        record(tx, story, subject, stream, seq, at)
    return tx


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nats", default="nats://127.0.0.1:4222")
    ap.add_argument("--neo4j", default="bolt://127.0.0.1:7687")
    ap.add_argument("--valkey", default="redis://127.0.0.1:6379")
    ap.add_argument("--prefix", default="bench.", help="subject prefix (bench config: 'bench.')")
    ap.add_argument("--streams", default="planning=BENCH_PLANNING_EVENTS,context=BENCH_CONTEXT_EVENTS,"
                    "orchestration=BENCH_ORCHESTRATOR_EVENTS,responses=BENCH_AGENT_RESPONSES")
    ap.add_argument("--expect", type=int, required=True, help="stop after this many events are acked")
    ap.add_argument("--max-seconds", type=float, default=0, help="stop early after this long (0: no cap)")
    args = ap.parse_args()
    streams = dict(kv.split("=", 1) for kv in args.streams.split(","))

    driver = AsyncGraphDatabase.driver(args.neo4j, auth=None)
    await driver.verify_connectivity()
    cache = aioredis.from_url(args.valkey)
    await cache.ping()
    # A fresh peer: no graph or cache state from an earlier run.
    async with driver.session() as s:
        while True:
            r = await s.run("MATCH (n {gen: $gen}) WITH n LIMIT 10000 DETACH DELETE n RETURN count(*) AS c", gen=GEN)
            if (await r.single())["c"] == 0:
                break
    async for k in cache.scan_iter(match=f"{GEN}:*", count=1000):
        await cache.delete(k)

    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    done = asyncio.Event()
    state = dict(n=0, failed=0, redelivered=0)
    started = time.monotonic()

    async def handle(msg):
        subject = msg.subject[len(args.prefix):]
        meta = msg.metadata
        try:
            event = json.loads(msg.data)
            tx = statements(subject, event, meta.stream, meta.sequence.stream)

            async def work(t):
                for q, p in tx:
                    await (await t.run(q, gen=GEN, **p)).consume()

            async with driver.session() as s:
                await s.execute_write(work)
            if event.get("story_id"):
                await cache.hset(f"{GEN}:story:{event['story_id']}", mapping={"last_subject": subject})
            await msg.ack()
        except RETRIABLE as e:  # the driver already retried what it could: ask NATS again soon
            state["redelivered"] += 1
            print(f"seeds-peer: {subject} seq {meta.sequence.stream}: redelivered after {e!r}", file=sys.stderr)
            try:
                await msg.nak(delay=0.5)
            except Exception as e2:  # NATS itself is away: still unacked, redelivered after ack_wait
                print(f"seeds-peer: {subject} seq {meta.sequence.stream}: nak failed ({e2!r}); "
                      "JetStream redelivers it after ack_wait", file=sys.stderr)
            return
        except Exception as e:  # the corrected seeds log, count and leave the message unacked
            state["failed"] += 1
            print(f"seeds-peer: {subject} seq {meta.sequence.stream}: {e!r}", file=sys.stderr)
            return
        state["n"] += 1
        if state["n"] >= args.expect:
            done.set()

    subs = []
    for subject, key in SUBJECTS.items():
        durable = "seeds-peer-" + subject.replace(".", "-")
        try:
            await js.delete_consumer(streams[key], durable)
        except Exception:
            pass  # not there yet: the first run
        subs.append(
            await js.subscribe(
                subject=args.prefix + subject,
                stream=streams[key],
                durable=durable,
                cb=handle,
                manual_ack=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_wait=60),
            )
        )
    try:
        await asyncio.wait_for(done.wait(), timeout=args.max_seconds or None)
        capped = False
    except asyncio.TimeoutError:
        capped = True
    secs = time.monotonic() - started
    n = state["n"]
    for sub in subs:
        await sub.unsubscribe()
    for subject, key in SUBJECTS.items():
        try:
            await js.delete_consumer(streams[key], "seeds-peer-" + subject.replace(".", "-"))
        except Exception as e:
            print(f"seeds-peer: could not delete consumer: {e!r}", file=sys.stderr)
    await nc.close()
    await driver.close()
    await cache.aclose()
    print(json.dumps(dict(events=n, failed=state["failed"], redelivered=state["redelivered"], seconds=secs, events_per_s=n / secs, capped=capped)))
    return 0 if n > 0 and state["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
