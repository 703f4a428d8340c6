//! `projector run` against the real stack: the seeds' scenarios, poison messages, shutdown.

mod common;

use async_nats::jetstream;
use common::*;
use std::time::Duration;

async fn setup() -> (TestConfig, jetstream::Context) {
    let t = TestConfig::new();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    (t, js)
}

/// The seeds' end-to-end check: a plan approval published with a plain NATS client reaches
/// Neo4j and Valkey, and the consumer has nothing outstanding.
#[tokio::test(flavor = "multi_thread")]
async fn seed_scenario_plan_approved_reaches_neo4j_and_valkey_and_is_acked() {
    let (t, js) = setup().await;
    // The live generation, so the context lands under the seed's key `context:{story_id}`
    // (behind this test's key prefix).
    let run = t.spawn_run_follow_live(&[]);
    t.publish(
        &js,
        &[(
            "planning.plan.approved",
            r#"{"event_type":"PLAN_APPROVED","story_id":"US-VERIFY-001","plan_id":"plan-verify-v1","timestamp":"2025-10-16T18:00:00Z"}"#,
        )],
    )
    .await;
    let g = neo4j(&t.cfg);
    let gen = t.main_gen();
    wait_for_count(&g, &gen, "PlanApproval", "story_id", "US-VERIFY-001", 1).await;
    let approval = count_nodes(
        &g,
        &gen,
        "PlanApproval",
        "id",
        "plan-verify-v1:1760637600000",
    )
    .await;
    assert_eq!(approval, 1);

    let mut kv = valkey(&t.cfg).await;
    let key = format!("{}:context:US-VERIFY-001", t.tag);
    let ctx: String = eventually(30, || {
        let mut kv = kv.clone();
        let key = key.clone();
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut kv)
                .await
                .map_err(|e| e.to_string())?;
            v.ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
    let ctx: serde_json::Value = serde_json::from_str(&ctx).unwrap();
    assert_eq!(ctx["plans"][0]["plan_id"], "plan-verify-v1");
    assert_eq!(
        ctx["plans"][0]["approvals"][0]["approved_at_ms"],
        1_760_637_600_000i64
    );
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut kv)
        .await
        .unwrap();

    // Acked: nothing pending or awaiting an ack on the durable.
    let stream = js.get_stream(t.stream("PLANNING_EVENTS")).await.unwrap();
    eventually(30, || {
        let stream = stream.clone();
        let name = "projector-graph-p0".to_string();
        async move {
            let mut c: jetstream::consumer::PullConsumer = stream
                .get_consumer(&name)
                .await
                .map_err(|e| e.to_string())?;
            let i = c.info().await.map_err(|e| e.to_string())?;
            if i.num_ack_pending == 0 && i.num_pending == 0 && i.ack_floor.stream_sequence == 1 {
                Ok(())
            } else {
                Err(format!(
                    "ack pending {}, pending {}, floor {}",
                    i.num_ack_pending, i.num_pending, i.ack_floor.stream_sequence
                ))
            }
        }
    })
    .await;
    // `streams status` shows the durable.
    let st = t.projector(&["streams", "status"]);
    assert!(
        stdout(&st).contains("consumer projector-graph-p0"),
        "{}",
        stdout(&st)
    );
    assert_eq!(run.terminate(), Some(0));
}

/// The seeds' real test message is parked with its reason; other stories go on; the
/// projector keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_message_is_parked_with_reason_and_the_stream_goes_on() {
    let (t, js) = setup().await;
    let mut run = t.spawn_run(&[]);
    t.publish(
        &js,
        &[
            (
                "planning.story.created",
                r#"{"story_id":"US-A","title":"before"}"#,
            ),
            ("planning.plan.approved", r#"{"test":"data"}"#),
            (
                "planning.story.created",
                r#"{"story_id":"US-B","title":"after"}"#,
            ),
            ("planning.story.created", "{not json"),
            (
                "planning.story.created",
                r#"{"story_id":"US-C","title":"last"}"#,
            ),
        ],
    )
    .await;
    let g = neo4j(&t.cfg);
    let gen = t.tag.clone();
    wait_for_count(&g, &gen, "Story", "id", "US-C", 1).await;
    assert_eq!(count_nodes(&g, &gen, "Story", "id", "US-B").await, 1);
    assert!(run.alive(), "projector died:\n{}", run.log());

    // Parked in the graph (operator's view) with the exact reason ...
    let mut rows = g
        .execute(
            neo4rs::query("MATCH (p:ParkedEvent {gen: $gen}) RETURN p.seq AS seq, p.kind AS kind, p.reason AS reason ORDER BY seq")
                .param("gen", gen.clone()),
        )
        .await
        .unwrap();
    let mut parked = Vec::new();
    while let Some(r) = rows.next().await.unwrap() {
        parked.push((
            r.get::<i64>("seq").unwrap(),
            r.get::<String>("kind").unwrap(),
            r.get::<String>("reason").unwrap(),
        ));
    }
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(parked[0].0, 2);
    assert_eq!(parked[0].1, "missing_field");
    assert_eq!(
        parked[0].2,
        "planning.plan.approved: missing required field `story_id` (expected a non-empty string)"
    );
    assert_eq!((parked[1].0, parked[1].1.as_str()), (4, "malformed"));

    // ... and in the dead-letter stream, with the original payload and context headers.
    let dlq = js.get_stream(t.stream("PROJECTOR_DLQ")).await.unwrap();
    let m = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(&m.payload[..], br#"{"test":"data"}"#);
    let h = m.headers;
    assert_eq!(h.get("Projector-Seq").unwrap().as_str(), "2");
    assert_eq!(
        h.get("Projector-Original-Subject").unwrap().as_str(),
        t.subject("planning.plan.approved")
    );
    assert_eq!(
        h.get("Projector-Error-Kind").unwrap().as_str(),
        "missing_field"
    );

    // Metrics are updated right after the acks, a moment after the commit.
    let m = &run;
    eventually(10, || async move {
        let parked = m.metric("projector_parked_total", &["kind=\"missing_field\""]);
        let projected = m.metric("projector_events_total", &["outcome=\"projected\""]);
        if (parked, projected) == (1.0, 3.0) {
            Ok(())
        } else {
            Err((parked, projected))
        }
    })
    .await;
    assert_eq!(run.terminate(), Some(0));
}

/// Once an event of a story is parked, that story's later events are parked behind it,
/// while other stories go on.
#[tokio::test(flavor = "multi_thread")]
async fn later_events_of_a_parked_story_wait_behind_it() {
    let (t, js) = setup().await;
    let run = t.spawn_run(&[]);
    t.publish(
        &js,
        &[
            (
                "planning.story.created",
                r#"{"story_id":"US-P","title":"x"}"#,
            ),
            (
                "planning.plan.approved",
                r#"{"story_id":"US-P","plan_id":42}"#,
            ),
            (
                "planning.plan.created",
                r#"{"story_id":"US-P","plan_id":"plan-p"}"#,
            ),
            (
                "planning.story.created",
                r#"{"story_id":"US-OK","title":"y"}"#,
            ),
        ],
    )
    .await;
    let g = neo4j(&t.cfg);
    let gen = t.tag.clone();
    wait_for_count(&g, &gen, "Story", "id", "US-OK", 1).await;
    assert_eq!(
        count_nodes(&g, &gen, "Plan", "id", "plan-p").await,
        0,
        "blocked event must not be projected"
    );
    assert_eq!(
        count_nodes(&g, &gen, "ParkedEvent", "kind", "story_blocked").await,
        1
    );
    assert_eq!(
        count_nodes(&g, &gen, "ParkedEvent", "kind", "invalid_field").await,
        1
    );
    assert_eq!(run.terminate(), Some(0));
}

/// The same history projected twice into separate generations gives the same hash, and a
/// run that is stopped with SIGTERM and restarted gives it too.
#[tokio::test(flavor = "multi_thread")]
async fn projection_is_deterministic_across_runs_and_restarts() {
    let (t, js) = setup().await;
    let samples = engine::history::generate(30, 11);
    engine::history::publish(&js, &t.cfg.subject_prefix, &samples, 11)
        .await
        .unwrap();
    let (ga, gb) = (format!("{}-a", t.tag), format!("{}-b", t.tag));
    t.run_until_caught_up(&ga);
    t.run_until_caught_up(&gb);
    let a = t.digest(&ga);
    assert_eq!(a, t.digest(&gb));
    assert!(a.1 > 500, "{a:?}");

    let run = t.spawn_run(&["--batch-size", "7"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(run.terminate(), Some(0));
    t.run_until_caught_up(&t.tag);
    let (h, n, r) = t.digest(&t.tag);
    assert_eq!((h, n, r), a);
}

/// After a deliberation's decisions are committed, `context.updated` is published once,
/// with a deterministic message id: projecting the same event again does not duplicate it.
#[tokio::test(flavor = "multi_thread")]
async fn outbound_context_updated_is_published_once_after_commit() {
    let (t, js) = setup().await;
    t.publish(
        &js,
        &[(
            "orchestration.deliberation.completed",
            r#"{"story_id":"US-D","task_id":"T-D","decisions":[{"id":"D-1","rationale":"r"}]}"#,
        )],
    )
    .await;
    for gen in [format!("{}-x", t.tag), format!("{}-y", t.tag)] {
        let out = t.projector(&[
            "run",
            "--until-caught-up",
            "--outbound",
            "--generation",
            &gen,
            "--metrics-addr",
            "off",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut ctx = js.get_stream(t.stream("CONTEXT_EVENTS")).await.unwrap();
    assert_eq!(
        ctx.info().await.unwrap().state.messages,
        1,
        "published exactly once"
    );
    let m = ctx.get_raw_message(1).await.unwrap();
    assert_eq!(m.subject.as_str(), t.subject("context.updated"));
    assert_eq!(
        m.headers.get("Nats-Msg-Id").unwrap().as_str(),
        format!(
            "projector:{}:1:context.updated",
            t.stream("ORCHESTRATOR_EVENTS")
        )
    );
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["story_id"], "US-D");
    assert_eq!(body["decision_ids"], serde_json::json!(["D-1"]));
    // Nothing left in the outbox once published.
    let g = neo4j(&t.cfg);
    assert_eq!(
        count_nodes(
            &g,
            &format!("{}-x", t.tag),
            "Outbox",
            "subject",
            "context.updated"
        )
        .await,
        0
    );
}

/// A run killed between its Neo4j commit and the publish leaves the outbound event in the
/// outbox; its input is already checkpointed, so only the outbox can still deliver it. The
/// next start publishes it (same message id) and clears the entry.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_left_by_a_crashed_run_is_published_at_the_next_start() {
    let (t, js) = setup().await;
    let orch = t.stream("ORCHESTRATOR_EVENTS");
    let msg_id = format!("projector:{orch}:7:context.updated");
    // The killed run had started on this generation: it is marked as this version's
    // (without the marker the next start would take it for an older version's, #22).
    let out = t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // What the killed run committed: the entry, as the batch transaction writes it.
    let g = neo4j(&t.cfg);
    g.run(
        neo4rs::query(
            "CREATE (:Outbox {gen: $gen, id: $id, projector: 'graph', stream: $stream, \
             subject: 'context.updated', payload: $payload})",
        )
        .param("gen", t.main_gen())
        .param("id", msg_id.as_str())
        .param("stream", orch.as_str())
        .param("payload", r#"{"story_id":"US-O","decision_ids":["D-9"]}"#),
    )
    .await
    .unwrap();
    let out = t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not confirmed as published"),
        "the drain is logged:\n{}",
        stderr(&out)
    );
    let mut ctx = js.get_stream(t.stream("CONTEXT_EVENTS")).await.unwrap();
    assert_eq!(ctx.info().await.unwrap().state.messages, 1);
    let m = ctx.get_raw_message(1).await.unwrap();
    assert_eq!(m.subject.as_str(), t.subject("context.updated"));
    assert_eq!(m.headers.get("Nats-Msg-Id").unwrap().as_str(), msg_id);
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["decision_ids"], serde_json::json!(["D-9"]));
    assert_eq!(
        count_nodes(&g, &t.main_gen(), "Outbox", "subject", "context.updated").await,
        0,
        "the entry is cleared once the publish is confirmed"
    );
    // A second start finds nothing to drain and publishes nothing more.
    let out = t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ctx.info().await.unwrap().state.messages, 1);
}

#[test]
fn unknown_projector_is_a_usage_error() {
    let t = TestConfig::new();
    let out = t.projector(&[
        "run",
        "--projector",
        "nope",
        "--metrics-addr",
        "off",
        "--until-caught-up",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown projector \"nope\"; configured: graph"),
        "{}",
        stderr(&out)
    );
}

/// The operator's loop: list parked events, discard the bad one, retry the one held behind
/// it, and the story flows again in the live projector.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_discard_retry_unblocks_the_story() {
    let (t, js) = setup().await;
    let run = t.spawn_run(&[]);
    t.publish(
        &js,
        &[
            (
                "planning.story.created",
                r#"{"story_id":"US-R","title":"r"}"#,
            ),
            (
                "planning.plan.approved",
                r#"{"story_id":"US-R","plan_id":42}"#,
            ),
            (
                "planning.plan.created",
                r#"{"story_id":"US-R","plan_id":"plan-r"}"#,
            ),
        ],
    )
    .await;
    let g = neo4j(&t.cfg);
    let gen = t.tag.clone();
    wait_for_count(&g, &gen, "ParkedEvent", "story_id", "US-R", 2).await;
    let dlq = |args: &[&str]| {
        let mut a = vec!["dlq"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--generation", &t.tag]);
        t.projector(&a)
    };
    let list = dlq(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    let planning = t.stream("PLANNING_EVENTS");
    assert_eq!(
        ids,
        vec![format!("graph:{planning}:2"), format!("graph:{planning}:3")]
    );
    assert_eq!(v[1]["kind"], "story_blocked");
    assert_eq!(v[1]["blocked_by"], format!("graph:{planning}:2"));

    // The first still fails, so the second stays held back behind it.
    let r = dlq(&["retry", "--story", "US-R"]);
    assert_eq!(r.status.code(), Some(1), "{}", stdout(&r));
    assert!(stdout(&r).contains("held back behind an earlier failure of its story"));
    assert_eq!(count_nodes(&g, &gen, "Plan", "id", "plan-r").await, 0);

    let d = dlq(&["discard", &ids[0]]);
    assert!(d.status.success(), "{}", stderr(&d));
    let r = dlq(&["retry", "--story", "US-R"]);
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    assert_eq!(count_nodes(&g, &gen, "Plan", "id", "plan-r").await, 1);
    assert_eq!(
        count_nodes(&g, &gen, "ParkedEvent", "story_id", "US-R").await,
        0
    );

    // The live projector notices the story is unblocked.
    t.publish(
        &js,
        &[(
            "planning.plan.approved",
            r#"{"story_id":"US-R","plan_id":"plan-r"}"#,
        )],
    )
    .await;
    wait_for_count(&g, &gen, "PlanApproval", "plan_id", "plan-r", 1).await;
    assert_eq!(run.terminate(), Some(0));
}

/// Messages removed from the stream after the checkpoint, before they were projected: the
/// hole is detected, shown by `streams status`, and halts by default; `--on-gap continue`
/// records it and goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_hole_after_the_checkpoint_halts_by_default_and_is_shown_as_lost_range() {
    let (t, js) = setup().await;
    let created = |i: usize| format!(r#"{{"story_id":"US-G{i}","title":"g"}}"#);
    for i in 1..=5 {
        t.publish(&js, &[("planning.story.created", &created(i))])
            .await;
    }
    t.run_until_caught_up(&t.tag);
    for i in 6..=10 {
        t.publish(&js, &[("planning.story.created", &created(i))])
            .await;
    }
    // Purge 1..=9 from the stream and from its archive (a range the archive still holds is
    // read from it, tests/archive.rs): the projector has seen 1..=5; 6..=9 are lost to it.
    let planning = t.stream("PLANNING_EVENTS");
    let archive = format!("{planning}_ARCHIVE");
    eventually(10, || async {
        let mut a = js.get_stream(&archive).await.map_err(|e| e.to_string())?;
        let n = a
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        if n == 10 {
            Ok(())
        } else {
            Err(format!("archive at {n}"))
        }
    })
    .await;
    for name in [&planning, &archive] {
        let stream = js.get_stream(name).await.unwrap();
        stream.purge().sequence(10).await.unwrap();
    }

    let out = t.projector(&[
        "run",
        "--until-caught-up",
        "--generation",
        &t.tag,
        "--metrics-addr",
        "off",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "messages 6..=9 were removed from the stream before projector graph read them"
        ),
        "{err}"
    );
    let st = t.projector(&["streams", "status", "--generation", &t.tag]);
    assert!(
        stdout(&st).contains(&format!(
            "LOST RANGE graph {} seq 6..=9 (projector halted)",
            t.stream("PLANNING_EVENTS")
        )),
        "{}",
        stdout(&st)
    );
    let g = neo4j(&t.cfg);
    assert_eq!(count_nodes(&g, &t.tag, "Story", "id", "US-G10").await, 0);

    let out = t.projector(&[
        "run",
        "--until-caught-up",
        "--on-gap",
        "continue",
        "--generation",
        &t.tag,
        "--metrics-addr",
        "off",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count_nodes(&g, &t.tag, "Story", "id", "US-G10").await, 1);
    let st = t.projector(&["streams", "status", "--generation", &t.tag, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["lost_ranges"][0]["from"], 6);
    assert_eq!(v["lost_ranges"][0]["to"], 9);
    assert_eq!(v["lost_ranges"][0]["halted"], false);
}

/// `query story`: the cache path and the Neo4j path give the same answer; a stale cache is
/// never used; an unknown story is a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn query_story_cache_and_graph_paths_agree() {
    let (t, js) = setup().await;
    let h = engine::history::generate(5, 17);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 17)
        .await
        .unwrap();
    let out = t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut kv = valkey(&t.cfg).await;
    let key = format!("{}:context:US-0002", t.tag);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut kv)
        .await
        .unwrap();

    let q = || {
        let o = t.projector(&["query", "story", "US-0002", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let source = v["source"].take();
        (v, source)
    };
    let (from_graph, s1) = q();
    let (from_cache, s2) = q();
    assert_eq!((s1.as_str(), s2.as_str()), (Some("neo4j"), Some("cache")));
    assert_eq!(from_graph, from_cache);
    assert_eq!(from_graph["story_id"], "US-0002");
    assert_eq!(from_graph["title"], "Story 2");

    // A cache entry older than the graph is not used.
    let mut stale = from_cache.clone();
    stale["title"] = "stale".into();
    stale["last_v"] = "0".into();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(stale.to_string())
        .query_async(&mut kv)
        .await
        .unwrap();
    // Rendered at an older revision of the story than the graph's.
    let rev_key = format!("{}:context-rev:US-0002", t.tag);
    let _: () = redis::cmd("SET")
        .arg(&rev_key)
        .arg(0)
        .query_async(&mut kv)
        .await
        .unwrap();
    let (again, s3) = q();
    assert_eq!(s3.as_str(), Some("neo4j"));
    assert_eq!(again["title"], "Story 2");

    let o = t.projector(&["query", "story", "US-NOPE"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "no story US-NOPE in generation {} (live)",
            t.main_gen()
        )),
        "{}",
        stderr(&o)
    );
}

/// A parked message on a catalog subject without this deployment's prefix stays an unknown
/// subject when retried, as live saw it: `dlq retry` used to decode it as if it had the
/// prefix and project another deployment's story.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_retry_of_an_unprefixed_subject_still_fails_as_live() {
    let t = Stranger::config();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    let stranger = Stranger::publish(&t, &js).await;
    t.run_until_caught_up(&t.tag);
    let g = neo4j(&t.cfg);
    assert_eq!(
        count_nodes(&g, &t.tag, "ParkedEvent", "story_id", &stranger).await,
        1
    );
    let r = t.projector(&["dlq", "retry", "--all", "--generation", &t.tag]);
    assert_eq!(r.status.code(), Some(1), "{}{}", stdout(&r), stderr(&r));
    assert!(stdout(&r).contains("still failing"), "{}", stdout(&r));
    assert_eq!(count_nodes(&g, &t.tag, "Story", "id", &stranger).await, 0);
}

/// `--on-error halt` covers input, not only refused writes (#17 item 7): a payload that does
/// not decode halts the run naming it; what came before it is committed, nothing is parked.
#[tokio::test(flavor = "multi_thread")]
async fn on_error_halt_halts_on_a_malformed_payload_too() {
    let (t, js) = setup().await;
    t.publish(
        &js,
        &[
            (
                "planning.story.created",
                r#"{"story_id":"US-H1","title":"before"}"#,
            ),
            ("planning.story.created", "{not json"),
            (
                "planning.story.created",
                r#"{"story_id":"US-H2","title":"after"}"#,
            ),
        ],
    )
    .await;
    let out = t.projector(&[
        "run",
        "--generation",
        &t.tag,
        "--on-error",
        "halt",
        "--metrics-addr",
        "off",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let planning = t.stream("PLANNING_EVENTS");
    assert!(
        err.contains(&format!("{planning} seq 2 ("))
            && err.contains("halting as --on-error halt says"),
        "the halt names seq 2 and why: {err}"
    );
    let g = neo4j(&t.cfg);
    let gen = t.tag.clone();
    assert_eq!(count_nodes(&g, &gen, "Story", "id", "US-H1").await, 1);
    assert_eq!(count_nodes(&g, &gen, "Story", "id", "US-H2").await, 0);
    let mut rows = g
        .execute(
            neo4rs::query("MATCH (p:ParkedEvent {gen: $gen}) RETURN count(p) AS n")
                .param("gen", gen),
        )
        .await
        .unwrap();
    let n: i64 = rows.next().await.unwrap().unwrap().get("n").unwrap();
    assert_eq!(n, 0, "halt parks nothing");
}

/// The grouped pipeline (`--transaction-per partition`: every stream of a partition in one
/// transaction) builds the same graph as the per-stream default, and so does a live grouped
/// run stopped and resumed, with small batches so that groups hold several streams.
#[tokio::test(flavor = "multi_thread")]
async fn one_transaction_per_partition_builds_the_same_graph() {
    let (t, js) = setup().await;
    let samples = engine::history::generate(30, 12);
    engine::history::publish(&js, &t.cfg.subject_prefix, &samples, 12)
        .await
        .unwrap();
    let (per_stream, grouped) = (format!("{}-s", t.tag), format!("{}-p", t.tag));
    t.run_until_caught_up(&per_stream);
    let out = t.projector(&[
        "run",
        "--until-caught-up",
        "--generation",
        &grouped,
        "--transaction-per",
        "partition",
        "--batch-size",
        "9",
        "--metrics-addr",
        "off",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = t.digest(&per_stream);
    assert!(a.1 > 500, "{a:?}");
    assert_eq!(t.digest(&grouped), a);

    let run = t.spawn_run(&["--transaction-per", "partition", "--batch-size", "5"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(run.terminate(), Some(0));
    t.run_until_caught_up(&t.tag);
    assert_eq!(t.digest(&t.tag), a);
}
