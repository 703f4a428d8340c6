//! The views through the CLI (`--json`) and over HTTP, after projecting a generated history.

mod common;

use async_nats::jetstream;
use common::*;
use serde_json::Value;

fn get(port: u16, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn cli(t: &TestConfig, args: &[&str]) -> Value {
    let o = t.projector(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn views_over_cli_and_http_say_what_the_events_say() {
    let t = TestConfig::new();
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    // A hand-written story with a phase history, a parked event, a decision and a milestone,
    // next to a generated history.
    t.publish(
        &js,
        &[
            ("planning.story.created", r#"{"story_id":"US-H","title":"Hand","timestamp":"2026-02-01T10:00:00Z"}"#),
            ("planning.story.transitioned", r#"{"story_id":"US-H","from_phase":"DRAFT","to_phase":"BUILD","transitioned_by":"po","timestamp":"2026-02-01T10:01:00Z"}"#),
            ("planning.plan.created", r#"{"story_id":"US-H","plan_id":"plan-h","version":1,"timestamp":"2026-02-01T10:02:00Z"}"#),
            ("planning.plan.approved", r#"{"story_id":"US-H","plan_id":"plan-h","approved_by":"po","timestamp":"2026-02-01T10:03:00Z"}"#),
            ("planning.task.created", r#"{"story_id":"US-H","task_id":"T-H","title":"build it","assigned_role":"DEV","timestamp":"2026-02-01T10:04:00Z"}"#),
            ("orchestration.deliberation.completed", r#"{"story_id":"US-H","task_id":"T-H","decisions":[{"id":"D-H","title":"Use Rust","rationale":"speed","decided_by":"architect"}],"timestamp":"2026-02-01T10:05:00Z"}"#),
            ("context.milestone.reached", r#"{"story_id":"US-H","milestone":"MVP","timestamp":"2026-02-01T10:06:00Z"}"#),
            ("planning.story.created", r#"{"story_id":"US-P","title":"parked"}"#),
            ("planning.plan.approved", r#"{"story_id":"US-P","plan_id":7}"#),
        ],
    )
    .await;
    let h = engine::history::generate(10, 23);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 23)
        .await
        .unwrap();
    let run = t.spawn_run_follow_live(&[]);
    wait_all_acked(&js, &t, "projector-graph-p0").await;
    let port = run.metrics_port;
    eventually(30, || async {
        let (code, v) = get(port, "/v1/stories/US-H");
        if code == 200 && v["milestones"].as_array().map(|m| m.len()) == Some(1) {
            Ok(())
        } else {
            Err((code, v))
        }
    })
    .await;

    // The story, exactly.
    let mut story = cli(&t, &["query", "story", "US-H", "--json"]);
    story.as_object_mut().unwrap().remove("source");
    assert_eq!(story["phase"], "BUILD");
    assert_eq!(story["phase_history"][0]["from"], "DRAFT");
    assert_eq!(story["phase_history"][0]["to"], "BUILD");
    assert_eq!(story["phase_history"][0]["at_ms"], 1_769_940_060_000i64);
    assert_eq!(story["plans"][0]["plan_id"], "plan-h");
    assert_eq!(story["plans"][0]["approvals"][0]["approved_by"], "po");
    assert_eq!(story["tasks"][0]["role"], "DEV");
    assert_eq!(story["tasks"][0]["status"], "CREATED");
    assert_eq!(story["decisions"][0]["rationale"], "speed");
    assert_eq!(story["decisions"][0]["decided_by"], "architect");
    assert_eq!(story["milestones"][0]["name"], "MVP");
    let (code, mut http) = get(port, "/v1/stories/US-H");
    assert_eq!(code, 200);
    http.as_object_mut().unwrap().remove("source");
    assert_eq!(http, story, "HTTP and CLI disagree");

    // The story with a parked event: its approval is not in the graph, and it is in the DLQ.
    let parked = cli(&t, &["query", "story", "US-P", "--json"]);
    assert_eq!(parked["plans"], serde_json::json!([]));
    let dlq = cli(&t, &["dlq", "list", "--json"]);
    assert_eq!(dlq[0]["story_id"], "US-P");

    // Timeline: every change in stream order.
    let tl = cli(&t, &["query", "timeline", "US-H", "--json"]);
    let subjects: Vec<&str> = tl
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        vec![
            "planning.story.created",
            "planning.story.transitioned",
            "planning.plan.created",
            "planning.plan.approved",
            "planning.task.created",
            "orchestration.deliberation.completed",
            "context.milestone.reached"
        ]
    );
    assert_eq!(get(port, "/v1/stories/US-H/timeline").1, tl);
    // As text: a header row, and every time in the one fixed-width format (main printed
    // `10:00:00Z`, `10:00:00.15Z` and `10:00:00.153Z` side by side).
    let text = stdout(&t.projector(&["query", "timeline", "US-H"]));
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("TIME"), "{text}");
    for l in lines {
        let ts = l.split_whitespace().next().unwrap();
        assert_eq!(ts.len(), 24, "{l}");
        assert!(ts.ends_with(".000Z"), "{l}");
    }

    // Lists.
    let d = cli(&t, &["query", "decisions", "--story", "US-H", "--json"]);
    assert_eq!(d.as_array().unwrap().len(), 1);
    assert_eq!(get(port, "/v1/decisions?story=US-H").1, d);
    let since = cli(
        &t,
        &[
            "query",
            "decisions",
            "--since",
            "2099-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert_eq!(since, serde_json::json!([]));
    let failed = cli(
        &t,
        &[
            "query", "tasks", "--status", "FAILED", "--json", "--limit", "1000",
        ],
    );
    let expected_failed = h
        .iter()
        .filter(|s| s.subject == "agent.response.failed")
        .count();
    assert_eq!(failed.as_array().unwrap().len(), expected_failed);
    assert_eq!(get(port, "/v1/tasks?status=FAILED&limit=1000").1, failed);
    let a = cli(&t, &["query", "approvals", "--story", "US-H", "--json"]);
    assert_eq!(a[0]["plan_id"], "plan-h");

    // Paging: the same rows in pages, over HTTP and the CLI alike.
    let all = cli(&t, &["query", "tasks", "--json", "--limit", "1000"]);
    let all = all.as_array().unwrap();
    assert!(all.len() > 4, "{}", all.len());
    let (code, page) = get(port, "/v1/tasks?limit=2&offset=2");
    assert_eq!(code, 200);
    assert_eq!(page.as_array().unwrap(), &all[2..4]);
    let page_cli = cli(
        &t,
        &["query", "tasks", "--json", "--limit", "2", "--offset", "2"],
    );
    assert_eq!(page_cli, page);
    let text = stdout(&t.projector(&["query", "tasks", "--limit", "3"]));
    assert!(text.starts_with("STORY"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");

    // Errors: every one JSON {code, message}, never a 500 or an empty body.
    let (code, v) = get(port, "/v1/stories/US-NOPE");
    assert_eq!(code, 404);
    assert_eq!(v["code"], "not_found");
    assert_eq!(
        v["message"],
        format!("no story US-NOPE in generation {}", t.main_gen())
    );
    for bad in [
        "/v1/tasks?limit=lots",
        "/v1/tasks?limit=0",
        "/v1/tasks?status=bogus",
        "/v1/tasks?offset=-1",
        // Found by schemathesis: SKIP + LIMIT overflowed in Neo4j (a 503 before).
        "/v1/approvals?offset=9223372036854775806",
        "/v1/decisions?since=yesterday",
        "/v1/stories/%FF%FE",
    ] {
        let (code, v) = get(port, bad);
        assert_eq!(code, 400, "{bad}: {v}");
        assert_eq!(v["code"], "bad_request", "{bad}: {v}");
        assert!(v["message"].as_str().unwrap().len() > 5, "{bad}: {v}");
    }
    let (code, v) = get(port, "/v1/nope");
    assert_eq!(code, 404);
    assert_eq!(v["code"], "not_found", "{v}");
    let (code, doc) = get(port, "/openapi.json");
    assert_eq!(code, 200);
    for p in ["/v1/stories/{id}", "/healthz", "/readyz", "/metrics"] {
        assert!(doc["paths"][p]["get"].is_object(), "{p}");
    }

    // Diagrams: the story's own node first, an unknown story an error.
    let m = t.projector(&["query", "story", "US-H", "--format", "mermaid"]);
    assert!(
        stdout(&m).contains("  n0[\"Story: US-H\"]\n"),
        "{}",
        stdout(&m)
    );
    assert!(stdout(&m).contains("-- HAS_TASK -->"), "{}", stdout(&m));
    let d = t.projector(&["query", "story", "US-H", "--format", "dot"]);
    assert!(stdout(&d).starts_with("digraph story {"));
    let none = t.projector(&["query", "story", "US-NOPE", "--format", "dot"]);
    assert_eq!(none.status.code(), Some(1), "{}", stdout(&none));
    // The text view names the generation, not "live".
    let text = stdout(&t.projector(&["query", "story", "US-H"]));
    assert!(
        text.contains(&format!("(generation {} (live),", t.main_gen())),
        "{text}"
    );
    assert_eq!(run.terminate(), Some(0));
}

/// A story view the cache cannot serve is read from Neo4j, and that is said: counted by
/// reason in `projector_view_cache_fallbacks_total` and, for a fault, a WARN line (it used
/// to fall back without a word).
#[tokio::test(flavor = "multi_thread")]
async fn a_story_view_falling_back_to_neo4j_is_counted_and_logged() {
    let t = TestConfig::new();
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    t.publish(
        &js,
        &[(
            "planning.story.created",
            r#"{"story_id":"US-F","title":"fallback"}"#,
        )],
    )
    .await;
    let run = t.spawn_run_follow_live(&[]);
    wait_all_acked(&js, &t, "projector-graph-p0").await;
    let port = run.metrics_port;
    eventually(30, || async {
        match get(port, "/v1/stories/US-F") {
            (200, v) if v["source"] == "cache" => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let unreadable = ["reason=\"unreadable\""];
    assert_eq!(
        run.metric("projector_view_cache_fallbacks_total", &unreadable),
        0.0
    );
    // The cached entry is garbage at the graph's revision: a fault, not a miss.
    let mut kv = valkey(&t.cfg).await;
    let () = redis::cmd("SET")
        .arg(format!("{}:context:US-F", t.tag))
        .arg("not a story context")
        .query_async(&mut kv)
        .await
        .unwrap();
    let (code, v) = get(port, "/v1/stories/US-F");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["source"], "neo4j", "{v}");
    assert_eq!(v["title"], "fallback", "{v}");
    assert_eq!(
        run.metric("projector_view_cache_fallbacks_total", &unreadable),
        1.0,
        "{}",
        run.metrics()
    );
    assert!(
        run.log()
            .contains("story view read from Neo4j instead of Valkey"),
        "{}",
        run.log()
    );
    assert_eq!(run.terminate(), Some(0));
}

/// `query story` without a reachable Valkey still answers from Neo4j, and says so: a warning
/// on stderr naming Valkey, and `source: neo4j`.
#[tokio::test(flavor = "multi_thread")]
async fn query_story_without_valkey_says_so_and_reads_neo4j() {
    let t = TestConfig::new();
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    t.publish(
        &js,
        &[(
            "planning.story.created",
            r#"{"story_id":"US-NV","title":"no valkey"}"#,
        )],
    )
    .await;
    t.run_until_caught_up(&t.main_gen());
    let closed = format!("redis://127.0.0.1:{}", free_port());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .arg("--config")
        .arg(&t.path)
        .args(["query", "story", "US-NV", "--json"])
        .env("VALKEY_URL", &closed)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["source"], "neo4j", "{v}");
    assert_eq!(v["title"], "no valkey", "{v}");
    assert!(
        stderr(&o).contains("Valkey unavailable; reading the story from Neo4j"),
        "{}",
        stderr(&o)
    );
}
