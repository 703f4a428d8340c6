//! A deterministic fleet history: the sample the quickstart publishes, and what tests and
//! benchmarks project. Same `(stories, seed)`, same messages, byte for byte.

use serde_json::json;

/// One message to publish: catalog subject and JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub subject: &'static str,
    pub payload: String,
}

/// splitmix64: tiny, fast, and stable forever (unlike library RNGs across versions).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

const ROLES: [&str; 4] = ["DEV", "QA", "ARCHITECT", "DEVOPS"];
const PHASES: [&str; 5] = ["DRAFT", "REFINEMENT", "BUILD", "REVIEW", "DONE"];
const AGENTS: usize = 12;

/// The story id of story `i` (1-based), e.g. `US-0001`.
pub fn story_id(i: usize) -> String {
    format!("US-{i:04}")
}

fn story_events(i: usize, rng: &mut Rng, t0: i64) -> Vec<Sample> {
    let s = story_id(i);
    let mut t = t0;
    let mut tick = |rng: &mut Rng| {
        t += 1_000 + rng.below(60_000) as i64;
        t
    };
    let ts = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .expect("generated times are in range")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("RFC 3339 formats")
    };
    let mut out = Vec::new();
    let mut push = |subject: &'static str, v: serde_json::Value| {
        out.push(Sample {
            subject,
            payload: v.to_string(),
        })
    };
    push(
        "planning.story.created",
        json!({"event_type": "STORY_CREATED", "story_id": s, "title": format!("Story {i}"),
               "created_by": "po-ana", "timestamp": ts(tick(rng))}),
    );
    let phases = 1 + rng.below(3) as usize;
    for p in 0..phases {
        push(
            "planning.story.transitioned",
            json!({"story_id": s, "from_phase": PHASES[p], "to_phase": PHASES[p + 1],
                   "transitioned_by": "po-ana", "timestamp": ts(tick(rng))}),
        );
    }
    let plans = 1 + rng.below(2) as usize;
    for v in 1..=plans {
        let plan = format!("plan-{i:04}-v{v}");
        push(
            "planning.plan.created",
            json!({"story_id": s, "plan_id": plan, "version": v, "summary": format!("plan {v} for story {i}"),
                   "timestamp": ts(tick(rng))}),
        );
        if v == plans || rng.below(2) == 0 {
            push(
                "planning.plan.approved",
                json!({"event_type": "PLAN_APPROVED", "story_id": s, "plan_id": plan,
                       "approved_by": "po-ana", "timestamp": ts(tick(rng))}),
            );
        }
    }
    let plan = format!("plan-{i:04}-v{plans}");
    let tasks = 2 + rng.below(3) as usize;
    for k in 1..=tasks {
        let task = format!("T-{i:04}-{k}");
        let role = ROLES[rng.below(ROLES.len() as u64) as usize];
        let agent = format!("agent-{:02}", rng.below(AGENTS as u64));
        push(
            "planning.task.created",
            json!({"story_id": s, "task_id": task, "title": format!("task {k} of story {i}"),
                   "assigned_role": role, "phase": "BUILD", "plan_id": plan, "timestamp": ts(tick(rng))}),
        );
        push(
            "orchestration.task.dispatched",
            json!({"story_id": s, "task_id": task, "agent_id": agent, "timestamp": ts(tick(rng))}),
        );
        push(
            "orchestration.deliberation.started",
            json!({"story_id": s, "task_id": task, "role": role, "timestamp": ts(tick(rng))}),
        );
        let decisions: Vec<_> = (1..=1 + rng.below(3))
            .map(|d| json!({"id": format!("D-{i:04}-{k}-{d}"), "title": format!("decision {d} on task {k}"),
                            "rationale": format!("because {}", rng.below(1000)), "decided_by": agent}))
            .collect();
        push(
            "orchestration.deliberation.completed",
            json!({"story_id": s, "task_id": task, "decisions": decisions, "timestamp": ts(tick(rng))}),
        );
        push(
            "agent.response.started",
            json!({"story_id": s, "task_id": task, "agent_id": agent, "timestamp": ts(tick(rng))}),
        );
        if rng.below(10) == 0 {
            push(
                "agent.response.failed",
                json!({"story_id": s, "task_id": task, "agent_id": agent, "error": "timeout", "timestamp": ts(tick(rng))}),
            );
        } else {
            push(
                "agent.response.completed",
                json!({"story_id": s, "task_id": task, "agent_id": agent, "progress": 100, "timestamp": ts(tick(rng))}),
            );
            push(
                "orchestration.task.completed",
                json!({"story_id": s, "task_id": task, "agent_id": agent, "timestamp": ts(tick(rng))}),
            );
        }
    }
    push(
        "context.milestone.reached",
        json!({"story_id": s, "milestone": "BUILD_DONE", "timestamp": ts(tick(rng))}),
    );
    out
}

/// A whole history: agent registrations, then the stories' events interleaved (each story
/// keeps its own order; stories progress side by side as in a real fleet).
///
/// ```
/// let a = engine::history::generate(5, 7);
/// assert_eq!(a, engine::history::generate(5, 7));
/// assert!(a.iter().any(|s| s.subject == "planning.plan.approved"));
/// ```
pub fn generate(stories: usize, seed: u64) -> Vec<Sample> {
    generate_from(1, stories, seed)
}

/// Like [`generate`], with story numbers starting at `first` (a second history that shares
/// no story with the first, e.g. the steady load of a latency benchmark).
///
/// ```
/// let h = engine::history::generate_from(501, 2, 7);
/// assert!(h.iter().any(|s| s.payload.contains("US-0501")));
/// assert!(!h.iter().any(|s| s.payload.contains("US-0001")));
/// ```
pub fn generate_from(first: usize, stories: usize, seed: u64) -> Vec<Sample> {
    let mut rng = Rng::new(seed);
    let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let mut out: Vec<Sample> = (0..AGENTS)
        .map(|a| Sample {
            subject: "orchestration.agent.registered",
            payload: json!({"agent_id": format!("agent-{a:02}"), "role": ROLES[a % ROLES.len()], "agent_type": "vllm"})
                .to_string(),
        })
        .collect();
    let mut queues: Vec<std::collections::VecDeque<Sample>> = (first..first + stories)
        .map(|i| story_events(i, &mut rng, t0 + i as i64 * 60_000).into())
        .collect();
    // Interleave: a window of active stories, each step advancing a random one.
    let window = 32.min(queues.len().max(1));
    let mut active: Vec<usize> = (0..window.min(queues.len())).collect();
    let mut next_story = active.len();
    while !active.is_empty() {
        let k = rng.below(active.len() as u64) as usize;
        let q = &mut queues[active[k]];
        if let Some(ev) = q.pop_front() {
            out.push(ev);
        }
        if queues[active[k]].is_empty() {
            if next_story < queues.len() {
                active[k] = next_story;
                next_story += 1;
            } else {
                active.swap_remove(k);
            }
        }
    }
    out
}

/// Publishes a history with pipelined async publishes (a window of outstanding acks), each
/// with a `Nats-Msg-Id` so publishing the same history twice stores it once.
pub async fn publish(
    js: &async_nats::jetstream::Context,
    subject_prefix: &str,
    samples: &[Sample],
    seed: u64,
) -> Result<usize, String> {
    let mut inflight = std::collections::VecDeque::new();
    for (i, s) in samples.iter().enumerate() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("sample:{seed}:{i}").as_str());
        let fut = js
            .publish_with_headers(
                format!("{subject_prefix}{}", s.subject),
                h,
                s.payload.clone().into(),
            )
            .await
            .map_err(|e| format!("publish {}: {e}", s.subject))?;
        inflight.push_back(fut);
        if inflight.len() >= 1024 {
            inflight
                .pop_front()
                .expect("non-empty")
                .await
                .map_err(|e| format!("publish ack: {e}"))?;
        }
    }
    for f in inflight {
        f.await.map_err(|e| format!("publish ack: {e}"))?;
    }
    Ok(samples.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_decodes_and_each_story_keeps_its_order() {
        let h = generate(40, 3);
        let mut last_created = std::collections::BTreeMap::new();
        for (i, s) in h.iter().enumerate() {
            let ev = projections::decode(s.subject, None, s.payload.as_bytes()).unwrap();
            if let Some(story) = ev.story_id() {
                if s.subject == "planning.story.created" {
                    last_created.insert(story.to_string(), i);
                } else {
                    assert!(
                        last_created.contains_key(story),
                        "{story} event before creation"
                    );
                }
            }
        }
        assert_eq!(last_created.len(), 40);
    }

    #[test]
    fn seeds_change_the_history() {
        assert_ne!(generate(5, 1), generate(5, 2));
    }
}
