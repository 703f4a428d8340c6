//! Foundation: the real stack keeps data across restarts, and streams are persistent.
//!
//! Tests here restart servers, so they take one lock and run one at a time.

mod common;

use async_nats::jetstream::{self, stream::StorageType};
use common::*;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ensure_creates_the_five_seed_streams_in_file_storage() {
    let _g = serial().await;
    let t = TestConfig::new();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The five seed streams, the dead letters, and an archive for each of the four projected.
    assert_eq!(stdout(&out).matches("created (file storage)").count(), 10);

    let js = jetstream::new(nats(&t.cfg).await);
    for (base, age_secs, msgs) in [
        ("PLANNING_EVENTS", 30 * 86_400, 1_000_000),
        ("CONTEXT_EVENTS", 7 * 86_400, 100_000),
        ("ORCHESTRATOR_EVENTS", 7 * 86_400, 50_000),
        ("AGENT_COMMANDS", 3_600, 10_000),
        ("AGENT_RESPONSES", 3_600, 10_000),
    ] {
        let mut s = js.get_stream(t.stream(base)).await.unwrap();
        let c = &s.info().await.unwrap().config;
        assert_eq!(c.storage, StorageType::File, "{base}");
        assert_eq!(c.max_age, Duration::from_secs(age_secs), "{base}");
        assert_eq!(c.max_messages, msgs, "{base}");
        assert_eq!(c.duplicate_window, Duration::from_secs(120), "{base}");
    }

    // Idempotent, and status shows every stream in file storage.
    let again = t.projector(&["streams", "ensure"]);
    assert!(again.status.success());
    assert_eq!(stdout(&again).matches(": ok").count(), 10);
    let status = t.projector(&["streams", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let storages: Vec<&str> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["storage"].as_str().unwrap())
        .collect();
    assert_eq!(storages, vec!["file"; 10]);
}

async fn memory_stream_with_messages(t: &TestConfig, n: usize) -> jetstream::Context {
    let js = jetstream::new(nats(&t.cfg).await);
    let spec = engine::streams::specs(&t.cfg)
        .into_iter()
        .find(|s| s.name == t.stream("PLANNING_EVENTS"))
        .unwrap();
    let mut c = spec.config();
    c.storage = StorageType::Memory; // the seeds' bug #1
    js.create_stream(c).await.unwrap();
    let subject = t.subject("planning.story.created");
    let mut acks = Vec::new();
    for i in 0..n {
        let body = format!("{{\"story_id\":\"US-{i}\"}}");
        acks.push(js.publish(subject.clone(), body.into()).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    js
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stream_is_drift_reported_field_by_field_with_exit_2() {
    let _g = serial().await;
    let t = TestConfig::new();
    memory_stream_with_messages(&t, 3).await;
    let out = t.projector(&["streams", "ensure"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("storage"))
        .unwrap_or_else(|| panic!("no storage line in:\n{text}"));
    assert!(
        line.contains("wanted file") && line.contains("found memory"),
        "{line}"
    );
    assert!(text.contains(&format!("{}: DRIFT", t.stream("PLANNING_EVENTS"))));
}

async fn read_all(js: &jetstream::Context, stream: &str, last: u64) -> Vec<(u64, String)> {
    let s = js.get_stream(stream).await.unwrap();
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await.unwrap();
        out.push((m.sequence, String::from_utf8(m.payload.to_vec()).unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_moves_1000_messages_to_file_keeping_sequences_and_survives_nats_restart() {
    let _g = serial().await;
    let t = TestConfig::new();
    let js = memory_stream_with_messages(&t, 1000).await;
    let name = t.stream("PLANNING_EVENTS");
    let before = read_all(&js, &name, 1000).await;

    let out = t.projector(&["streams", "ensure", "--migrate"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("migrated to file storage (1000 messages, sequences 1..1000 kept)"),
        "{}",
        stdout(&out)
    );

    let check = |js: jetstream::Context| {
        let name = name.clone();
        let before = before.clone();
        async move {
            let mut s = js.get_stream(&name).await.unwrap();
            let info = s.info().await.unwrap().clone();
            assert_eq!(info.config.storage, StorageType::File);
            assert!(info.config.mirror.is_none());
            assert_eq!(info.state.messages, 1000);
            assert_eq!(
                (info.state.first_sequence, info.state.last_sequence),
                (1, 1000)
            );
            assert_eq!(read_all(&js, &name, 1000).await, before);
        }
    };
    check(js.clone()).await;
    // The promoted stream takes new messages on its subjects again, at the next sequence.
    let ack = js
        .publish(
            t.subject("planning.story.created"),
            "{\"story_id\":\"US-new\"}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 1001);
    js.get_stream(&name)
        .await
        .unwrap()
        .delete_message(1001)
        .await
        .unwrap();
    // And nothing is left of the temporary mirror.
    assert!(js.get_stream(format!("{name}_MIGRATING")).await.is_err());

    stack(&["restart", "nats"]);
    let js = jetstream::new(nats(&t.cfg).await);
    // After a restart the data is back from disk; the deleted 1001 keeps the last seq there.
    let mut s = js.get_stream(&name).await.unwrap();
    let info = s.info().await.unwrap().clone();
    assert_eq!(info.config.storage, StorageType::File);
    assert_eq!(info.state.messages, 1000);
    assert_eq!(read_all(&js, &name, 1000).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn data_in_all_three_servers_survives_a_stack_restart() {
    let _g = serial().await;
    let t = TestConfig::new();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    let ack = js
        .publish(
            t.subject("planning.story.created"),
            "{\"story_id\":\"US-SURVIVE\"}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut kv = valkey(&t.cfg).await;
    let key = format!("{}:survive", t.tag);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("still here")
        .query_async(&mut kv)
        .await
        .unwrap();
    let graph = neo4j(&t.cfg);
    graph
        .run(neo4rs::query("CREATE (:SurvivalProbe {tag: $tag})").param("tag", t.tag.clone()))
        .await
        .unwrap();

    stack(&["restart"]);

    let js = jetstream::new(nats(&t.cfg).await);
    let m = js
        .get_stream(t.stream("PLANNING_EVENTS"))
        .await
        .unwrap()
        .get_raw_message(ack.sequence)
        .await
        .unwrap();
    assert_eq!(&m.payload[..], b"{\"story_id\":\"US-SURVIVE\"}");
    let mut kv = valkey(&t.cfg).await;
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut kv)
        .await
        .unwrap();
    assert_eq!(v, "still here");
    let graph = neo4j(&t.cfg);
    let mut rows = graph
        .execute(
            neo4rs::query("MATCH (p:SurvivalProbe {tag: $tag}) RETURN count(p) AS n")
                .param("tag", t.tag.clone()),
        )
        .await
        .unwrap();
    let n: i64 = rows.next().await.unwrap().unwrap().get("n").unwrap();
    assert_eq!(n, 1);
    graph
        .run(
            neo4rs::query("MATCH (p:SurvivalProbe {tag: $tag}) DELETE p")
                .param("tag", t.tag.clone()),
        )
        .await
        .unwrap();
    // The Neo4j shutdown was clean: SIGTERM ran the launcher's shutdown hook.
    let logs = std::env::var("STACK_LOGS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".local/logs"));
    let prev = std::fs::read_to_string(logs.join("neo4j.log.prev")).unwrap();
    assert!(prev.contains("neo4j-launcher: stopped cleanly"), "{prev}");
}

#[test]
fn unreachable_nats_is_a_one_line_error_with_exit_1_within_seconds() {
    let t = TestConfig::new();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["--config", t.path.to_str().unwrap(), "streams", "status"])
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: cannot connect to NATS at nats://127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Instances started together (a deployment scaled to three) create the schema at the same
/// moment: the loser of each `CREATE ... IF NOT EXISTS` race gets
/// `EquivalentSchemaRuleAlreadyExists` from Neo4j and must not fail its start.
#[tokio::test(flavor = "multi_thread")]
async fn instances_creating_the_schema_at_once_all_start() {
    let _g = serial().await;
    let t = TestConfig::new();
    let g = neo4j(&t.cfg);
    let indexes = [
        "story_event_story",
        "decision_story",
        "task_status",
        "parked_story",
    ];
    for round in 0..3 {
        for name in indexes {
            g.run(neo4rs::query(&format!("DROP INDEX {name} IF EXISTS")))
                .await
                .unwrap();
        }
        let sinks: Vec<engine::sink::graph::GraphSink> = (0..4)
            .map(|_| engine::sink::graph::GraphSink::connect(&t.cfg.neo4j).unwrap())
            .collect();
        let results = futures::future::join_all(sinks.iter().map(|s| s.ensure_schema())).await;
        for r in results {
            r.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        let mut rows = g
            .execute(neo4rs::query(
                "SHOW INDEXES YIELD name RETURN collect(name) AS names",
            ))
            .await
            .unwrap();
        let names: Vec<String> = rows.next().await.unwrap().unwrap().get("names").unwrap();
        for name in indexes {
            assert!(
                names.iter().any(|n| n == name),
                "round {round}: {name} missing in {names:?}"
            );
        }
    }
}

/// A restart of nats-server makes it report the archives' (mirrors') duplicate window as 0.
/// `ensure` compares only what the server keeps for each kind of stream, so a deploy gated on
/// it is not blocked by a restart.
#[tokio::test(flavor = "multi_thread")]
async fn ensure_is_clean_after_a_nats_restart() {
    let _g = serial().await;
    let t = TestConfig::new();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stack(&["restart", "nats"]);
    let again = t.projector(&["streams", "ensure"]);
    assert!(
        again.status.success(),
        "ensure after a NATS restart: exit {:?}\n{}\n{}",
        again.status.code(),
        stdout(&again),
        stderr(&again)
    );
    assert_eq!(
        stdout(&again).matches(": ok").count(),
        10,
        "{}",
        stdout(&again)
    );
    // A live stream's duplicate window is still compared: changing it is drift.
    let js = jetstream::new(nats(&t.cfg).await);
    let mut c = js
        .get_stream(t.stream("PLANNING_EVENTS"))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    c.duplicate_window = Duration::from_secs(30);
    js.update_stream(c).await.unwrap();
    let drift = t.projector(&["streams", "ensure"]);
    assert_eq!(drift.status.code(), Some(2), "{}", stdout(&drift));
    assert!(
        stdout(&drift).contains("duplicate_window  wanted 2m"),
        "{}",
        stdout(&drift)
    );
}

fn projector_env(t: &TestConfig, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_projector"));
    c.arg("--config").arg(&t.path).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("projector binary runs")
}

/// `--migrate` stopped after each of its steps (as a kill would stop it) leaves a state that a
/// plain `ensure` recognises and refuses to "repair" by creating an empty stream, and that
/// `--migrate` finishes: every message keeps its sequence number and payload (so stored
/// checkpoints stay valid), and nothing temporary is left.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_stopped_at_every_step_resumes_and_keeps_every_message() {
    let _g = serial().await;
    // Seven steps: stopping after 1..=6 leaves each intermediate stage once.
    for steps in 1..=6 {
        let t = TestConfig::new();
        let js = memory_stream_with_messages(&t, 200).await;
        let name = t.stream("PLANNING_EVENTS");
        let before = read_all(&js, &name, 200).await;
        // Once, a projector with a checkpoint in the memory stream: it must go on after the
        // migration from that checkpoint (same sequences and stream times), with no reset.
        let projected = steps == 3;
        if projected {
            // Creates the other streams (and reports the memory one: exit 2).
            assert_eq!(t.projector(&["streams", "ensure"]).status.code(), Some(2));
            let out = t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let stop = steps.to_string();
        let out = projector_env(
            &t,
            &[("PROJECTOR_MIGRATE_STOP_AFTER", &stop)],
            &["streams", "ensure", "--migrate"],
        );
        assert_eq!(out.status.code(), Some(1), "step {steps}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("PROJECTOR_MIGRATE_STOP_AFTER"),
            "{}",
            stderr(&out)
        );

        // A plain ensure: exit 2, names the interruption, creates nothing in NAME's place.
        let existed = js.get_stream(&name).await.is_ok();
        let plain = t.projector(&["streams", "ensure"]);
        assert_eq!(
            plain.status.code(),
            Some(2),
            "step {steps}: {}\n{}",
            stdout(&plain),
            stderr(&plain)
        );
        assert!(
            stdout(&plain).contains(&format!("{name}: MIGRATION INTERRUPTED")),
            "step {steps}: {}",
            stdout(&plain)
        );
        assert_eq!(
            js.get_stream(&name).await.is_ok(),
            existed,
            "step {steps}: plain ensure changed whether {name} exists"
        );

        let done = t.projector(&["streams", "ensure", "--migrate"]);
        assert!(
            done.status.success(),
            "step {steps}: {}\n{}",
            stdout(&done),
            stderr(&done)
        );
        assert!(
            stdout(&done)
                .contains("migrated to file storage (200 messages, sequences 1..200 kept)"),
            "step {steps}: {}",
            stdout(&done)
        );
        let mut s = js.get_stream(&name).await.unwrap();
        let info = s.info().await.unwrap().clone();
        assert_eq!(info.config.storage, StorageType::File, "step {steps}");
        assert!(info.config.mirror.is_none(), "step {steps}");
        assert_eq!(read_all(&js, &name, 200).await, before, "step {steps}");
        assert!(js.get_stream(format!("{name}_MIGRATING")).await.is_err());
        let ack = js
            .publish(t.subject("planning.story.created"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            ack.sequence, 201,
            "step {steps}: publishes go on at the next sequence"
        );
        let clean = t.projector(&["streams", "ensure"]);
        assert!(clean.status.success(), "step {steps}: {}", stdout(&clean));
        if projected {
            let out = t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
            assert!(
                out.status.success(),
                "after the migration: {}",
                stderr(&out)
            );
            let v: serde_json::Value =
                serde_json::from_slice(&t.projector(&["streams", "status", "--json"]).stdout)
                    .unwrap();
            let p = v["projectors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["stream"] == name.as_str())
                .unwrap()
                .clone();
            assert_eq!(
                (p["checkpoint"].as_u64(), p["stream_reset"].as_bool()),
                (Some(201), Some(false)),
                "{p}"
            );
        }
    }
}
