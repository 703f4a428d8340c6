//! Rebuilds and generations: determinism, temporal generations, and a switch while `run`
//! keeps projecting. Each test has its own subject prefix, hence its own live pointer.

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

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

fn generations(t: &TestConfig) -> serde_json::Value {
    serde_json::from_str(&ok(t.projector(&["generations", "list", "--json"]))).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_rebuilds_and_the_live_run_give_the_same_hash() {
    let (t, js) = setup().await;
    let h = engine::history::generate(20, 3);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 3)
        .await
        .unwrap();
    ok(t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]));
    let live = t.digest(&t.main_gen());
    assert!(live.1 > 300, "{live:?}");

    let r1 = format!("{}-r1", t.tag);
    let out = ok(t.projector(&["rebuild", "--name", &r1, "--keep-old"]));
    assert!(
        out.contains(&format!("generation {r1} is live (was {})", t.main_gen())),
        "{out}"
    );
    assert_eq!(t.digest(&r1), live);

    let r2 = format!("{}-r2", t.tag);
    let out = ok(t.projector(&["rebuild", "--name", &r2]));
    assert!(out.contains(&format!("dropped generation {r1}")), "{out}");
    assert_eq!(t.digest(&r2), live);
    let gens = generations(&t);
    let live_gen: Vec<&str> = gens
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["live"] == true)
        .map(|g| g["generation"].as_str().unwrap())
        .collect();
    assert_eq!(live_gen, vec![r2.as_str()]);
    // `verify` without --generation reads the live one; against a fresh rebuild it is equal.
    let v: serde_json::Value =
        serde_json::from_str(&ok(t.projector(&["verify", "--against-rebuild", "--json"]))).unwrap();
    assert_eq!(v["generation"], r2.as_str());
    assert_eq!(v["equal"], true, "{v}");
    // The live cache switched with the graph: one context per story under the live prefix.
    let v: serde_json::Value =
        serde_json::from_str(&ok(t.projector(&["verify", "--json"]))).unwrap();
    assert_eq!(v["cache_keys"], 20, "{v}");
    // Dropping the live generation is refused.
    let o = t.projector(&["generations", "drop", &r2, "--yes"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_against_rebuild_reports_a_damaged_graph() {
    let (t, js) = setup().await;
    let h = engine::history::generate(5, 9);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 9)
        .await
        .unwrap();
    ok(t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]));
    let g = neo4j(&t.cfg);
    g.run(
        neo4rs::query(
            "MATCH (n:Task {gen: $gen}) WHERE n.id STARTS WITH 'T-0001' SET n.status = 'BROKEN'",
        )
        .param("gen", t.main_gen()),
    )
    .await
    .unwrap();
    let o = t.projector(&["verify", "--against-rebuild"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("Task: "), "{}", stdout(&o));
    // The damaged nodes are named, with the property that differs (issue #17): not only
    // "contents differ".
    let out = stdout(&o);
    let named: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("Task T-0001"))
        .collect();
    assert!(!named.is_empty(), "{out}");
    assert!(
        named.iter().all(|l| l.contains("status: \"BROKEN\" -> \"")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn as_of_seq_n_equals_a_run_that_stopped_at_n() {
    let (t, js) = setup().await;
    // Planning events only, so one stream's sequence N is the whole cut.
    let planning: Vec<_> = engine::history::generate(15, 6)
        .into_iter()
        .filter(|s| s.subject.starts_with("planning."))
        .collect();
    let (first, rest) = planning.split_at(planning.len() / 2);
    engine::history::publish(&js, &t.cfg.subject_prefix, first, 6)
        .await
        .unwrap();
    let at_n = format!("{}-at-n", t.tag);
    t.run_until_caught_up(&at_n);
    let rest: Vec<_> = rest.to_vec();
    engine::history::publish(&js, &t.cfg.subject_prefix, &rest, 7)
        .await
        .unwrap();

    let asof = format!("{}-asof", t.tag);
    let n = first.len().to_string();
    let out = ok(t.projector(&["rebuild", "--as-of", &format!("seq:{n}"), "--name", &asof]));
    assert!(
        out.contains(&format!("live ({}) untouched", t.main_gen())),
        "{out}"
    );
    assert_eq!(t.digest(&asof), t.digest(&at_n));

    // By time: the stream time of message N is the same cut.
    let m = js
        .get_stream(t.stream("PLANNING_EVENTS"))
        .await
        .unwrap()
        .get_raw_message(first.len() as u64)
        .await
        .unwrap();
    let when = m
        .time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let by_time = format!("{}-bytime", t.tag);
    ok(t.projector(&["rebuild", "--as-of", &when, "--name", &by_time]));
    assert_eq!(t.digest(&by_time), t.digest(&at_n));
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_while_run_keeps_projecting_switches_with_no_empty_moment() {
    let (t, js) = setup().await;
    let h = engine::history::generate(40, 12);
    let (a, b) = h.split_at(h.len() / 2);
    engine::history::publish(&js, &t.cfg.subject_prefix, a, 12)
        .await
        .unwrap();
    let run = t.spawn_run_follow_live(&[]);
    let g = neo4j(&t.cfg);
    let pointer = format!("live:{}", t.cfg.subject_prefix);
    let live_stories = |g: neo4rs::Graph, pointer: String| async move {
        let mut r = g
            .execute(
                neo4rs::query("OPTIONAL MATCH (p:GenerationPointer {id: $p}) WITH coalesce(p.name, $d) AS gen MATCH (s:Story {gen: gen}) RETURN count(s) AS n")
                    .param("p", pointer.clone())
                    .param("d", pointer.replace("live:", "").trim_end_matches('.').to_string() + "-main"),
            )
            .await
            .unwrap();
        r.next()
            .await
            .unwrap()
            .map(|r| r.get::<i64>("n").unwrap())
            .unwrap_or(0)
    };
    eventually(60, || {
        let (g, p) = (g.clone(), pointer.clone());
        async move {
            if live_stories(g, p).await >= 20 {
                Ok(())
            } else {
                Err(())
            }
        }
    })
    .await;
    // Keep publishing while the rebuild runs; watch what readers of the live pointer see.
    let publisher = {
        let (js, prefix, b) = (js.clone(), t.cfg.subject_prefix.clone(), b.to_vec());
        tokio::spawn(async move {
            for chunk in b.chunks(40) {
                engine::history::publish(&js, &prefix, chunk, 13)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let watcher = {
        let (g, p) = (g.clone(), pointer.clone());
        tokio::spawn(async move {
            let mut min = i64::MAX;
            for _ in 0..200 {
                min = min.min(live_stories(g.clone(), p.clone()).await);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            min
        })
    };
    let name = format!("{}-new", t.tag);
    let out = t.projector(&["rebuild", "--name", &name]);
    publisher.await.unwrap();
    let min_seen = watcher.await.unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        min_seen >= 20,
        "readers saw only {min_seen} stories in the live generation"
    );

    // The live run switches to the new generation at its next batch and projects into it.
    t.publish(
        &js,
        &[(
            "planning.story.created",
            r#"{"story_id":"US-AFTER","title":"after the switch"}"#,
        )],
    )
    .await;
    wait_for_count(&g, &name, "Story", "id", "US-AFTER", 1).await;
    let clean = format!("{}-clean", t.tag);
    eventually(90, || async {
        t.run_until_caught_up(&clean);
        let (live, fresh) = (t.digest(&name), t.digest(&clean));
        if live == fresh {
            Ok(())
        } else {
            Err((live, fresh))
        }
    })
    .await;
    assert!(
        run.log()
            .contains("a rebuilt generation was promoted; switching to it"),
        "{}",
        run.log()
    );
    assert_eq!(run.terminate(), Some(0));
}

/// Every batch is the one batch statement (D79), whatever its size: batches of two events
/// (many small statements, each compacted on its own) and of 5,000 (one compaction over the
/// whole history) must write the same graph.
#[tokio::test(flavor = "multi_thread")]
async fn small_batches_and_big_batches_write_the_same_graph() {
    let (t, js) = setup().await;
    let h = engine::history::generate(12, 5);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 5)
        .await
        .unwrap();
    let traced = |gen: &str, batch: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
            .arg("--config")
            .arg(&t.path)
            .args(["--log-format", "json", "run", "--until-caught-up"])
            .args(["--metrics-addr", "off", "--generation", gen])
            .args(["--batch-size", batch])
            .env("PROJECTOR_LOG", "warn,engine::sink::graph=trace")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    // The start-up warm-up runs the batch statement with nothing in it: not a real batch.
    let real_batches = |log: &str| {
        log.lines()
            .filter(|l| l.contains("batch statement") && !l.contains("\"nodes\":0,\"rels\":0"))
            .count()
    };
    let small = format!("{}-small", t.tag);
    let small_batches = real_batches(&traced(&small, "2"));
    let big = format!("{}-big", t.tag);
    let big_batches = real_batches(&traced(&big, "5000"));
    // Both went through the batch statement, the small run in many more of them.
    assert!(big_batches >= 1, "{big_batches}");
    assert!(
        small_batches > 4 * big_batches,
        "{small_batches} vs {big_batches}"
    );
    let (a, b) = (t.digest(&small), t.digest(&big));
    assert!(a.1 > 200, "{a:?}");
    assert_eq!(a, b);
}
