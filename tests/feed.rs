//! The change feed (`GET /v1/changes`) with a real SSE client (`common::sse`): order,
//! after-commit reads, filters, resume across a restart, reset, a generation switch, and
//! `projector watch`.

mod common;

use async_nats::jetstream;
use common::sse::{self, pos, Ev};
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Watermarks every second, so a test waits little for "caught up".
fn config(max_len: u64) -> TestConfig {
    TestConfig::with(|s| {
        s.replace("watermark_interval = \"5s\"", "watermark_interval = \"1s\"")
            .replace(
                "changelog_max_len = 100000",
                &format!("changelog_max_len = {max_len}"),
            )
    })
}

fn story_json(port: u16, id: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /v1/stories/{id} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn created(id: &str) -> (String, String) {
    (
        "planning.story.created".into(),
        format!(r#"{{"story_id":"{id}","title":"story {id}","timestamp":"2026-02-01T10:00:00Z"}}"#),
    )
}

fn moved(id: &str, from: &str, to: &str) -> (String, String) {
    (
        "planning.story.transitioned".into(),
        format!(
            r#"{{"story_id":"{id}","from_phase":"{from}","to_phase":"{to}","transitioned_by":"po","timestamp":"2026-02-01T10:01:00Z"}}"#
        ),
    )
}

fn decided(id: &str, d: &str) -> (String, String) {
    (
        "orchestration.deliberation.completed".into(),
        format!(
            r#"{{"story_id":"{id}","task_id":"T-{id}","decisions":[{{"id":"{d}","title":"Use Rust","rationale":"speed","decided_by":"architect"}}],"timestamp":"2026-02-01T10:05:00Z"}}"#
        ),
    )
}

async fn publish(t: &TestConfig, js: &jetstream::Context, events: &[(String, String)]) {
    let refs: Vec<(&str, &str)> = events
        .iter()
        .map(|(s, p)| (s.as_str(), p.as_str()))
        .collect();
    t.publish(js, &refs).await;
}

fn changes(evs: &[Ev]) -> Vec<&Ev> {
    evs.iter().filter(|e| e.event == "story.changed").collect()
}

fn is_story(e: &Ev, id: &str) -> bool {
    e.event == "story.changed" && e.data["story_id"] == id
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_arrive_in_order_after_commit_and_filtered() {
    let t = config(100_000);
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let run = t.spawn_run_follow_live(&[]);
    let port = run.metrics_port;
    let (a, b) = (format!("{}-A", t.upper), format!("{}-B", t.upper));
    let mut all = sse::connect(port, "/v1/changes", None).await;
    let mut only_a = sse::open(port, &format!("/v1/changes?story={a}"), None)
        .await
        .unwrap();
    let mut decisions = sse::open(port, "/v1/changes?what=decisions", None)
        .await
        .unwrap();
    for f in [&mut all, &mut only_a, &mut decisions] {
        f.until(15, |e| e.event == "watermark").await;
    }
    assert_eq!(run.metric("projector_feed_clients", &[]), 3.0);

    // One event at a time, each waited for: every commit is its own change.
    let steps = [
        created(&a),
        created(&b),
        moved(&a, "DRAFT", "BUILD"),
        decided(&a, "D-1"),
        moved(&b, "DRAFT", "REVIEW"),
        moved(&a, "BUILD", "DONE"),
    ];
    let mut got = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        publish(&t, &js, std::slice::from_ref(step)).await;
        let story = if step.1.contains(&format!("\"{a}\"")) {
            &a
        } else {
            &b
        };
        let evs = all.until(30, |e| is_story(e, story)).await;
        let e = changes(&evs).last().copied().unwrap().clone();
        // After commit: the read that follows serves at least the event's revision.
        let (code, v) = story_json(port, story);
        assert_eq!(code, 200, "step {i}: {v}");
        assert!(
            v["revision"].as_i64().unwrap() >= e.data["revision"].as_i64().unwrap(),
            "step {i}: read {v} after {e:?}"
        );
        got.push(e);
    }
    // In order: positions grow; each story's revisions grow by one commit each.
    for w in got.windows(2) {
        assert!(pos(&w[0].id) < pos(&w[1].id), "{:?} then {:?}", w[0], w[1]);
    }
    let revs = |id: &str| -> Vec<i64> {
        got.iter()
            .filter(|e| e.data["story_id"] == id)
            .map(|e| e.data["revision"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(revs(&a), vec![1, 2, 3, 4]);
    assert_eq!(revs(&b), vec![1, 2]);
    let what = |i: usize| -> Vec<String> {
        got[i].data["what"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .collect()
    };
    assert!(what(0).contains(&"story".to_string()), "{:?}", got[0]);
    assert_eq!(what(2), vec!["phase"], "{:?}", got[2]);
    assert!(what(3).contains(&"decisions".to_string()), "{:?}", got[3]);
    assert!(!what(3).contains(&"phase".to_string()), "{:?}", got[3]);
    assert_eq!(got[3].data["generation"], t.main_gen());
    assert!(got[3].data["event_time_ms"].as_i64().unwrap() > 0);

    // ?story=A: exactly A's four changes, in the same order and with the same ids.
    let mine = only_a.until(15, |e| e.id == got[5].id).await;
    let ids: Vec<&str> = changes(&mine).iter().map(|e| e.id.as_str()).collect();
    let want: Vec<&str> = got
        .iter()
        .filter(|e| e.data["story_id"] == a.as_str())
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(ids, want);
    // ?what=decisions: only the decision.
    let dec = decisions
        .until(15, |e| {
            e.event == "watermark" && !e.id.is_empty() && pos(&e.id) >= pos(&got[5].id)
        })
        .await;
    let ids: Vec<&str> = changes(&dec).iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![got[3].id.as_str()]);
    // Watermarks name every stream's checkpoint and the position they cover.
    let wm = dec.last().unwrap();
    assert!(
        wm.data["checkpoints"].as_object().unwrap().len() >= 2,
        "{wm:?}"
    );
    assert_eq!(wm.data["generation"], t.main_gen());

    // Bad filters are refused with the API's JSON error.
    let (code, body) = sse::open(port, "/v1/changes?what=colour", None)
        .await
        .err()
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("colour"), "{body}");
    let (code, _) = sse::open(port, "/v1/changes?after=yesterday", None)
        .await
        .err()
        .unwrap();
    assert_eq!(code, 400);
    drop((all, only_a, decisions));
    eventually(10, || async {
        match run.metric("projector_feed_clients", &[]) {
            0.0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    assert_eq!(run.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_with_last_event_id_delivers_exactly_the_missed_changes_across_a_restart() {
    let t = config(100_000);
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let run = t.spawn_run_follow_live(&[]);
    let mut feed = sse::connect(run.metrics_port, "/v1/changes", None).await;
    feed.until(15, |e| e.event == "watermark").await;
    let seen: Vec<String> = (0..3).map(|i| format!("{}-SEEN{i}", t.upper)).collect();
    publish(
        &t,
        &js,
        &seen.iter().map(|s| created(s)).collect::<Vec<_>>(),
    )
    .await;
    let mut got = BTreeSet::new();
    let evs = feed
        .until(30, |e| {
            if e.event == "story.changed" {
                got.insert(e.data["story_id"].as_str().unwrap().to_string());
            }
            got.len() == seen.len()
        })
        .await;
    let last = evs.last().unwrap().id.clone();
    drop(feed);
    // Missed while the client is away: some before the restart, some after it.
    let before: Vec<String> = (0..4).map(|i| format!("{}-BEFORE{i}", t.upper)).collect();
    publish(
        &t,
        &js,
        &before.iter().map(|s| created(s)).collect::<Vec<_>>(),
    )
    .await;
    wait_all_acked(&js, &t, "projector-graph-p0").await;
    assert_eq!(run.terminate(), Some(0));
    let after: Vec<String> = (0..4).map(|i| format!("{}-AFTER{i}", t.upper)).collect();
    publish(
        &t,
        &js,
        &after.iter().map(|s| created(s)).collect::<Vec<_>>(),
    )
    .await;
    publish(&t, &js, &[moved(&before[0], "DRAFT", "BUILD")]).await;
    let run = t.spawn_run_follow_live(&[]);
    wait_all_acked(&js, &t, "projector-graph-p0").await;
    let mut feed = sse::connect(run.metrics_port, "/v1/changes", Some(&last)).await;
    // Everything up to the first watermark is the catch-up.
    let evs = feed.until(30, |e| e.event == "watermark").await;
    let missed: Vec<(String, i64)> = changes(&evs)
        .iter()
        .map(|e| {
            (
                e.data["story_id"].as_str().unwrap().to_string(),
                e.data["revision"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut want: Vec<(String, i64)> = before
        .iter()
        .chain(&after)
        .map(|s| (s.clone(), 1))
        .collect();
    want.push((before[0].clone(), 2));
    let mut sorted = missed.clone();
    sorted.sort();
    want.sort();
    assert_eq!(
        sorted, want,
        "none missing, none twice, none seen before: {missed:?}"
    );
    for w in changes(&evs).windows(2) {
        assert!(pos(&w[0].id) < pos(&w[1].id));
    }
    assert!(pos(&changes(&evs)[0].id) > pos(&last));
    // ?after= resumes the same way for clients without the header.
    let mut again =
        sse::connect(run.metrics_port, &format!("/v1/changes?after={last}"), None).await;
    let evs2 = again.until(30, |e| e.event == "watermark").await;
    let ids = |v: &[Ev]| -> Vec<String> { changes(v).iter().map(|e| e.id.clone()).collect() };
    assert_eq!(ids(&evs2), ids(&evs));
    assert_eq!(run.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_position_older_than_the_changelog_gets_reset_then_the_feed_follows() {
    let t = config(3);
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let run = t.spawn_run_follow_live(&[]);
    let port = run.metrics_port;
    let mut feed = sse::connect(port, "/v1/changes", None).await;
    feed.until(15, |e| e.event == "watermark").await;
    let first = format!("{}-FIRST", t.upper);
    publish(&t, &js, &[created(&first)]).await;
    let old = feed
        .until(30, |e| is_story(e, &first))
        .await
        .pop()
        .unwrap()
        .id;
    // Five more changes: the changelog keeps three, so `old` is gone.
    for i in 0..5 {
        let s = format!("{}-N{i}", t.upper);
        publish(&t, &js, &[created(&s)]).await;
        feed.until(30, |e| is_story(e, &s)).await;
    }
    let mut late = sse::connect(port, "/v1/changes", Some(&old)).await;
    let reset = late.next(15).await.expect("an event");
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(pos(&reset.id) > pos(&old), "{reset:?}");
    assert!(reset.data["reason"].as_str().unwrap().contains(&old));
    // Then it follows from now on: the next change arrives, nothing older is replayed.
    let next = format!("{}-NEXT", t.upper);
    publish(&t, &js, &[created(&next)]).await;
    let evs = late.until(30, |e| is_story(e, &next)).await;
    assert_eq!(changes(&evs).len(), 1, "{evs:?}");
    // A position no deployment handed out is a reset too, not a silent start from zero.
    let mut stranger = sse::connect(port, "/v1/changes?after=1-0", None).await;
    assert_eq!(stranger.next(15).await.unwrap().event, "reset");
    assert_eq!(run.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_switch_sends_generation_then_changes_of_the_new_one() {
    let t = config(100_000);
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let run = t.spawn_run_follow_live(&[]);
    let mut feed = sse::connect(run.metrics_port, "/v1/changes", None).await;
    feed.until(15, |e| e.event == "watermark").await;
    let s = format!("{}-R", t.upper);
    publish(&t, &js, &[created(&s), moved(&s, "DRAFT", "BUILD")]).await;
    wait_all_acked(&js, &t, "projector-graph-p0").await;
    feed.until(30, |e| {
        is_story(e, &s) && e.data["revision"].as_i64() >= Some(1)
    })
    .await;
    let gen = format!("{}-r2", t.tag);
    let o = t.projector(&["rebuild", "--name", &gen]);
    assert!(o.status.success(), "{}", stderr(&o));
    let evs = feed.until(60, |e| e.event == "generation").await;
    let g = evs.last().unwrap();
    assert_eq!(g.data["generation"], gen.as_str());
    assert!(!g.id.is_empty());
    // The live workers move to the new generation; its changes follow the switch.
    publish(&t, &js, &[decided(&s, "D-R")]).await;
    let evs = feed.until(60, |e| is_story(e, &s)).await;
    let e = evs.last().unwrap();
    assert_eq!(e.data["generation"], gen.as_str(), "{e:?}");
    assert!(pos(&e.id) > pos(&g.id));
    let (code, v) = story_json(run.metrics_port, &s);
    assert_eq!(code, 200);
    assert!(v["revision"].as_i64() >= e.data["revision"].as_i64(), "{v}");
    assert_eq!(run.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_the_feed_of_one_story() {
    let t = config(100_000);
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let run = t.spawn_run_follow_live(&[]);
    let port = run.metrics_port;
    // Ready to serve first, so watch's first connection succeeds.
    sse::connect(port, "/v1/changes", None)
        .await
        .until(15, |e| e.event == "watermark")
        .await;
    let (x, y) = (format!("{}-X", t.upper), format!("{}-Y", t.upper));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args([
            "watch",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--story",
            &x,
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // Its first line is the watermark of the caught-up feed.
    let first: Value =
        serde_json::from_str(&rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap())
            .unwrap();
    assert_eq!(first["event"], "watermark", "{first}");
    publish(&t, &js, &[created(&y), created(&x)]).await;
    let mut lines = BTreeMap::new();
    loop {
        let l = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a line");
        let v: Value = serde_json::from_str(&l).unwrap();
        if v["event"] == "story.changed" {
            assert_eq!(v["data"]["story_id"], x.as_str(), "{v}");
            lines.insert(v["id"].as_str().unwrap().to_string(), v);
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(run.terminate(), Some(0));
}
