//! Faults during `run`: Neo4j going away, kill -9 mid-batch, a write that Neo4j refuses.
//! These restart servers or change the schema, so they take one lock and run one at a time.

mod common;

use async_nats::jetstream;
use common::*;
use std::time::Duration;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

const STREAMS: [&str; 4] = [
    "PLANNING_EVENTS",
    "CONTEXT_EVENTS",
    "ORCHESTRATOR_EVENTS",
    "AGENT_RESPONSES",
];

async fn setup() -> (TestConfig, jetstream::Context) {
    let t = TestConfig::new();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    (t, js)
}

/// (ack floor, pending, ack pending) of this test's durable on a stream.
async fn consumer_state(js: &jetstream::Context, t: &TestConfig, base: &str) -> (u64, u64, usize) {
    let s = js.get_stream(t.stream(base)).await.unwrap();
    let mut c: jetstream::consumer::PullConsumer = s
        .get_consumer(&format!("projector-graph-{}-p0", t.tag))
        .await
        .unwrap();
    let i = c.info().await.unwrap();
    (
        i.ack_floor.stream_sequence,
        i.num_pending,
        i.num_ack_pending,
    )
}

async fn all_acked(js: &jetstream::Context, t: &TestConfig) -> Result<(), String> {
    for base in STREAMS {
        let s = js
            .get_stream(t.stream(base))
            .await
            .map_err(|e| e.to_string())?;
        let mut c: jetstream::consumer::PullConsumer = s
            .get_consumer(&format!("projector-graph-{}-p0", t.tag))
            .await
            .map_err(|e| e.to_string())?;
        let i = c.info().await.map_err(|e| e.to_string())?;
        if i.num_pending != 0 || i.num_ack_pending != 0 {
            return Err(format!(
                "{base}: pending {} ack pending {}",
                i.num_pending, i.num_ack_pending
            ));
        }
    }
    Ok(())
}

/// A node of US-2's milestone whose version has the wrong type: the guarded SET of its write
/// is a no-op, so the write is not confirmed (the seeds' bug #3).
async fn poison_us2_milestone(g: &neo4rs::Graph, t: &TestConfig) {
    g.run(
        neo4rs::query("CREATE (:Milestone {gen: $gen, id: 'US-2:MVP', v_MilestoneRecord: 42})")
            .param("gen", t.tag.clone()),
    )
    .await
    .unwrap();
}

/// Milestones of US-1, US-2 (the poisoned one) and US-3, in that order on one stream.
async fn publish_three_milestones(t: &TestConfig, js: &jetstream::Context) {
    t.publish(
        js,
        &[
            (
                "context.milestone.reached",
                r#"{"story_id":"US-1","milestone":"MVP"}"#,
            ),
            (
                "context.milestone.reached",
                r#"{"story_id":"US-2","milestone":"MVP"}"#,
            ),
            (
                "context.milestone.reached",
                r#"{"story_id":"US-3","milestone":"BETA"}"#,
            ),
        ],
    )
    .await;
}

fn http_status(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn neo4j_down_mid_run_nothing_is_acked_nothing_is_lost() {
    let _g = SERIAL.lock().await;
    let (t, js) = setup().await;
    let first = engine::history::generate(6, 21);
    engine::history::publish(&js, &t.cfg.subject_prefix, &first, 21)
        .await
        .unwrap();
    let run = t.spawn_run(&["--batch-size", "50", "--ready-lag", "0"]);
    eventually(60, || all_acked(&js, &t)).await;
    eventually(10, || async {
        if http_status(run.metrics_port, "/readyz") == 200 {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;

    stack(&["stop", "neo4j"]);
    let before = consumer_state(&js, &t, "PLANNING_EVENTS").await;
    let second = engine::history::generate(6, 22);
    // Other stories' ids would collide with the first batch's; a prefix keeps them apart.
    let second: Vec<_> = second
        .into_iter()
        .map(|s| engine::history::Sample {
            subject: s.subject,
            payload: s.payload.replace("US-", "US-B"),
        })
        .collect();
    engine::history::publish(&js, &t.cfg.subject_prefix, &second, 22)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = consumer_state(&js, &t, "PLANNING_EVENTS").await;
    assert_eq!(
        during.0, before.0,
        "nothing may be acked while Neo4j is down"
    );
    assert!(
        during.1 + during.2 as u64 > 0,
        "the new events wait: {during:?}"
    );
    assert_eq!(
        http_status(run.metrics_port, "/readyz"),
        503,
        "not ready while Neo4j is down"
    );
    let mut run = run;
    assert!(
        run.alive(),
        "projector must survive Neo4j going away:\n{}",
        run.log()
    );

    stack(&["start", "neo4j"]);
    eventually(120, || all_acked(&js, &t)).await;
    assert!(
        run.log().contains("transient error, retrying"),
        "the outage was logged"
    );
    assert!(run.metric("projector_retries_total", &[]) > 0.0);
    assert_eq!(run.terminate(), Some(0));

    let clean = format!("{}-clean", t.tag);
    t.run_until_caught_up(&clean);
    assert_eq!(
        t.digest(&t.tag),
        t.digest(&clean),
        "live graph differs from a clean pass"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_batch_then_restart_equals_a_clean_pass() {
    let _g = SERIAL.lock().await;
    let (t, js) = setup().await;
    let h = engine::history::generate(25, 5);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 5)
        .await
        .unwrap();
    // Kill at different points of the run: early, mid, later.
    for (i, ms) in [400u64, 900, 700].into_iter().enumerate() {
        let run = t.spawn_run(&["--batch-size", "25"]);
        tokio::time::sleep(Duration::from_millis(ms + 300 * i as u64)).await;
        run.kill9();
    }
    t.run_until_caught_up(&t.tag);
    let clean = format!("{}-clean", t.tag);
    t.run_until_caught_up(&clean);
    let (live, fresh) = (t.digest(&t.tag), t.digest(&clean));
    assert_eq!(
        live, fresh,
        "kill -9 left a different graph than a clean pass"
    );

    // The Valkey side was repaired too: every story's context equals the clean pass's.
    let mut kv = valkey(&t.cfg).await;
    for i in 1..=25 {
        let story = engine::history::story_id(i);
        let a: Option<String> = redis::cmd("GET")
            .arg(format!("{}:gen:{}:context:{story}", t.tag, t.tag))
            .query_async(&mut kv)
            .await
            .unwrap();
        let b: Option<String> = redis::cmd("GET")
            .arg(format!("{}:gen:{clean}:context:{story}", t.tag))
            .query_async(&mut kv)
            .await
            .unwrap();
        assert!(a.is_some(), "{story} has no context");
        assert_eq!(a, b, "{story}");
    }
}

/// The seeds' bug #3: a write that "succeeds" without effect. A node poisoned with a
/// version of the wrong type makes the guarded SET a no-op; projector sees that the write
/// is not confirmed, counts it as an error, and parks the event instead of acking it as done.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_without_effect_is_an_error_metric_and_a_parked_event_never_processed() {
    let _g = SERIAL.lock().await;
    let (t, js) = setup().await;
    let g = neo4j(&t.cfg);
    poison_us2_milestone(&g, &t).await;
    let run = t.spawn_run(&[]);
    publish_three_milestones(&t, &js).await;
    eventually(60, || all_acked(&js, &t)).await;
    let gen = t.tag.clone();
    assert_eq!(
        count_nodes(&g, &gen, "Milestone", "name", "MVP").await,
        1,
        "only US-1's MVP landed"
    );
    assert_eq!(
        count_nodes(&g, &gen, "Milestone", "id", "US-3:BETA").await,
        1
    );
    assert_eq!(
        count_nodes(&g, &gen, "ParkedEvent", "kind", "unconfirmed").await,
        1
    );
    assert_eq!(
        count_nodes(&g, &gen, "ParkedEvent", "story_id", "US-2").await,
        1
    );
    let m = &run;
    eventually(10, || async move {
        let errors = m.metric("projector_write_errors_total", &["kind=\"unconfirmed\""]);
        let parked = m.metric("projector_parked_total", &["kind=\"unconfirmed\""]);
        let projected = m.metric("projector_events_total", &["outcome=\"projected\""]);
        if errors >= 1.0 && parked == 1.0 && projected == 2.0 {
            Ok(())
        } else {
            Err((errors, parked, projected))
        }
    })
    .await;
    let log = run.log();
    assert!(log.contains("write refused; parking the event"), "{log}");
    assert!(
        log.contains("not confirmed: 0 of 1 rows hold the new version"),
        "{log}"
    );
    assert_eq!(run.terminate(), Some(0));
}

/// `--on-error halt` names the event whose write was refused, not the first of its batch:
/// the batch is committed one event per transaction up to the offender, which halts the run.
#[tokio::test(flavor = "multi_thread")]
async fn on_error_halt_names_the_offending_event_not_the_first_of_its_batch() {
    let _g = SERIAL.lock().await;
    let (t, js) = setup().await;
    let g = neo4j(&t.cfg);
    poison_us2_milestone(&g, &t).await;
    // Published before the run starts: one batch of three on one stream.
    publish_three_milestones(&t, &js).await;
    let out = t.projector(&[
        "run",
        "--generation",
        &t.tag,
        "--on-error",
        "halt",
        "--metrics-addr",
        "off",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let context = t.stream("CONTEXT_EVENTS");
    assert!(
        err.contains(&format!("{context} seq 2 (")),
        "the halt names seq 2, the refused write: {err}"
    );
    assert!(err.contains("halting as --on-error halt says"), "{err}");
    let gen = t.tag.clone();
    assert_eq!(
        count_nodes(&g, &gen, "Milestone", "id", "US-1:MVP").await,
        1,
        "the event before the offender is committed"
    );
    assert_eq!(
        count_nodes(&g, &gen, "Milestone", "id", "US-3:BETA").await,
        0,
        "nothing after the offender is written"
    );
    assert_eq!(
        count_nodes(&g, &gen, "ParkedEvent", "story_id", "US-2").await,
        0,
        "halt parks nothing"
    );
}

/// A permanent error after the Neo4j commit (#17 item 3): the graph already holds the group,
/// so nothing is parked and no checkpoint moves back; the run halts saying so. A milestone
/// node of the wrong shape makes the story's context unreadable, so the Valkey step fails
/// after the graph commit.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_after_the_graph_commit_parks_nothing_and_keeps_the_checkpoint() {
    let _g = SERIAL.lock().await;
    let (t, js) = setup().await;
    let g = neo4j(&t.cfg);
    g.run(
        neo4rs::query(
            "CREATE (:Story {gen: $gen, id: 'US-P'})-[:REACHED]->(:Milestone {gen: $gen, id: 'US-P:X', name: 42})",
        )
        .param("gen", t.tag.clone()),
    )
    .await
    .unwrap();
    t.publish(
        &js,
        &[
            (
                "planning.story.created",
                r#"{"story_id":"US-OK","title":"fine"}"#,
            ),
            (
                "planning.story.created",
                r#"{"story_id":"US-P","title":"its context cannot be read"}"#,
            ),
        ],
    )
    .await;
    let out = t.projector(&["run", "--generation", &t.tag, "--metrics-addr", "off"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ContextShape"), "{err}");
    let gen = t.tag.clone();
    assert_eq!(
        count_nodes(&g, &gen, "ParkedEvent", "story_id", "US-P").await
            + count_nodes(&g, &gen, "ParkedEvent", "story_id", "US-OK").await,
        0,
        "committed events are never parked"
    );
    let mut rows = g
        .execute(
            neo4rs::query(
                "MATCH (c:Checkpoint {gen: $gen}) WHERE c.stream = $s RETURN c.seq AS seq",
            )
            .param("gen", gen.clone())
            .param("s", t.stream("PLANNING_EVENTS")),
        )
        .await
        .unwrap();
    let seq: i64 = rows.next().await.unwrap().unwrap().get("seq").unwrap();
    assert_eq!(
        seq, 2,
        "the checkpoint holds the committed group, never less"
    );
    assert_eq!(count_nodes(&g, &gen, "Story", "id", "US-OK").await, 1);
}

/// #21: a change committed in Neo4j while Valkey was down, by a projector then killed, is
/// rendered into the cache by the repair at the next start; the change feed must carry it
/// then (the repair's forced write appended nothing before: a resuming client never heard
/// of the change).
#[tokio::test(flavor = "multi_thread")]
async fn a_change_committed_while_valkey_was_down_reaches_the_feed_after_a_crash() {
    let _g = SERIAL.lock().await;
    let (t, js) = setup().await;
    let id = format!("{}-REPAIR", t.upper);
    let run = t.spawn_run_follow_live(&[]);
    let mut feed = common::sse::connect(run.metrics_port, "/v1/changes", None).await;
    feed.until(15, |e| e.event == "watermark").await;
    let created =
        format!(r#"{{"story_id":"{id}","title":"repair","timestamp":"2026-02-01T10:00:00Z"}}"#);
    t.publish(&js, &[("planning.story.created", &created)])
        .await;
    let evs = feed
        .until(30, |e| {
            e.event == "story.changed" && e.data["story_id"] == id
        })
        .await;
    let last = evs.last().unwrap().id.clone();
    drop(feed);

    stack(&["stop", "valkey"]);
    let moved = format!(
        r#"{{"story_id":"{id}","from_phase":"DRAFT","to_phase":"BUILD","transitioned_by":"po","timestamp":"2026-02-01T10:01:00Z"}}"#
    );
    t.publish(&js, &[("planning.story.transitioned", &moved)])
        .await;
    // The Neo4j commit lands; the cache step after it cannot, and is retried.
    let g = neo4j(&t.cfg);
    let gen = t.main_gen();
    eventually(60, || async {
        let mut rows = g
            .execute(
                neo4rs::query("MATCH (s:Story {gen: $gen, id: $id}) RETURN s.phase AS p")
                    .param("gen", gen.clone())
                    .param("id", id.clone()),
            )
            .await
            .map_err(|e| e.to_string())?;
        match rows.next().await.map_err(|e| e.to_string())? {
            Some(r) if r.get::<String>("p").ok().as_deref() == Some("BUILD") => Ok(()),
            other => Err(format!("not committed yet: {other:?}")),
        }
    })
    .await;
    run.kill9();
    stack(&["start", "valkey"]);

    let run = t.spawn_run_follow_live(&[]);
    let mut feed = common::sse::connect(run.metrics_port, "/v1/changes", Some(&last)).await;
    let evs = feed
        .until(60, |e| {
            e.event == "story.changed" && e.data["story_id"] == id
        })
        .await;
    let e = evs.last().unwrap();
    assert_eq!(e.data["revision"], 2, "{e:?}");
    assert!(
        e.data["what"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "phase"),
        "{e:?}"
    );
    assert!(
        run.log()
            .contains("re-rendering this generation's story contexts"),
        "the start-up repair ran:\n{}",
        run.log()
    );
    assert_eq!(run.terminate(), Some(0));
}
