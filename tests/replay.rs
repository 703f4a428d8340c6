//! `projector replay`: bad input is refused before anything is written; a replay after a
//! "projection bug" converges to a clean pass; an interrupted replay resumes.

mod common;

use async_nats::jetstream;
use common::*;
use std::time::Duration;

async fn projected_history(stories: usize, seed: u64) -> (TestConfig, jetstream::Context) {
    let t = TestConfig::new();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    let h = engine::history::generate(stories, seed);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, seed)
        .await
        .unwrap();
    t.run_until_caught_up(&t.tag);
    (t, js)
}

fn replay(t: &TestConfig, args: &[&str]) -> std::process::Output {
    let mut a = vec!["replay", "--generation", &t.tag];
    a.extend_from_slice(args);
    t.projector(&a)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ranges_are_refused_with_exit_2_naming_the_limit() {
    let (t, js) = projected_history(3, 1).await;
    let planning = t.stream("PLANNING_EVENTS");
    let last = stream_state(&js, &planning).await.last_sequence;
    let before = t.digest(&t.tag);

    let far = (last + 1).to_string();
    let o = replay(&t, &["--stream", &planning, "--from-seq", &far]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!(
            "--from-seq {far} is beyond the last sequence of {planning} ({last})"
        )),
        "{}",
        stderr(&o)
    );

    let o = replay(
        &t,
        &["--stream", &planning, "--from-seq", "5", "--to-seq", "4"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--to-seq 4 is below --from-seq 5"),
        "{}",
        stderr(&o)
    );

    let o = replay(&t, &["--projector", "nope", "--from-seq", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown projector \"nope\""),
        "{}",
        stderr(&o)
    );

    // Messages removed by limits (here: a purge) from the stream and from its archive are
    // before the first retained sequence.
    js.get_stream(&planning)
        .await
        .unwrap()
        .purge()
        .sequence(4)
        .await
        .unwrap();
    let archive = format!("{planning}_ARCHIVE");
    eventually(10, || async {
        let mut a = js.get_stream(&archive).await.map_err(|e| e.to_string())?;
        let n = a
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        if n == last {
            Ok(())
        } else {
            Err(format!("archive at {n}"))
        }
    })
    .await;
    js.get_stream(&archive)
        .await
        .unwrap()
        .purge()
        .sequence(4)
        .await
        .unwrap();
    let o = replay(&t, &["--stream", &planning, "--from-seq", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!(
            "--from-seq 2 is before the first sequence {planning} still holds (4) and before the first its archive {archive} holds (4)"
        )),
        "{}",
        stderr(&o)
    );

    assert_eq!(t.digest(&t.tag), before, "a refused replay writes nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_1_repairs_a_damaged_graph_to_the_clean_pass() {
    let (t, _js) = projected_history(12, 4).await;
    let clean = t.digest(&t.tag);
    // What a projection bug leaves behind: wrong values (at the same versions) and missing nodes.
    let g = neo4j(&t.cfg);
    g.run(
        neo4rs::query("MATCH (n:Task {gen: $gen}) SET n.status = 'BROKEN'")
            .param("gen", t.tag.clone()),
    )
    .await
    .unwrap();
    g.run(
        neo4rs::query("MATCH (d:Decision {gen: $gen}) WITH d LIMIT 5 DETACH DELETE d")
            .param("gen", t.tag.clone()),
    )
    .await
    .unwrap();
    assert_ne!(t.digest(&t.tag), clean);

    let o = replay(&t, &["--from-seq", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("replayed 1..="), "{}", stdout(&o));
    assert_eq!(
        t.digest(&t.tag),
        clean,
        "replay did not converge to the clean pass"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_replay_resumes_and_gives_the_same_hash() {
    let (t, _js) = projected_history(30, 8).await;
    let clean = t.digest(&t.tag);
    let g = neo4j(&t.cfg);
    g.run(
        neo4rs::query("MATCH (n:Story {gen: $gen}) SET n.title = 'BROKEN'")
            .param("gen", t.tag.clone()),
    )
    .await
    .unwrap();
    let planning = t.stream("PLANNING_EVENTS");
    // Kill it mid-way, at a point that varies from run to run.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args([
            "--config",
            t.path.to_str().unwrap(),
            "replay",
            "--generation",
            &t.tag,
        ])
        .args([
            "--stream",
            &planning,
            "--from-seq",
            "1",
            "--batch-size",
            "5",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis() as u64
        % 400;
    tokio::time::sleep(Duration::from_millis(600 + jitter)).await;
    let _ = child.kill();
    let _ = child.wait();

    let o = replay(
        &t,
        &[
            "--stream",
            &planning,
            "--from-seq",
            "1",
            "--batch-size",
            "5",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(t.digest(&t.tag), clean);
}

/// A message on a catalog subject without this deployment's prefix belongs to another
/// deployment: live parks it as an unknown subject, so a replay and a rebuild must leave it
/// out too (they used to decode it as if it had the prefix and add its story).
#[tokio::test(flavor = "multi_thread")]
async fn an_unprefixed_subject_is_unknown_to_replays_as_it_is_to_live() {
    let t = Stranger::config();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    let h = engine::history::generate(4, 21);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 21)
        .await
        .unwrap();
    let stranger = Stranger::publish(&t, &js).await;
    t.publish(
        &js,
        &[(
            "planning.story.created",
            r#"{"story_id":"US-AFTER","title":"after the stranger"}"#,
        )],
    )
    .await;
    t.run_until_caught_up(&t.tag);
    let g = neo4j(&t.cfg);
    assert_eq!(count_nodes(&g, &t.tag, "Story", "id", &stranger).await, 0);
    assert_eq!(count_nodes(&g, &t.tag, "Story", "id", "US-AFTER").await, 1);
    let live = t.digest(&t.tag);

    let o = replay(&t, &["--from-seq", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        count_nodes(&g, &t.tag, "Story", "id", &stranger).await,
        0,
        "the replay projected a message of another deployment"
    );
    assert_eq!(t.digest(&t.tag), live, "replay and live disagree");

    let o = t.projector(&[
        "verify",
        "--generation",
        &t.tag,
        "--against-rebuild",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)));
    assert_eq!(v["equal"], true, "rebuild and live disagree: {v}");
}
