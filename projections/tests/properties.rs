//! Property tests: projection is deterministic, and applying its operations converges under
//! any redelivery pattern. Plus a decode fuzz smoke test.

use projections::model::GraphModel;
use projections::{decode, project, CompactBatch, Envelope, GraphOp, CATALOG};
use proptest::prelude::*;

const STREAMS: [&str; 4] = [
    "PLANNING_EVENTS",
    "CONTEXT_EVENTS",
    "ORCHESTRATOR_EVENTS",
    "AGENT_RESPONSES",
];

/// One stored message of a random history.
#[derive(Debug, Clone)]
struct Msg {
    stream: &'static str,
    seq: u64,
    subject: &'static str,
    ts_ns: i64,
    payload: String,
}

fn subject_for(kind: u8) -> (&'static str, usize) {
    const S: [(&str, usize); 14] = [
        ("planning.story.created", 0),
        ("planning.story.updated", 0),
        ("planning.story.transitioned", 0),
        ("planning.plan.created", 0),
        ("planning.plan.approved", 0),
        ("planning.task.created", 0),
        ("planning.task.assigned", 0),
        ("planning.task.completed", 0),
        ("context.decision.added", 1),
        ("context.milestone.reached", 1),
        ("orchestration.deliberation.completed", 2),
        ("orchestration.task.dispatched", 2),
        ("agent.response.progress", 3),
        ("agent.response.failed", 3),
    ];
    S[kind as usize % S.len()]
}

fn history() -> impl Strategy<Value = Vec<Msg>> {
    prop::collection::vec((0u8..14, 0u8..3, 0u8..3, 0u8..4, 0i64..5_000), 1..60).prop_map(|raw| {
        let mut seqs = [0u64; 4];
        raw.into_iter()
            .enumerate()
            .map(|(i, (kind, story, task, val, jitter))| {
                let (subject, si) = subject_for(kind);
                seqs[si] += 1;
                let phases = ["DRAFT", "BUILD", "REVIEW", "DONE"];
                let roles = ["DEV", "QA", "ARCH", "PO"];
                let payload = serde_json::json!({
                    "story_id": format!("US-{story}"),
                    "plan_id": format!("plan-{story}"),
                    "task_id": format!("T-{story}-{task}"),
                    "title": format!("title {val}"),
                    "description": if val % 2 == 0 { serde_json::Value::Null } else { format!("d{val}").into() },
                    "to_phase": phases[val as usize],
                    "assigned_role": roles[val as usize],
                    "decision_id": format!("D-{story}-{val}"),
                    "milestone": format!("M{val}"),
                    "progress": val * 25,
                    "decisions": (0..val % 3 + 1).map(|d| serde_json::json!({"id": format!("D-{story}-{d}"), "rationale": format!("r{val}")})).collect::<Vec<_>>(),
                });
                Msg {
                    stream: STREAMS[si],
                    seq: seqs[si],
                    subject,
                    // Stream clocks are only roughly in step across streams.
                    ts_ns: 1_000_000_000_000 + i as i64 * 1_000 + jitter,
                    payload: payload.to_string(),
                }
            })
            .collect()
    })
}

fn ops_of(m: &Msg) -> Vec<GraphOp> {
    let env = Envelope::new(m.stream, m.seq, m.subject, m.ts_ns, m.payload.as_bytes());
    let ev = decode(m.subject, None, m.payload.as_bytes()).expect("generated payloads are valid");
    project(&env, &ev).graph
}

fn clean_pass(h: &[Msg]) -> GraphModel {
    let mut g = GraphModel::default();
    for m in h {
        g.apply(&ops_of(m));
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn projecting_twice_gives_identical_operations(h in history()) {
        for m in &h {
            let env = Envelope::new(m.stream, m.seq, m.subject, m.ts_ns, m.payload.as_bytes());
            let ev = decode(m.subject, None, m.payload.as_bytes()).unwrap();
            prop_assert_eq!(project(&env, &ev), project(&env, &ev));
        }
    }

    /// Redelivery: each stream is read in order but may re-deliver any suffix (a crash before
    /// the ack) and duplicate single messages; streams interleave arbitrarily.
    #[test]
    fn any_redelivery_pattern_converges(
        h in history(),
        replays in prop::collection::vec((0usize..60, 0usize..60), 0..6),
        interleave in prop::collection::vec(0usize..4, 0..200),
    ) {
        let expected = clean_pass(&h);
        let mut per_stream: Vec<Vec<&Msg>> = STREAMS.iter().map(|s| h.iter().filter(|m| m.stream == *s).collect()).collect();
        // Build each stream's delivery sequence: the clean order with re-applied suffixes spliced in.
        let mut deliveries: Vec<Vec<&Msg>> = Vec::new();
        for (i, msgs) in per_stream.iter_mut().enumerate() {
            let mut d: Vec<&Msg> = Vec::new();
            for (k, m) in msgs.iter().enumerate() {
                d.push(m);
                for (at, from) in &replays {
                    if !msgs.is_empty() && *at % msgs.len() == k && (at + i) % 2 == 0 {
                        let start = from % (k + 1);
                        d.extend(msgs[start..=k].iter().copied());
                    }
                }
            }
            deliveries.push(d);
        }
        let mut g = GraphModel::default();
        let mut pos = [0usize; 4];
        let mut picks = interleave.into_iter().chain((0..).map(|i| i % 4));
        while pos.iter().zip(&deliveries).any(|(p, d)| *p < d.len()) {
            let s = picks.next().unwrap();
            if pos[s] < deliveries[s].len() {
                g.apply(&ops_of(deliveries[s][pos[s]]));
                pos[s] += 1;
            }
        }
        prop_assert_eq!(g, expected);
    }

    /// Compacting a batch to one row per key has the same effect as applying it op by op.
    #[test]
    fn compacted_batches_converge(h in history(), batch in 1usize..20) {
        let expected = clean_pass(&h);
        let mut g = GraphModel::default();
        for chunk in h.chunks(batch) {
            let ops: Vec<GraphOp> = chunk.iter().flat_map(ops_of).collect();
            let mut b = CompactBatch::default();
            b.extend(&ops);
            let compacted: Vec<GraphOp> = b.ops().collect();
            g.apply(&compacted);
        }
        prop_assert_eq!(g, expected);
    }

    /// Decode fuzz smoke: random bytes on every subject, JSON or MessagePack, never panic.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), msgpack in any::<bool>()) {
        let ct = if msgpack { Some("application/msgpack") } else { None };
        for (subject, _) in CATALOG {
            let _ = decode(subject, ct, &bytes);
        }
        let _ = decode("not.in.catalog", ct, &bytes);
    }

    /// Structured fuzz: random JSON objects built from catalog field names never panic.
    #[test]
    fn random_objects_never_panic(fields in prop::collection::vec((0usize..8, prop_oneof![
        Just(serde_json::Value::Null), any::<i64>().prop_map(Into::into), ".{0,8}".prop_map(serde_json::Value::String),
        Just(serde_json::json!([{"id": 1}])), Just(serde_json::json!([])), any::<bool>().prop_map(Into::into),
    ]), 0..8)) {
        let names = ["story_id", "plan_id", "task_id", "decisions", "timestamp", "event_type", "to_phase", "progress"];
        let obj: serde_json::Map<String, serde_json::Value> = fields.into_iter().map(|(i, v)| (names[i].to_string(), v)).collect();
        let bytes = serde_json::to_vec(&obj).unwrap();
        for (subject, _) in CATALOG {
            if let Ok(ev) = decode(subject, None, &bytes) {
                let env = Envelope::new("S", 1, subject, 0, &bytes);
                let _ = project(&env, &ev);
            }
        }
    }
}
