//! Dead letters as an operator meets them: a retry emits what a live run would have emitted,
//! and a blocked story says so in every view, in the backlog gauge and in the run's summary.

mod common;

use async_nats::jetstream;
use common::*;

async fn setup() -> (TestConfig, jetstream::Context) {
    let t = TestConfig::new();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    (t, js)
}

fn parked_ids(t: &TestConfig) -> Vec<String> {
    let list = t.projector(&["dlq", "list", "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

/// The `context.updated` events in the test's context stream: (Nats-Msg-Id, payload).
async fn context_updated(t: &TestConfig, js: &jetstream::Context) -> Vec<(String, String)> {
    let s = js.get_stream(t.stream("CONTEXT_EVENTS")).await.unwrap();
    let mut st = s.clone();
    let last = st.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = s.get_raw_message(seq).await else {
            continue;
        };
        if m.subject.as_str() != t.subject("context.updated") {
            continue;
        }
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push((id, String::from_utf8_lossy(&m.payload).into_owned()));
    }
    out
}

/// Issue #17 item 2: a decision parked behind a poison one of its story, retried once the
/// poison is discarded, is published as `context.updated` with the message id a live run
/// gives it, exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_retry_emits_the_context_updated_a_live_run_would_have() {
    let (t, js) = setup().await;
    let run = t.spawn_run_follow_live(&[]);
    t.publish(
        &js,
        &[
            ("planning.story.created", r#"{"story_id":"US-O","title":"o"}"#),
            (
                "orchestration.deliberation.completed",
                r#"{"story_id":"US-O","task_id":"T-O","decisions":"not a list"}"#,
            ),
            (
                "orchestration.deliberation.completed",
                r#"{"story_id":"US-O","task_id":"T-O","decisions":[{"id":"D-O","title":"Use Rust"}]}"#,
            ),
        ],
    )
    .await;
    let g = neo4j(&t.cfg);
    let gen = t.main_gen();
    wait_for_count(&g, &gen, "ParkedEvent", "story_id", "US-O", 2).await;
    let orch = t.stream("ORCHESTRATOR_EVENTS");
    let ids = parked_ids(&t);
    assert_eq!(
        ids,
        vec![format!("graph:{orch}:1"), format!("graph:{orch}:2")]
    );
    assert!(context_updated(&t, &js).await.is_empty());

    let d = t.projector(&["dlq", "discard", &ids[0]]);
    assert!(d.status.success(), "{}", stderr(&d));
    let r = t.projector(&["dlq", "retry", "--story", "US-O"]);
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    assert_eq!(count_nodes(&g, &gen, "Decision", "id", "D-O").await, 1);
    let out = context_updated(&t, &js).await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, format!("projector:{orch}:2:context.updated"));
    let v: serde_json::Value = serde_json::from_str(&out[0].1).unwrap();
    assert_eq!(v["story_id"], "US-O");
    assert_eq!(v["decision_ids"], serde_json::json!(["D-O"]));
    // Nothing left in the outbox for the live worker to publish a second time.
    let n = count_nodes(&g, &gen, "Outbox", "gen", &gen).await;
    assert_eq!(n, 0);

    // A live decision goes the same way, with its own id.
    t.publish(
        &js,
        &[(
            "orchestration.deliberation.completed",
            r#"{"story_id":"US-O","task_id":"T-O","decisions":[{"id":"D-L"}]}"#,
        )],
    )
    .await;
    wait_for_count(&g, &gen, "Decision", "id", "D-L", 1).await;
    let out = eventually(30, || async {
        let out = context_updated(&t, &js).await;
        if out.len() == 2 {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    assert_eq!(out[1].0, format!("projector:{orch}:3:context.updated"));
    assert_eq!(run.terminate(), Some(0));
}

fn story_json(t: &TestConfig, id: &str) -> serde_json::Value {
    let o = t.projector(&["query", "story", id, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn get(port: u16, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return serde_json::Value::Null;
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// Issue #17 item 9: an unknown subject (a newer producer's event) parks and blocks a story;
/// the run's summary, the story's view (CLI, HTTP, the Valkey entry) and the backlog gauge
/// say so, and stop saying so once an operator discarded and retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_story_says_so_until_the_operator_unblocks_it() {
    let (t, js) = setup().await;
    t.publish(
        &js,
        &[
            (
                "planning.story.created",
                r#"{"story_id":"US-B","title":"b"}"#,
            ),
            ("planning.story.archived", r#"{"story_id":"US-B"}"#),
            (
                "planning.story.transitioned",
                r#"{"story_id":"US-B","from_phase":"DRAFT","to_phase":"BUILD"}"#,
            ),
        ],
    )
    .await;
    let o = t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(
        log.contains("summary: 1 projected, 2 parked, 0 skipped; 1 blocked stories"),
        "{log}"
    );

    let planning = t.stream("PLANNING_EVENTS");
    let blocker = format!("graph:{planning}:2");
    let v = story_json(&t, "US-B");
    assert_eq!(v["blocked"]["by"], blocker.as_str(), "{v}");
    assert_eq!(v["blocked"]["behind"], 1, "{v}");
    assert!(
        v["blocked"]["reason"]
            .as_str()
            .unwrap()
            .contains("archived"),
        "{v}"
    );
    let text = stdout(&t.projector(&["query", "story", "US-B"]));
    assert!(
        text.contains(&format!("BLOCKED by parked event {blocker}")),
        "{text}"
    );
    assert!(text.contains("1 later event parked behind it"), "{text}");
    // The Valkey entry itself carries it (the seeds' services read it as is).
    let mut kv = valkey(&t.cfg).await;
    let cached: String = redis::cmd("GET")
        .arg(format!("{}:context:US-B", t.tag))
        .query_async(&mut kv)
        .await
        .unwrap();
    let c: serde_json::Value = serde_json::from_str(&cached).unwrap();
    assert_eq!(c["blocked"]["by"], blocker.as_str(), "{c}");

    let run = t.spawn_run_follow_live(&[]);
    let port = run.metrics_port;
    let h = eventually(30, || async {
        match get(port, "/v1/stories/US-B") {
            serde_json::Value::Null => Err("not serving yet"),
            v => Ok(v),
        }
    })
    .await;
    assert_eq!(h["blocked"]["by"], blocker.as_str(), "{h}");
    let gauge = |r: &Running| {
        r.metric(
            "projector_parked_events{",
            &["projector=\"graph\"", &format!("stream=\"{planning}\"")],
        )
    };
    eventually(30, || async {
        let n = gauge(&run);
        if n == 2.0 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;

    let d = t.projector(&["dlq", "discard", &blocker]);
    assert!(d.status.success(), "{}", stderr(&d));
    // Discarding the blocker leaves the transition parked: still blocked, by it now.
    let v = story_json(&t, "US-B");
    assert_eq!(v["blocked"]["by"], format!("graph:{planning}:3"), "{v}");
    assert_eq!(v["blocked"]["behind"], 0, "{v}");
    let r = t.projector(&["dlq", "retry", "--story", "US-B"]);
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    let v = story_json(&t, "US-B");
    assert!(v.get("blocked").is_none(), "{v}");
    assert_eq!(v["phase"], "BUILD", "{v}");
    let cached: String = redis::cmd("GET")
        .arg(format!("{}:context:US-B", t.tag))
        .query_async(&mut kv)
        .await
        .unwrap();
    assert!(!cached.contains("\"blocked\""), "{cached}");
    let h = get(port, "/v1/stories/US-B");
    assert!(h.get("blocked").is_none(), "{h}");
    eventually(30, || async {
        let n = gauge(&run);
        if n == 0.0 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
    assert_eq!(run.terminate(), Some(0));

    // A replay ends with its summary too (it parks nothing; the unknown subject, which the
    // operator discarded, is left out as such, D60).
    let o = t.projector(&["replay", "--stream", &planning, "--from-seq", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "summary: 2 projected, 0 parked, 0 skipped (parked or undecodable), 1 discarded by an operator; 0 blocked stories"
        ),
        "{}",
        stderr(&o)
    );
}
