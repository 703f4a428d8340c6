//! Archive mirrors: full replays outlive the streams' limits; a history that is gone from
//! both is refused instead of rebuilt partially.

mod common;

use async_nats::jetstream;
use common::*;
use std::time::Duration;

/// PLANNING_EVENTS keeps only its last 1,000 messages; `archive_msgs` caps its archive.
async fn small_stream(archive_msgs: i64) -> (TestConfig, jetstream::Context) {
    let t = TestConfig::with(|text| {
        text.replacen("max_msgs = 1000000", "max_msgs = 1000", 1)
            .replace("[archive]\nenabled = true\nmax_age = \"0s\"\nmax_bytes = -1\nmax_msgs = -1", &format!("[archive]\nenabled = true\nmax_age = \"0s\"\nmax_bytes = -1\nmax_msgs = {archive_msgs}"))
    });
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    (t, js)
}

/// 5,000 planning events, published in steps the live projector keeps up with.
async fn publish_5000(t: &TestConfig, js: &jetstream::Context) -> Vec<engine::history::Sample> {
    let planning: Vec<_> = engine::history::generate(600, 31)
        .into_iter()
        .filter(|s| s.subject.starts_with("planning."))
        .take(5000)
        .collect();
    assert_eq!(planning.len(), 5000);
    let stream = t.stream("PLANNING_EVENTS");
    let name = "projector-graph-p0";
    for (i, chunk) in planning.chunks(250).enumerate() {
        engine::history::publish(js, &t.cfg.subject_prefix, chunk, 1000 + i as u64)
            .await
            .unwrap();
        eventually(60, || async {
            let s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
            let mut c: jetstream::consumer::PullConsumer =
                s.get_consumer(name).await.map_err(|e| e.to_string())?;
            let i = c.info().await.map_err(|e| e.to_string())?;
            if i.num_pending == 0 && i.num_ack_pending == 0 {
                Ok(())
            } else {
                Err(format!("pending {}", i.num_pending))
            }
        })
        .await;
    }
    planning
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_reads_the_archive_when_the_stream_dropped_the_start() {
    let (t, js) = small_stream(-1).await;
    let run = t.spawn_run_follow_live(&[]);
    publish_5000(&t, &js).await;
    assert_eq!(run.terminate(), Some(0));
    let mut s = js.get_stream(t.stream("PLANNING_EVENTS")).await.unwrap();
    let st = s.info().await.unwrap().state.clone();
    assert_eq!(
        (st.first_sequence, st.last_sequence, st.messages),
        (4001, 5000, 1000)
    );
    let live = t.digest(&t.main_gen());

    // The archive holds all 5,000, with the same sequences.
    let status = t.projector(&["streams", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let archive = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == format!("{}_ARCHIVE", t.stream("PLANNING_EVENTS")))
        .unwrap()
        .clone();
    assert_eq!(
        (archive["first_seq"].as_u64(), archive["last_seq"].as_u64()),
        (Some(1), Some(5000))
    );
    assert_eq!(archive["mirror_lag"], 0);

    let r = format!("{}-r", t.tag);
    let o = t.projector(&["rebuild", "--name", &r, "--keep-old"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(
        t.digest(&r),
        live,
        "rebuild from the archive differs from the live run"
    );

    // An early temporal generation, entirely from the archive.
    let early = format!("{}-early", t.tag);
    let o = t.projector(&["rebuild", "--as-of", "seq:300", "--name", &early]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = neo4j(&t.cfg);
    let mut rows = g
        .execute(
            neo4rs::query("MATCH (e:StoryEvent {gen: $gen}) RETURN max(e.seq) AS m, count(e) AS n")
                .param("gen", early.clone()),
        )
        .await
        .unwrap();
    let row = rows.next().await.unwrap().unwrap();
    assert_eq!(row.get::<i64>("m").unwrap(), 300);
    assert_eq!(row.get::<i64>("n").unwrap(), 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capped_archive_makes_the_rebuild_refuse_instead_of_building_a_partial_graph() {
    let (t, js) = small_stream(2000).await;
    let run = t.spawn_run_follow_live(&[]);
    publish_5000(&t, &js).await;
    assert_eq!(run.terminate(), Some(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = format!("{}-r", t.tag);
    let o = t.projector(&["rebuild", "--name", &r]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let planning = t.stream("PLANNING_EVENTS");
    assert!(
        stderr(&o).contains(&format!("cannot rebuild {planning}: it holds sequences from 4001 and its archive {planning}_ARCHIVE from 3001")),
        "{}",
        stderr(&o)
    );
    let g = neo4j(&t.cfg);
    assert_eq!(
        count_nodes(&g, &r, "Story", "gen", &r).await,
        0,
        "nothing was built"
    );
    // Not even an empty generation: `generations list` does not show the name.
    let list = stdout(&t.projector(&["generations", "list"]));
    assert!(!list.contains(&r), "{list}");
}

/// Issue #17 item 10: the projector is stopped while the stream drops messages by its limits
/// (`max_msgs = 1000`); on restart the range the stream no longer holds is read from its
/// archive, then the live stream again: nothing lost, no gap recorded, live equals a rebuild.
#[tokio::test(flavor = "multi_thread")]
async fn a_range_the_stream_dropped_while_stopped_is_read_from_the_archive() {
    let (t, js) = small_stream(-1).await;
    let planning: Vec<_> = engine::history::generate(300, 41)
        .into_iter()
        .filter(|s| s.subject.starts_with("planning."))
        .take(2000)
        .collect();
    assert_eq!(planning.len(), 2000);
    let (first, rest) = planning.split_at(500);
    engine::history::publish(&js, &t.cfg.subject_prefix, first, 41)
        .await
        .unwrap();
    let caught_up =
        |t: &TestConfig| t.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
    let o = caught_up(&t);
    assert!(o.status.success(), "{}", stderr(&o));
    // Stopped: 1,500 more, and the stream keeps only the last 1,000 (1001..=2000).
    engine::history::publish(&js, &t.cfg.subject_prefix, rest, 42)
        .await
        .unwrap();
    let stream = t.stream("PLANNING_EVENTS");
    let archive = format!("{stream}_ARCHIVE");
    let st = stream_state(&js, &stream).await;
    assert_eq!((st.first_sequence, st.last_sequence), (1001, 2000));
    eventually(30, || async {
        let a = stream_state(&js, &archive).await;
        if (a.first_sequence, a.last_sequence) == (1, 2000) {
            Ok(())
        } else {
            Err(format!(
                "archive at {}..={}",
                a.first_sequence, a.last_sequence
            ))
        }
    })
    .await;

    let o = caught_up(&t);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("reading it from the archive"),
        "{}",
        stderr(&o)
    );
    let status = t.projector(&["streams", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["lost_ranges"], serde_json::json!([]), "{v}");
    let g = neo4j(&t.cfg);
    let gen = t.main_gen();
    let mut rows = g
        .execute(
            neo4rs::query("MATCH (e:StoryEvent {gen: $gen}) RETURN count(e) AS n, max(e.seq) AS m")
                .param("gen", gen.clone()),
        )
        .await
        .unwrap();
    let row = rows.next().await.unwrap().unwrap();
    assert_eq!(
        (row.get::<i64>("n").unwrap(), row.get::<i64>("m").unwrap()),
        (2000, 2000),
        "every event projected once"
    );
    // No archive reader is left behind.
    let mut a = js.get_stream(&archive).await.unwrap();
    assert_eq!(a.info().await.unwrap().state.consumer_count, 0);
    let o = t.projector(&["verify", "--against-rebuild"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}
