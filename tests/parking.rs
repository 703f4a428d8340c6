//! Parking decided the same way on every path (#17 items 1, 5, 6; D58-D61): live, rebuild,
//! `verify --against-rebuild` and `dlq retry` park, block and honour operators' decisions
//! alike, so the live graph equals a rebuild and a rebuilt generation's dead-letter list is
//! exactly what it left out.

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

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// `run --until-caught-up` on the live generation.
fn catch_up(t: &TestConfig) {
    ok(t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]));
}

/// The ids `dlq list` prints for the live generation (or `gen`).
fn parked_ids(t: &TestConfig, gen: Option<&str>) -> Vec<String> {
    let mut args = vec!["dlq", "list", "--json"];
    if let Some(g) = gen {
        args.extend_from_slice(&["--generation", g]);
    }
    let v: serde_json::Value = serde_json::from_str(&ok(t.projector(&args))).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

fn against_rebuild(t: &TestConfig) -> serde_json::Value {
    let out = t.projector(&["verify", "--against-rebuild", "--json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)))
}

fn phase(t: &TestConfig, story: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&ok(t.projector(&["query", "story", story, "--json"]))).unwrap();
    v["phase"].as_str().unwrap_or("-").to_string()
}

/// A story whose approval is malformed (#17 item 1): created, planned, approved with a
/// `plan_id` of the wrong type, then moved DRAFT->BUILD.
async fn malformed_approval(t: &TestConfig, js: &jetstream::Context, story: &str) {
    let created = format!(r#"{{"story_id":"{story}","title":"s"}}"#);
    let plan = format!(r#"{{"story_id":"{story}","plan_id":"plan-{story}"}}"#);
    let approved = format!(r#"{{"story_id":"{story}","plan_id":12345}}"#);
    let moved = format!(
        r#"{{"story_id":"{story}","from_phase":"DRAFT","to_phase":"BUILD","transitioned_by":"po"}}"#
    );
    t.publish(
        js,
        &[
            ("planning.story.created", &created),
            ("planning.plan.created", &plan),
            ("planning.plan.approved", &approved),
            ("planning.story.transitioned", &moved),
        ],
    )
    .await;
}

/// #17 item 1: live parks the approval and the transition behind it; a rebuild used to apply
/// the transition (DIFFERS: PhaseChange, Story, StoryEvent) and its DLQ listed nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_event_of_a_real_story_parks_the_same_on_live_and_rebuild() {
    let (t, js) = setup().await;
    malformed_approval(&t, &js, "US-P1").await;
    catch_up(&t);
    let planning = t.stream("PLANNING_EVENTS");
    let left_out = vec![format!("graph:{planning}:3"), format!("graph:{planning}:4")];
    assert_eq!(parked_ids(&t, None), left_out);
    assert_eq!(phase(&t, "US-P1"), "DRAFT");

    let v = against_rebuild(&t);
    assert_eq!(v["equal"], true, "{v:#}");

    let r = format!("{}-r", t.tag);
    ok(t.projector(&["rebuild", "--name", &r]));
    // The promoted generation lists exactly what it left out, and holds none of it.
    assert_eq!(parked_ids(&t, None), left_out);
    assert_eq!(phase(&t, "US-P1"), "DRAFT");
    let v = against_rebuild(&t);
    assert_eq!(v["equal"], true, "{v:#}");
}

/// #17 item 5: a rebuild kept none of the dead-letter backlog (`dlq list`: "No parked
/// events"), applied the blocked transition, and the daemon then said the story was
/// unblocked.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_keeps_the_dead_letter_backlog_and_the_story_blocked() {
    let (t, js) = setup().await;
    let mut run = t.spawn_run_follow_live(&[]);
    t.publish(
        &js,
        &[
            (
                "planning.story.created",
                r#"{"story_id":"US-P5","title":"s"}"#,
            ),
            (
                "planning.plan.created",
                r#"{"story_id":"US-P5","plan_id":"plan-p5","version":"1"}"#,
            ),
            (
                "planning.story.transitioned",
                r#"{"story_id":"US-P5","from_phase":"DRAFT","to_phase":"BUILD"}"#,
            ),
        ],
    )
    .await;
    let g = neo4j(&t.cfg);
    wait_for_count(&g, &t.main_gen(), "ParkedEvent", "story_id", "US-P5", 2).await;
    let planning = t.stream("PLANNING_EVENTS");
    let left_out = vec![format!("graph:{planning}:2"), format!("graph:{planning}:3")];

    let r = format!("{}-r", t.tag);
    let o = t.projector(&["rebuild", "--name", &r, "--keep-old"]);
    // The summary says what the build left out (it said "0 parked" on main).
    assert!(
        stderr(&o).contains("summary: 1 projected, 2 parked, 0 discarded by an operator"),
        "{}",
        stderr(&o)
    );
    ok(o);
    assert_eq!(parked_ids(&t, Some(&r)), left_out);
    assert_eq!(phase(&t, "US-P5"), "DRAFT");

    // The daemon moves to the new generation and keeps the story blocked there: its next
    // event on the stream parks behind the same blocker.
    t.publish(
        &js,
        &[(
            "planning.story.transitioned",
            r#"{"story_id":"US-P5","from_phase":"BUILD","to_phase":"TEST"}"#,
        )],
    )
    .await;
    wait_for_count(&g, &r, "ParkedEvent", "story_id", "US-P5", 3).await;
    assert!(run.alive());
    let log = run.log();
    assert!(!log.contains("story unblocked"), "{log}");
    assert_eq!(phase(&t, "US-P5"), "DRAFT");
    run.terminate();
}

/// #17 item 6: `dlq retry` of an event parked behind a blocker that is still parked applied
/// it (projected [":3"], held_back []), against what `--help` promises.
#[tokio::test(flavor = "multi_thread")]
async fn retrying_an_event_behind_a_parked_blocker_holds_it_back() {
    let (t, js) = setup().await;
    malformed_approval(&t, &js, "US-P6").await;
    catch_up(&t);
    let planning = t.stream("PLANNING_EVENTS");
    let behind = format!("graph:{planning}:4");
    let out = t.projector(&["dlq", "retry", &behind, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));
    assert_eq!(v["projected"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["held_back"], serde_json::json!([behind]), "{v:#}");
    assert_eq!(phase(&t, "US-P6"), "DRAFT");
    assert_eq!(parked_ids(&t, None).len(), 2);
}

/// Operators' decisions are part of the replayed input: after the blocker is discarded and
/// the event behind it retried (by a named operator), live and a rebuild agree, the rebuild
/// parks nothing, and the story's later events on the stream project on both.
#[tokio::test(flavor = "multi_thread")]
async fn discards_and_retries_are_honoured_by_rebuilds() {
    let (t, js) = setup().await;
    malformed_approval(&t, &js, "US-PD").await;
    catch_up(&t);
    let planning = t.stream("PLANNING_EVENTS");
    let (blocker, behind) = (format!("graph:{planning}:3"), format!("graph:{planning}:4"));
    ok(t.projector(&["dlq", "discard", &blocker, "--by", "alice"]));
    // The event behind stays parked, and its reason says what became of its blocker.
    let v: serde_json::Value =
        serde_json::from_str(&ok(t.projector(&["dlq", "list", "--json"]))).unwrap();
    let reason = v[0]["reason"].as_str().unwrap();
    assert!(reason.contains("discarded by alice"), "{reason}");
    ok(t.projector(&["dlq", "retry", &behind, "--by", "bob"]));
    assert_eq!(phase(&t, "US-PD"), "BUILD");
    t.publish(
        &js,
        &[(
            "planning.story.transitioned",
            r#"{"story_id":"US-PD","from_phase":"BUILD","to_phase":"TEST"}"#,
        )],
    )
    .await;
    catch_up(&t);
    assert_eq!(phase(&t, "US-PD"), "TEST");
    assert!(parked_ids(&t, None).is_empty());

    let v = against_rebuild(&t);
    assert_eq!(v["equal"], true, "{v:#}");
    let r = format!("{}-r", t.tag);
    ok(t.projector(&["rebuild", "--name", &r]));
    assert!(parked_ids(&t, None).is_empty());
    assert_eq!(phase(&t, "US-PD"), "TEST");
}

/// D58: a parked event blocks its story on its own stream only, so the outcome does not
/// depend on how concurrent stream workers (or one grouped transaction) interleave streams.
#[tokio::test(flavor = "multi_thread")]
async fn a_block_holds_on_its_stream_only_whatever_the_transaction_shape() {
    let (t, js) = setup().await;
    malformed_approval(&t, &js, "US-PS").await;
    t.publish(
        &js,
        &[(
            "orchestration.deliberation.completed",
            r#"{"story_id":"US-PS","task_id":"T-PS","decisions":[{"id":"D-PS","rationale":"go"}]}"#,
        )],
    )
    .await;
    ok(t.projector(&[
        "run",
        "--until-caught-up",
        "--metrics-addr",
        "off",
        "--transaction-per",
        "partition",
    ]));
    let planning = t.stream("PLANNING_EVENTS");
    assert_eq!(
        parked_ids(&t, None),
        vec![format!("graph:{planning}:3"), format!("graph:{planning}:4")]
    );
    // The orchestrator's event of the same story on another stream projected.
    // The orchestrator's event of the same story on another stream projected.
    let g = neo4j(&t.cfg);
    assert_eq!(
        count_nodes(&g, &t.main_gen(), "Decision", "id", "D-PS").await,
        1
    );
    let v = against_rebuild(&t);
    assert_eq!(v["equal"], true, "{v:#}");
}
