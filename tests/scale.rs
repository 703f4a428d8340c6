//! Horizontal scale (issue #9): several `projector run` instances share the streams through
//! partition leases, one is killed, the others take its partitions over, and the graph ends
//! equal to a single-instance rebuild.

mod common;

use async_nats::jetstream;
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 8;
const TTL_SECS: u64 = 3;
const PROJECTED: [&str; 4] = [
    "PLANNING_EVENTS",
    "CONTEXT_EVENTS",
    "ORCHESTRATOR_EVENTS",
    "AGENT_RESPONSES",
];

fn partitioned_config() -> TestConfig {
    TestConfig::with(|text| {
        text.replace("count = 1", &format!("count = {PARTITIONS}"))
            .replace(
                "lease_ttl = \"10s\"",
                &format!("lease_ttl = \"{TTL_SECS}s\""),
            )
    })
}

/// Partition -> holding instance, from the lease bucket.
async fn holders(t: &TestConfig, js: &jetstream::Context) -> BTreeMap<u32, String> {
    let Ok(kv) = js.get_key_value(&t.cfg.partitions.lease_bucket).await else {
        return BTreeMap::new(); // no instance has created the bucket yet
    };
    engine::leases::holders(&kv, "graph")
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// (stream, partition) -> stored checkpoint of the live generation.
async fn checkpoints(t: &TestConfig) -> BTreeMap<(String, i64), i64> {
    let g = neo4j(&t.cfg);
    let mut rows = g
        .execute(
            neo4rs::query(
                "MATCH (c:Checkpoint {gen: $gen}) RETURN c.stream AS s, c.partition AS p, c.seq AS q",
            )
            .param("gen", t.main_gen()),
        )
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    while let Some(r) = rows.next().await.unwrap() {
        out.insert(
            (r.get::<String>("s").unwrap(), r.get::<i64>("p").unwrap()),
            r.get::<i64>("q").unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_share_partitions_survive_a_kill_and_equal_a_rebuild() {
    let t = partitioned_config();
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stories = std::env::var("SCALE_STORIES").unwrap_or_else(|_| "740".into());
    let out = t.projector(&[
        "bench",
        "gen",
        "--stories",
        &stories,
        "--seed",
        "9",
        "--publish",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);

    let a = t.spawn_run_follow_live(&["--instance", "a"]);
    let b = t.spawn_run_follow_live(&["--instance", "b"]);
    let mut c = t.spawn_run_follow_live(&["--instance", "c"]);
    // The three share the partitions: each ends up with its fair share (3, 3, 2).
    let shared = eventually(60, || async {
        let h = holders(&t, &js).await;
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for who in h.values() {
            *per.entry(who.as_str()).or_default() += 1;
        }
        if h.len() == PARTITIONS as usize && per.len() == 3 && per.values().all(|&n| n <= 3) {
            Ok(h)
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await;
    let of_b: Vec<u32> = shared
        .iter()
        .filter(|(_, w)| *w == "b")
        .map(|(p, _)| *p)
        .collect();
    assert!(!of_b.is_empty());

    // Kill b mid-run; a and c take its partitions once its leases expire.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        caught_up(&t, &js, PARTITIONS).await.is_err(),
        "already caught up: the kill would not be mid-run"
    );
    let killed = Instant::now();
    b.kill9();
    let after = eventually(60, || async {
        let h = holders(&t, &js).await;
        if h.len() == PARTITIONS as usize && h.values().all(|w| w != "b") {
            Ok(h)
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!(
        "takeover of partitions {of_b:?} after kill -9: {:.1} s (lease TTL {TTL_SECS} s); now {after:?}",
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(TTL_SECS * 4),
        "takeover took {takeover:?}"
    );
    // `streams status` shows who holds which partition.
    let out = t.projector(&["streams", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&out);
    let planning = t.stream("PLANNING_EVENTS");
    for (p, who) in &after {
        let line = format!("{planning:<22} p{p:<3}");
        assert!(
            status
                .lines()
                .any(|l| l.contains(&line) && l.ends_with(&format!("held by {who}"))),
            "{line} held by {who}:\n{status}"
        );
    }

    eventually(600, || caught_up(&t, &js, PARTITIONS)).await;
    assert!(c.alive(), "{}", c.log());
    // Each instance handled only its partitions' events: together a and c handled every
    // event at most once more than the ones b committed before it died, and neither alone
    // handled them all (a worker that ignored the partition filter would, once per partition).
    let total: u64 = {
        let mut n = 0;
        for base in PROJECTED {
            n += js
                .get_stream(t.stream(base))
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages;
        }
        n
    };
    let (by_a, by_c) = (
        a.metric("projector_events_total", &[]) as u64,
        c.metric("projector_events_total", &[]) as u64,
    );
    eprintln!("events handled: a {by_a}, c {by_c}, of {total}");
    assert!(by_a > 0 && by_c > 0);
    assert!(
        by_a < total && by_c < total,
        "an instance handled more than its partitions"
    );
    assert!(by_a + by_c <= total, "events handled twice");
    // The takeovers are metrics too: b's partitions came back through expired leases (not
    // handed over: b was killed), with the gap between b's last refresh and the new start.
    let sum = |name: &str, labels: &[&str]| a.metric(name, labels) + c.metric(name, labels);
    let expired = sum("projector_partition_takeovers_total", &["how=\"expired\""]);
    let gaps = sum("projector_partition_takeover_gap_seconds_count", &[]);
    eprintln!("takeovers after expiry: {expired}, gaps observed: {gaps}");
    assert!(expired >= of_b.len() as f64, "{expired} < {of_b:?}");
    assert_eq!(gaps, expired);
    assert_eq!(
        sum("projector_partitions_held", &[]),
        PARTITIONS as f64,
        "a and c hold every partition"
    );
    let logs = a.log() + &c.log();
    assert_eq!(a.terminate(), Some(0));
    assert_eq!(c.terminate(), Some(0));
    // The survivors logged the takeover of each of b's partitions, with how long it went
    // without a writer.
    // Terminal colours out: `partition=6` is written with escape codes around the `=`.
    let logs = strip_ansi(&logs);
    for p in &of_b {
        let line = logs
            .lines()
            .filter(|l| l.contains("took over a partition") && l.contains("its lease expired"))
            .find(|l| l.contains(&format!("partition={p} from=b")))
            .unwrap_or_else(|| panic!("no takeover of partition {p} logged:\n{logs}"));
        eprintln!("{line}");
    }
    assert!(
        holders(&t, &js).await.is_empty(),
        "leases released on shutdown"
    );

    // Nothing parked, and the graph equals a single-instance rebuild of the same events.
    let out = t.projector(&["dlq", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let parked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parked.as_array().unwrap().len(), 0, "{parked}");
    let out = t.projector(&["verify", "--against-rebuild"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
}

/// The same test names (streams, keys, generation) with `[partitions] count = n`.
fn with_count(t: &TestConfig, n: u32) -> TestConfig {
    let text = std::fs::read_to_string(&t.path)
        .unwrap()
        .replace("count = 1", &format!("count = {n}"))
        .replace(
            "lease_ttl = \"10s\"",
            &format!("lease_ttl = \"{TTL_SECS}s\""),
        );
    let path = t.path.with_extension(format!("p{n}.toml"));
    std::fs::write(&path, &text).unwrap();
    let mut cfg = engine::config::Config::from_toml(&text, "test").unwrap();
    cfg.apply_env(&std::env::vars().collect());
    TestConfig {
        tag: t.tag.clone(),
        upper: t.upper.clone(),
        cfg,
        path,
    }
}

async fn total_messages(t: &TestConfig, js: &jetstream::Context) -> u64 {
    let mut n = 0;
    for base in PROJECTED {
        n += stream_state(js, &t.stream(base)).await.messages;
    }
    n
}

/// Every partition of every projected stream has stored the stream's last sequence, and
/// still has 1.5 s later with the streams unchanged: a batch's outbound `context.updated`
/// events are published just after its commit, so one look can fall between the two.
async fn caught_up(t: &TestConfig, js: &jetstream::Context, partitions: u32) -> Result<(), String> {
    let first = caught_up_once(t, js, partitions).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = caught_up_once(t, js, partitions).await?;
    if first == second {
        Ok(())
    } else {
        Err(format!("streams grew from {first:?} to {second:?}"))
    }
}

/// One look: the last sequence of every projected stream, if every partition stored it.
async fn caught_up_once(
    t: &TestConfig,
    js: &jetstream::Context,
    partitions: u32,
) -> Result<Vec<i64>, String> {
    let mut lasts = Vec::new();
    let ckpts = checkpoints(t).await;
    for base in PROJECTED {
        let name = t.stream(base);
        let last = stream_state(js, &name).await.last_sequence as i64;
        for p in 0..partitions as i64 {
            match ckpts.get(&(name.clone(), p)) {
                Some(&c) if c == last => {}
                other => return Err(format!("{name} p{p} at {other:?} of {last}")),
            }
        }
        lasts.push(last);
    }
    Ok(lasts)
}

/// One instance drained, then four partitions: the new partitions start where the single
/// instance stopped (no event handled again); a rebuild keeps the layout; a layout that was
/// not drained is refused with what to do.
#[tokio::test(flavor = "multi_thread")]
async fn one_to_four_partitions_after_draining_then_rebuild_handles_nothing_twice() {
    let one = TestConfig::new();
    let out = one.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = one.projector(&[
        "bench",
        "gen",
        "--stories",
        "40",
        "--seed",
        "3",
        "--publish",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&one.cfg).await);
    // Drain: a single instance catches up and stops.
    let out = one.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = total_messages(&one, &js).await;

    // Switch to four partitions; new events arrive.
    let four = with_count(&one, 4);
    let load = |first: &str| {
        four.projector(&[
            "bench",
            "load",
            "--rate",
            "1000",
            "--duration",
            "1s",
            "--first-story",
            first,
            "--seed",
            "3",
        ])
    };
    assert!(load("700001").status.success());
    let a = four.spawn_run_follow_live(&["--instance", "a"]);
    let b = four.spawn_run_follow_live(&["--instance", "b"]);
    eventually(300, || caught_up(&four, &js, 4)).await;
    let after = total_messages(&four, &js).await;
    let handled = a.metric("projector_events_total", &[]) as u64
        + b.metric("projector_events_total", &[]) as u64;
    assert_eq!(
        handled,
        after - before,
        "exactly the events published after the switch were handled"
    );
    let log_a = a.log() + &b.log();
    assert!(
        log_a.contains("checkpoint layout set for 4 partition(s)"),
        "{log_a}"
    );
    assert_eq!(a.terminate(), Some(0));
    assert_eq!(b.terminate(), Some(0));

    // A rebuild with four partitions: the new live generation has all four checkpoints,
    // where the rebuild ended, so an instance goes on from there.
    let out = four.projector(&["rebuild", "--name", &format!("{}-r", four.tag)]);
    assert!(out.status.success(), "{}", stderr(&out));

    let g = neo4j(&four.cfg);
    let mut rows = g
        .execute(
            neo4rs::query(
                "MATCH (c:Checkpoint {gen: $gen}) RETURN count(c) AS n, min(c.seq) AS lo, max(c.seq) AS hi, \
                 count(DISTINCT c.partition) AS parts",
            )
            .param("gen", format!("{}-r", four.tag)),
        )
        .await
        .unwrap();
    let r = rows.next().await.unwrap().unwrap();
    assert_eq!(r.get::<i64>("parts").unwrap(), 4);
    assert_eq!(r.get::<i64>("n").unwrap(), 16, "4 partitions x 4 streams");
    let before = total_messages(&four, &js).await;
    assert!(load("710001").status.success());
    let c = four.spawn_run_follow_live(&["--instance", "c"]);
    let live = format!("{}-r", four.tag);
    eventually(300, || async {
        let ckpts = {
            let mut rows = g
                .execute(
                    neo4rs::query(
                        "MATCH (c:Checkpoint {gen: $gen}) RETURN c.stream AS s, c.seq AS q",
                    )
                    .param("gen", live.as_str()),
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut v = Vec::new();
            while let Some(r) = rows.next().await.map_err(|e| e.to_string())? {
                v.push((r.get::<String>("s").unwrap(), r.get::<i64>("q").unwrap()));
            }
            v
        };
        for (s, q) in ckpts {
            let last = js
                .get_stream(&s)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .last_sequence;
            if q as u64 != last {
                return Err(format!("{s} at {q} of {last}"));
            }
        }
        Ok(())
    })
    .await;
    let after = total_messages(&four, &js).await;
    assert_eq!(
        c.metric("projector_events_total", &[]) as u64,
        after - before,
        "after the rebuild, only new events were handled"
    );
    assert_eq!(c.terminate(), Some(0));

    // Not drained: partition 2 behind the others. Going back to one partition is refused.
    g.run(
        neo4rs::query("MATCH (c:Checkpoint {gen: $gen, partition: 2}) SET c.seq = c.seq - 1")
            .param("gen", live.as_str()),
    )
    .await
    .unwrap();
    let out = one.projector(&["run", "--until-caught-up", "--metrics-addr", "off"]);
    // A refusal that needs an operator: exit 2, as for bad input.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("was not drained"), "{}", stderr(&out));
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
