//! The deployment (issue #20) against the real stack: the metric names that the alert rules
//! and the Grafana dashboard query exist on a running projector's `/metrics`, and a rolling
//! upgrade of three partitioned instances (as the Helm chart's Deployment does it) hands every
//! partition over well within the lease TTL with nothing lost and nothing committed twice.

mod common;

use async_nats::jetstream;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const PROJECTED: [&str; 4] = [
    "PLANNING_EVENTS",
    "CONTEXT_EVENTS",
    "ORCHESTRATOR_EVENTS",
    "AGENT_RESPONSES",
];

/// prometheus-nats-exporter's names (with `-prefix nats`) that the seeds' alerts use: they
/// come from the exporter, not from projector, so they are checked against this list.
const EXPORTER_METRICS: [&str; 2] = ["nats_consumer_num_pending", "nats_consumer_num_redelivered"];

fn partitioned(count: u32) -> TestConfig {
    TestConfig::with(|text| text.replace("count = 1", &format!("count = {count}")))
}

/// Metric names in PromQL text: identifiers with one of the prefixes projector or the
/// exporter use. Label names (`projector`, `stream`) and functions have none of them.
fn metric_names(promql: &str, into: &mut BTreeSet<String>) {
    for token in promql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if ["projector_", "process_", "nats_"]
            .iter()
            .any(|p| token.starts_with(p))
        {
            into.insert(token.to_string());
        }
    }
}

/// The `expr:` blocks of a Prometheus rules file (block scalars included).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut expr = rest.trim().trim_start_matches('|').to_string();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent;
            if !(next.trim().is_empty() || deeper) {
                break;
            }
            expr.push('\n');
            expr.push_str(next.trim());
            lines.next();
        }
        out.push(expr);
    }
    out
}

/// Every metric name the alert rules and the dashboard query.
fn queried_names() -> BTreeSet<String> {
    let root = repo_root();
    let rules =
        std::fs::read_to_string(root.join("deploy/prometheus/projector.rules.yml")).unwrap();
    let mut names = BTreeSet::new();
    let exprs = rule_exprs(&rules);
    assert!(
        exprs.len() >= 8,
        "found only {} rule expressions",
        exprs.len()
    );
    for e in &exprs {
        metric_names(e, &mut names);
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/projector.json")).unwrap(),
    )
    .unwrap();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            metric_names(t["expr"].as_str().unwrap(), &mut names);
        }
    }
    names
}

/// Names of the samples on a `/metrics` page.
fn exposed_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty() && !n.contains(':'))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_of_the_alerts_and_the_dashboard_is_exposed_by_a_running_projector() {
    let queried = queried_names();
    let t = partitioned(2);
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t.projector(&["bench", "gen", "--stories", "3", "--publish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    // One poison message, so the parked counter exists as it does after a first park.
    t.publish(&js, &[("planning.story.created", "{not json")])
        .await;
    let run = t.spawn_run_follow_live(&["--instance", "scraped"]);

    let ours: BTreeSet<&String> = queried
        .iter()
        .filter(|n| !EXPORTER_METRICS.contains(&n.as_str()))
        .collect();
    for n in &queried {
        assert!(
            !n.starts_with("nats_") || EXPORTER_METRICS.contains(&n.as_str()),
            "{n}: not a prometheus-nats-exporter metric this test knows"
        );
    }
    // Gives up (and fails, naming them) when a queried name is still not exposed after 180 s
    // (a loaded machine has taken 40 s to start the workers).
    let port = run.metrics_port;
    eventually(180, || {
        let page = http_get(port, "/metrics");
        let missing: Result<Vec<String>, String> = page.map(|p| {
            let exposed = exposed_names(&p);
            ours.iter()
                .filter(|n| !exposed.contains(**n))
                .map(|n| n.to_string())
                .collect()
        });
        async move {
            match missing {
                Ok(m) if m.is_empty() => Ok(()),
                Ok(m) => Err(format!("queried but not exposed: {m:?}")),
                Err(e) => Err(e),
            }
        }
    })
    .await;
    eprintln!("{} queried metric names, all exposed: {ours:?}", ours.len());
    assert_eq!(run.terminate(), Some(0));
}

/// GET `path` on a loopback port: the whole HTTP response, or why not (not listening yet).
fn http_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Ok once `/readyz` on `port` answers 200 (a standby holding no partition is ready).
fn ready(port: u16) -> Result<(), String> {
    let out = http_get(port, "/readyz")?;
    match out.lines().next() {
        Some(status) if status.contains(" 200 ") => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// Partition -> holder, from the lease bucket.
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

/// Waits until `who` holds none of the partitions and every partition has a holder; returns
/// how long that took from `since`.
async fn handed_over(
    t: &TestConfig,
    js: &jetstream::Context,
    who: &str,
    n: u32,
    since: Instant,
) -> Duration {
    loop {
        let h = holders(t, js).await;
        if h.len() == n as usize && h.values().all(|w| w != who) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "{who}'s partitions not taken: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every partition is held and three instances hold them.
async fn spread_over_three(t: &TestConfig, js: &jetstream::Context, n: u32) {
    eventually(60, || async {
        let h = holders(t, js).await;
        let who: BTreeSet<&String> = h.values().collect();
        if h.len() == n as usize && who.len() == 3 {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await;
}

/// (stream, partition) -> committed ranges, from the workers' `batch committed` log lines.
fn committed_ranges(logs: &[String]) -> BTreeMap<(String, u32), Vec<(u64, u64)>> {
    let mut out: BTreeMap<(String, u32), Vec<(u64, u64)>> = BTreeMap::new();
    for line in logs.iter().flat_map(|l| l.lines()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["message"] != "batch committed" {
            continue;
        }
        let worker = v["worker"].as_str().unwrap();
        let mut parts = worker.rsplitn(3, '/');
        let partition: u32 = parts.next().unwrap().parse().unwrap();
        let stream = parts.next().unwrap().to_string();
        let (first, last) = (v["first"].as_u64().unwrap(), v["last"].as_u64().unwrap());
        out.entry((stream, partition))
            .or_default()
            .push((first, last));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_upgrade_of_three_instances_hands_partitions_over_and_loses_nothing() {
    const PARTITIONS: u32 = 6;
    let t = partitioned(PARTITIONS);
    let ttl = t.cfg.partitions.lease_ttl;
    let out = t.projector(&["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t.projector(&[
        "bench",
        "gen",
        "--stories",
        "150",
        "--seed",
        "20",
        "--publish",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(nats(&t.cfg).await);
    // JSON logs with each committed batch's range: the proof that no range is committed twice.
    // `--log-level` takes a level only; a full filter goes through PROJECTOR_LOG, which the
    // instances inherit (edition 2021: set_var is safe; the other tests here only log more).
    std::env::set_var("PROJECTOR_LOG", "info,engine::worker=debug");
    let log_args = ["--log-format", "json"];
    let spawn = |name: &str| {
        let mut args = vec!["--instance", name];
        args.extend(log_args);
        t.spawn_run_follow_live(&args)
    };
    let mut running: Vec<(String, Running)> = ["a1", "b1", "c1"]
        .iter()
        .map(|n| (n.to_string(), spawn(n)))
        .collect();
    spread_over_three(&t, &js, PARTITIONS).await;

    // Events keep flowing through the whole upgrade (stories of their own, from 900001).
    let load = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .arg("--config")
        .arg(&t.path)
        .args([
            "bench",
            "load",
            "--rate",
            "60",
            "--duration",
            "60s",
            "--first-story",
            "900001",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Both orders a cluster produces. The (and a node drain's or a scale-in's):
    // SIGTERM an old pod first, its partitions go to the survivors, then its replacement
    // starts and takes its fair share back from them. The chart's RollingUpdate (maxSurge 1,
    // maxUnavailable 0): the new pod is ready first (a standby is), then the old one gets
    // SIGTERM.
    let mut logs = Vec::new();
    let mut times = Vec::new();
    for (old, new, surge_first) in [("a1", "a2", false), ("b1", "b2", false), ("c1", "c2", true)] {
        let fresh = if surge_first {
            let fresh = spawn(new);
            let port = fresh.metrics_port;
            eventually(60, || async move { ready(port) }).await;
            Some(fresh)
        } else {
            None
        };
        let i = running.iter().position(|(n, _)| n == old).unwrap();
        let (_, proc) = running.remove(i);
        let held: Vec<u32> = holders(&t, &js)
            .await
            .into_iter()
            .filter(|(_, w)| w == old)
            .map(|(p, _)| p)
            .collect();
        let log_path = proc.log.clone();
        let sigterm = Instant::now();
        let exit = tokio::task::spawn_blocking(move || proc.terminate());
        let took = handed_over(&t, &js, old, PARTITIONS, sigterm).await;
        assert_eq!(exit.await.unwrap(), Some(0), "{old} did not exit 0");
        logs.push(std::fs::read_to_string(&log_path).unwrap());
        let order = if surge_first {
            "replacement ready first"
        } else {
            "SIGTERM first"
        };
        eprintln!("{old} -> {new} ({order}): partitions {held:?} handed over {:.2} s after SIGTERM (lease TTL {} s)", took.as_secs_f64(), ttl.as_secs());
        times.push((old, held, took));
        let fresh = match fresh {
            Some(f) => f,
            None => {
                let f = spawn(new);
                let port = f.metrics_port;
                eventually(60, || async move { ready(port) }).await;
                f
            }
        };
        running.push((new.to_string(), fresh));
        // Every instance holds a partition again before the next one goes.
        spread_over_three(&t, &js, PARTITIONS).await;
    }
    let load = load.wait_with_output().unwrap();
    assert!(
        load.status.success(),
        "bench load: {}",
        String::from_utf8_lossy(&load.stderr)
    );

    // Caught up: every partition stored every stream's last sequence, twice, 1.5 s apart.
    eventually(300, || async {
        let a = last_seqs_if_caught_up(&t, &js, PARTITIONS).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let b = last_seqs_if_caught_up(&t, &js, PARTITIONS).await?;
        if a == b {
            Ok(a)
        } else {
            Err(format!("still growing: {a:?} -> {b:?}"))
        }
    })
    .await;
    for (_, r) in running {
        let path = r.log.clone();
        assert_eq!(r.terminate(), Some(0));
        logs.push(std::fs::read_to_string(&path).unwrap());
    }

    // Every hand-over was a hand-over (none waited for a lease to expire: that takes at least
    // the TTL plus a lease round), so each is within the TTL.
    for (old, held, took) in &times {
        assert!(
            *took < ttl,
            "{old}'s partitions {held:?} took {took:?} (TTL {ttl:?})"
        );
    }
    let expired: Vec<&str> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("its lease expired"))
        .collect();
    assert!(
        expired.is_empty(),
        "a takeover waited for an expired lease:\n{}",
        expired.join("\n")
    );

    // Nothing lost, nothing committed twice: per stream and partition, the committed ranges
    // of all six instances never overlap, and together with the messages of other partitions
    // (a batch of only those moves the checkpoint without a commit) they cover 1..=last.
    let ranges = committed_ranges(&logs);
    let mut skipped = 0;
    for base in PROJECTED {
        let name = t.stream(base);
        let stream = js.get_stream(&name).await.unwrap();
        let last = stream.cached_info().state.last_sequence;
        for p in 0..PARTITIONS {
            let mut rs = ranges.get(&(name.clone(), p)).cloned().unwrap_or_default();
            rs.sort();
            let mut next = 1;
            for (first, end) in rs.iter().copied().chain([(last + 1, last)]) {
                assert!(
                    first >= next,
                    "{name} p{p}: {first}..={end} committed twice: {rs:?}"
                );
                for seq in next..first {
                    let m = stream.get_raw_message(seq).await.unwrap();
                    let owner = partition_of_message(&t, &m, PARTITIONS);
                    assert_ne!(
                        owner, p,
                        "{name} p{p}: its message {seq} ({}) was never committed: {rs:?}",
                        m.subject
                    );
                    skipped += 1;
                }
                next = end + 1;
            }
        }
    }
    eprintln!("committed ranges tile every partition; {skipped} sequences skipped as other partitions' (checkpoint moved without a commit)");
    let out = t.projector(&["dlq", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let parked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parked.as_array().unwrap().len(), 0, "{parked}");
    let out = t.projector(&["verify", "--against-rebuild"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
}

/// The partition a stored message belongs to, decided as the worker decides it.
fn partition_of_message(t: &TestConfig, m: &jetstream::message::StreamMessage, n: u32) -> u32 {
    let ct = m
        .headers
        .get("Content-Type")
        .map(|v| v.as_str().to_string());
    let subject = m
        .subject
        .as_str()
        .strip_prefix(&format!("{}.", t.tag))
        .unwrap();
    let story = match projections::decode(subject, ct.as_deref(), &m.payload) {
        Ok(event) => event.story_id().map(str::to_string),
        Err(_) => projections::sniff_story_id(ct.as_deref(), &m.payload),
    };
    projections::partition_of(story.as_deref(), n)
}

/// The last sequence of each projected stream, if every partition's checkpoint is at it.
async fn last_seqs_if_caught_up(
    t: &TestConfig,
    js: &jetstream::Context,
    partitions: u32,
) -> Result<Vec<u64>, String> {
    let g = neo4j(&t.cfg);
    let mut rows = g
        .execute(
            neo4rs::query("MATCH (c:Checkpoint {gen: $gen}) RETURN c.stream AS s, c.partition AS p, c.seq AS q")
                .param("gen", t.main_gen()),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut at = BTreeMap::new();
    while let Some(r) = rows.next().await.map_err(|e| e.to_string())? {
        at.insert(
            (r.get::<String>("s").unwrap(), r.get::<i64>("p").unwrap()),
            r.get::<i64>("q").unwrap(),
        );
    }
    let mut lasts = Vec::new();
    for base in PROJECTED {
        let name = t.stream(base);
        let last = stream_state(js, &name).await.last_sequence;
        for p in 0..partitions as i64 {
            if at.get(&(name.clone(), p)) != Some(&(last as i64)) {
                return Err(format!(
                    "{name} p{p} at {:?} of {last}",
                    at.get(&(name.clone(), p))
                ));
            }
        }
        lasts.push(last);
    }
    Ok(lasts)
}

/// The `publish` and `subscribe` allow lists of deploy/nats/projector-user.values.yaml, with
/// the default names replaced by this test's.
fn documented_permissions(t: &TestConfig) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(repo_root().join("deploy/nats/projector-user.values.yaml"))
        .unwrap();
    let rename = |s: &str| {
        let mut s = s.replace("PROJECTOR_LEASES", &t.cfg.partitions.lease_bucket);
        for base in PROJECTED.iter().chain(&["PROJECTOR_DLQ"]) {
            s = s.replace(base, &t.stream(base));
        }
        match s.as_str() {
            "context.>" | "projector.dlq.>" => format!("{}.{s}", t.tag),
            _ => s,
        }
    };
    let (mut publish, mut subscribe) = (Vec::new(), Vec::new());
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line == "publish:" || line == "subscribe:" {
            section = line;
        } else if let Some(subject) = line.strip_prefix("- \"").and_then(|l| l.strip_suffix('"')) {
            if section == "publish:" {
                publish.push(rename(subject));
            }
        } else if let Some(list) = line.strip_prefix("allow: [") {
            if section == "subscribe:" {
                subscribe.extend(
                    list.trim_end_matches(']')
                        .split(',')
                        .map(|s| s.trim().trim_matches('"').to_string()),
                );
            }
        }
    }
    (publish, subscribe)
}

/// The NATS permissions documented for the chart are enough for a partitioned `run` (read,
/// leases, park, publish outbound) and a clean SIGTERM, with no permission violation.
#[tokio::test(flavor = "multi_thread")]
async fn the_documented_nats_user_runs_a_partitioned_projector() {
    let t = partitioned(2);
    let (publish, subscribe) = documented_permissions(&t);
    assert!(
        publish.len() > 30 && subscribe == ["_INBOX.>"],
        "{publish:?} {subscribe:?}"
    );
    let quoted = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let server = OwnNats::start(
        &t.tag,
        &format!(
            "authorization {{ users = [\n  {{ user: admin, password: admin-pw }}\n  {{ user: projector, password: projector-pw, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}\n] }}\n",
            quoted(&publish),
            quoted(&subscribe)
        ),
    );
    let admin = [("NATS_USER", "admin"), ("NATS_PASSWORD", "admin-pw")];
    let out = server.projector(&t, &admin, &["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.projector(&t, &admin, &["bench", "gen", "--stories", "4", "--publish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pw".into())
            .connect(&server.url)
            .await
            .unwrap(),
    );
    t.publish(&js, &[("planning.story.created", "{not json")])
        .await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (mut child, log) = server.spawn(
        &t,
        &[
            ("NATS_USER", "projector"),
            ("NATS_PASSWORD", "projector-pw"),
        ],
        &["run", "--instance", "documented", "--metrics-addr", &addr],
    );
    // Everything projected (lag 0 on every worker), the poison parked, context.updated out.
    eventually(180, || async move {
        let page = http_get(port, "/metrics")?;
        let sum = |name: &str| -> f64 {
            page.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let parked = sum("projector_parked_total");
        let outbound = sum("projector_outbound_total");
        let lag = sum("projector_lag");
        let held = sum("projector_partitions_held");
        if parked == 1.0 && outbound > 0.0 && lag == 0.0 && held == 2.0 && ready(port).is_ok() {
            Ok(())
        } else {
            Err(format!(
                "parked {parked}, outbound {outbound}, lag {lag}, held {held}"
            ))
        }
    })
    .await;
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        !text.to_lowercase().contains("permissions violation"),
        "{text}"
    );
    assert!(
        holders(&t, &js).await.is_empty(),
        "leases handed back on SIGTERM"
    );
}
