//! Operations that must be safe to run (issue #18): a recreated stream is loud, generations
//! cannot be dropped or mistyped by accident, an unreachable Neo4j is bounded, one-off runs
//! leave nothing behind, and refusals exit 2.

mod common;

use async_nats::jetstream;
use common::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

async fn setup() -> (TestConfig, jetstream::Context) {
    let t = TestConfig::new();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    (t, js)
}

fn approval(story: &str) -> String {
    format!(
        r#"{{"event_type":"PLAN_APPROVED","story_id":"{story}","plan_id":"plan-{story}","timestamp":"2025-10-16T18:00:00Z"}}"#
    )
}

async fn approvals(t: &TestConfig, js: &jetstream::Context, stories: &[String]) {
    let payloads: Vec<String> = stories.iter().map(|s| approval(s)).collect();
    let events: Vec<(&str, &str)> = payloads
        .iter()
        .map(|p| ("planning.plan.approved", p.as_str()))
        .collect();
    t.publish(js, &events).await;
}

fn run_caught_up(t: &TestConfig, extra: &[&str]) -> Output {
    let mut a = vec!["run", "--until-caught-up", "--metrics-addr", "off"];
    a.extend_from_slice(extra);
    t.projector(&a)
}

fn with_env(t: &TestConfig, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_projector"));
    c.arg("--config").arg(&t.path).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("projector binary runs")
}

fn status_json(t: &TestConfig) -> serde_json::Value {
    let out = t.projector(&["streams", "status", "--json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)))
}

/// The issue's reproduction: 10 stories projected, the stream deleted and recreated, 5 new
/// stories published. The worker must not read on from checkpoint + 1 (it would skip all 5).
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_recreated_below_the_checkpoint_halts_loudly_until_accepted() {
    let (t, js) = setup().await;
    let old: Vec<String> = (0..10).map(|i| format!("US-OLD-{i}")).collect();
    approvals(&t, &js, &old).await;
    let out = run_caught_up(&t, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let planning = t.stream("PLANNING_EVENTS");
    js.delete_stream(&planning).await.unwrap();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let new: Vec<String> = (0..5).map(|i| format!("US-NEW-{i}")).collect();
    approvals(&t, &js, &new).await;

    let out = run_caught_up(&t, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("checkpoint is 10 but the stream holds sequences 1..=5 (past the stream's last sequence)")
            && err.contains("--accept-stream-reset")
            && err.contains("projector rebuild"),
        "{err}"
    );
    let v = status_json(&t);
    let p = v["projectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stream"] == planning.as_str())
        .unwrap()
        .clone();
    assert_eq!(p["stream_reset"], true, "{p}");
    assert_eq!(
        (p["checkpoint"].as_u64(), p["stream_last"].as_u64()),
        (Some(10), Some(5))
    );
    let text = stdout(&t.projector(&["streams", "status"]));
    assert!(text.contains("STREAM RESET"), "{text}");

    // Accepted explicitly: the new stream is projected from its first sequence.
    let out = run_caught_up(&t, &["--accept-stream-reset"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let g = neo4j(&t.cfg);
    for s in &new {
        assert_eq!(
            count_nodes(&g, &t.main_gen(), "PlanApproval", "story_id", s).await,
            1,
            "{s}"
        );
    }
    // And from then on it is an ordinary stream again.
    let out = run_caught_up(&t, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(status_json(&t)["projectors"][0]["stream_reset"], false);

    // Recreated again, and this time it already holds more than the checkpoint (5): the
    // message at sequence 5 is not the one committed (another stream time).
    js.delete_stream(&planning).await.unwrap();
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let newer: Vec<String> = (0..8).map(|i| format!("US-NEWER-{i}")).collect();
    approvals(&t, &js, &newer).await;
    let out = run_caught_up(&t, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "checkpoint is 5 but the stream holds sequences 1..=8 (at a message of another time"
        ),
        "{}",
        stderr(&out)
    );
    let out = run_caught_up(&t, &["--accept-stream-reset"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for s in &newer {
        assert_eq!(
            count_nodes(&g, &t.main_gen(), "PlanApproval", "story_id", s).await,
            1,
            "{s}"
        );
    }
}

/// Two deployments (two configs) share one Neo4j: neither may drop the other's live graph.
#[tokio::test(flavor = "multi_thread")]
async fn generations_drop_refuses_any_deployments_live_generation_and_asks_first() {
    let (a, _) = setup().await;
    let (b, js_b) = setup().await;
    approvals(&b, &js_b, &["US-B-1".to_string()]).await;
    let out = run_caught_up(&b, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b_live = b.main_gen();

    let out = a.projector(&["generations", "drop", &b_live, "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stderr(&out).contains("is live"), "{}", stderr(&out));
    let g = neo4j(&b.cfg);
    assert_eq!(
        count_nodes(&g, &b_live, "PlanApproval", "story_id", "US-B-1").await,
        1
    );
    // A's list shows B's live generation as live, with the pointer that makes it so.
    let list: serde_json::Value =
        serde_json::from_slice(&a.projector(&["generations", "list", "--json"]).stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["generation"] == b_live.as_str())
        .unwrap_or_else(|| panic!("{b_live} not listed: {list}"))
        .clone();
    assert!(!entry["live_for"].as_array().unwrap().is_empty(), "{entry}");
    assert!(entry["created_ms"].as_i64().unwrap() > 0, "{entry}");

    // A generation that may go: not without --yes when nobody can be asked (no terminal).
    let spare = format!("{}-spare", b.tag);
    let out = run_caught_up(&b, &["--generation", &spare]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.projector(&["generations", "drop", &spare]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(
        count_nodes(&g, &spare, "PlanApproval", "story_id", "US-B-1").await,
        1
    );
    let out = b.projector(&["generations", "drop", &spare, "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        count_nodes(&g, &spare, "PlanApproval", "story_id", "US-B-1").await,
        0
    );
}

/// A mistyped generation is "no such generation" (exit 2) wherever one is read; creating
/// into an existing one is refused unless asked to replace it.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_generations_exit_2_and_an_existing_name_is_not_merged_into() {
    let (t, js) = setup().await;
    let h = engine::history::generate(6, 5);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 5)
        .await
        .unwrap();
    let out = run_caught_up(&t, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let nope = format!("{}-nope", t.tag);
    for args in [
        vec!["query", "story", "US-0001", "--generation", &nope],
        vec!["verify", "--generation", &nope],
        vec!["replay", "--from-seq", "1", "--generation", &nope],
        vec!["generations", "drop", &nope, "--yes"],
        vec!["dlq", "list", "--generation", &nope],
        vec!["streams", "status", "--generation", &nope],
    ] {
        let out = t.projector(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no such generation"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let g = neo4j(&t.cfg);
    let q = "MATCH (n {gen: $gen}) RETURN count(n) AS c";
    let count = |gen: String| {
        let g = g.clone();
        async move {
            let mut rows = g.execute(neo4rs::query(q).param("gen", gen)).await.unwrap();
            rows.next().await.unwrap().unwrap().get::<i64>("c").unwrap()
        }
    };
    assert_eq!(
        count(nope.clone()).await,
        0,
        "nothing was written into {nope}"
    );

    let x = format!("{}-x", t.tag);
    let out = t.projector(&["rebuild", "--as-of", "seq:5", "--name", &x]);
    assert!(out.status.success(), "{}", stderr(&out));
    let built = count(x.clone()).await;
    let out = t.projector(&["rebuild", "--as-of", "seq:20", "--name", &x]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--replace"), "{}", stderr(&out));
    assert_eq!(
        count(x.clone()).await,
        built,
        "the refused rebuild wrote nothing"
    );
    // Replaced: the same as a fresh build of that point, nothing left of the old one.
    let out = t.projector(&["rebuild", "--as-of", "seq:5", "--name", &x, "--replace"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count(x.clone()).await, built);
    let list = stdout(&t.projector(&["generations", "list"]));
    let line = list
        .lines()
        .find(|l| l.contains(&x))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("built") && line.contains("20"), "{line}");
}

/// Neo4j unreachable: one-shot commands end within the configured bound (exit 1), and
/// `streams status` says the checkpoints are unknown instead of "nothing lost".
#[tokio::test(flavor = "multi_thread")]
async fn one_shot_commands_give_up_on_an_unreachable_neo4j_within_the_bound() {
    let t =
        TestConfig::with(|s| s.replace("connect_timeout = \"30s\"", "connect_timeout = \"3s\""));
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dead = format!("bolt://127.0.0.1:{}", free_port());
    for args in [
        vec!["run", "--until-caught-up", "--metrics-addr", "off"],
        vec!["verify"],
        vec!["generations", "list"],
    ] {
        let started = Instant::now();
        let out = with_env(&t, &[("NEO4J_URI", &dead)], &args);
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
        assert!(
            stderr(&out).contains("not reachable within 3s"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = with_env(
        &t,
        &[("NEO4J_URI", &dead)],
        &["streams", "status", "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["lost_ranges"].is_null(), "{v}");
    assert!(v["projectors"].is_null(), "{v}");
    assert_eq!(
        v["streams"].as_array().unwrap().len(),
        10,
        "the streams part stands"
    );
}

async fn consumer_names(js: &jetstream::Context, t: &TestConfig) -> Vec<String> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    for base in [
        "PLANNING_EVENTS",
        "CONTEXT_EVENTS",
        "ORCHESTRATOR_EVENTS",
        "AGENT_RESPONSES",
    ] {
        let s = js.get_stream(t.stream(base)).await.unwrap();
        let names: Vec<String> = s.consumer_names().try_collect().await.unwrap();
        // Durables only (projector names them all `projector-...`): the replays' ordered
        // consumers are ephemeral, and the server removes them after their client is gone.
        out.extend(
            names
                .into_iter()
                .filter(|n| n.starts_with("projector-"))
                .map(|n| format!("{base}/{n}")),
        );
    }
    out.sort();
    out
}

/// Equal to `want` within 30 s (a deletion in flight when the process exits settles).
async fn consumers_settle(js: &jetstream::Context, t: &TestConfig, want: &[String], what: &str) {
    eventually(30, || async {
        let now = consumer_names(js, t).await;
        if now == want {
            Ok(())
        } else {
            Err(format!("{what}: {now:?}"))
        }
    })
    .await
}

fn generation_names(t: &TestConfig) -> Vec<String> {
    let out = t.projector(&["generations", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_str().unwrap().to_string())
        .collect()
}

/// `verify --against-rebuild` and `rebuild` leave no durable consumer and no temporary
/// generation, also when interrupted with SIGINT or SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn verify_and_rebuild_leave_no_consumers_or_temporary_generations() {
    let (t, js) = setup().await;
    let h = engine::history::generate(40, 9);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 9)
        .await
        .unwrap();
    let out = run_caught_up(&t, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = consumer_names(&js, &t).await;
    let gens_before = generation_names(&t);

    let out = t.projector(&["verify", "--against-rebuild"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    consumers_settle(&js, &t, &before, "after verify").await;
    assert_eq!(generation_names(&t), gens_before);

    let r = format!("{}-r", t.tag);
    let out = t.projector(&["rebuild", "--name", &r]);
    assert!(out.status.success(), "{}", stderr(&out));
    consumers_settle(&js, &t, &before, "after rebuild").await;

    // Interrupted: a signal once the temporary generation exists, while it builds.
    for signal in ["-INT", "-TERM"] {
        let child = Command::new(env!("CARGO_BIN_EXE_projector"))
            .arg("--config")
            .arg(&t.path)
            .args(["verify", "--against-rebuild"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // verify names its temporary generation `verify-<pid>-<nanos>`.
        let mine = format!("verify-{}-", child.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !generation_names(&t).iter().any(|g| g.starts_with(&mine)) {
            assert!(
                Instant::now() < deadline,
                "{signal}: no temporary generation"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let sent = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{signal}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("interrupted; the temporary generation verify-"),
            "{signal}: {}",
            stderr(&out)
        );
        consumers_settle(&js, &t, &before, &format!("{signal}: {}", stderr(&out))).await;
        let gens = generation_names(&t);
        assert!(
            !gens.iter().any(|g| g.starts_with(&mine)),
            "{signal}: {gens:?}\n{}",
            stderr(&out)
        );
    }
}

/// A work-queue stream removes a message once any consumer acks it: projector refuses to
/// read one (ensure reports it, run exits 2) and says to project a mirror instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_work_queue_stream_is_refused_by_ensure_and_run() {
    let t = TestConfig::new();
    let js = jetstream::new(nats(&t.cfg).await);
    let spec = engine::streams::specs(&t.cfg)
        .into_iter()
        .find(|s| s.name == t.stream("ORCHESTRATOR_EVENTS"))
        .unwrap();
    let mut c = spec.config();
    c.retention = jetstream::stream::RetentionPolicy::WorkQueue;
    js.create_stream(c).await.unwrap();
    let out = t.projector(&["streams", "ensure"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("mirror"), "{}", stderr(&out));
    let out = run_caught_up(&t, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("workqueue retention") && stderr(&out).contains("mirror"),
        "{}",
        stderr(&out)
    );
}

/// `dlq retry`/`dlq discard`/`dlq show` of an id that is not parked name it and exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_commands_on_an_unknown_id_exit_2_naming_it() {
    let (t, _js) = setup().await;
    let out = run_caught_up(&t, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = "graph:NOPE:1";
    for args in [
        vec!["dlq", "retry", id],
        vec!["dlq", "discard", id],
        vec!["dlq", "show", id],
    ] {
        let out = t.projector(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains(id), "{args:?}: {}", stderr(&out));
    }
}

/// With partitions, `streams status` shows each partition's holder from the lease bucket;
/// a bucket it cannot read leaves them unknown, and that is said, not shown as "no holder"
/// (the error used to be dropped).
#[tokio::test(flavor = "multi_thread")]
async fn status_says_holders_are_unknown_when_the_lease_bucket_is_missing() {
    let t = TestConfig::with(|s| s.replace("count = 1", "count = 2"));
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    js.delete_key_value(&t.cfg.partitions.lease_bucket)
        .await
        .unwrap();
    let o = t.projector(&["streams", "status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("no holder"), "{}", stdout(&o));
    assert!(stdout(&o).contains("holder unknown"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains(&format!(
            "partition holders unknown (lease bucket {}",
            t.cfg.partitions.lease_bucket
        )),
        "{}",
        stderr(&o)
    );
    let o = t.projector(&["streams", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["lease_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
}
