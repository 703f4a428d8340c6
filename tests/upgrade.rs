//! Projection upgrades (issue #22): a binary with another projection version takes over a
//! live generation built by the old one. The new binary is the test-only variant
//! (`--features projection-variant`: story titles upper-cased, projection version 2), built
//! once into target/variant (or taken from `PROJECTOR_VARIANT_BIN`).

mod common;

use async_nats::jetstream;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The variant binary: built with the test-only feature into its own target directory, so
/// the normal build's binary stays the old version.
fn variant_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PROJECTOR_VARIANT_BIN") {
        return PathBuf::from(p);
    }
    let target = repo_root().join("target/variant");
    let out = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args([
            "build",
            "--bin",
            "projector",
            "--features",
            "projection-variant",
        ])
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building the variant failed:\n{}",
        stderr(&out)
    );
    target.join("debug/projector")
}

fn old_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_projector"))
}

fn cli(bin: &Path, t: &TestConfig, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .arg("--config")
        .arg(&t.path)
        .args(args)
        .output()
        .expect("projector runs")
}

fn json(bin: &Path, t: &TestConfig, args: &[&str]) -> Value {
    let o = cli(bin, t, args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `projector run` (following live) of `bin`, its output in a log file.
struct Proc {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Proc {
    fn start(bin: &Path, t: &TestConfig, extra: &[&str]) -> Proc {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{port}.log", t.tag));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&t.path)
            .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and the exit code (or the code it already exited with).
    fn stop(mut self) -> Option<i32> {
        // Err: it exited already; try_wait below reads its code.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..600 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("did not stop:\n{}", self.log());
    }

    fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().unwrap().and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already gone is fine.
        let _ = self.child.kill();
    }
}

/// Like [`get`], for a process that may stop while it is read: any failure is status 0.
fn try_get(port: u16, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Value::Null);
    };
    let mut out = String::new();
    if write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").is_err()
        || s.read_to_string(&mut out).is_err()
    {
        return (0, Value::Null);
    }
    let Some(status) = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()) else {
        return (0, Value::Null);
    };
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// GET on the process's HTTP port: (status, JSON body). A refused connection is status 0.
fn get(port: u16, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Value::Null);
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn generation_names(t: &TestConfig) -> Vec<String> {
    json(&old_bin(), t, &["generations", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `bin` (following live) has projected everything the streams hold.
fn caught_up(bin: &Path, t: &TestConfig) {
    let out = cli(
        bin,
        t,
        &["run", "--until-caught-up", "--metrics-addr", "off"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

async fn publish_story(t: &TestConfig, js: &jetstream::Context, id: &str, title: &str) {
    t.publish(
        js,
        &[(
            "planning.story.created",
            &format!(
                r#"{{"story_id":"{id}","title":"{title}","timestamp":"2026-02-01T10:00:00Z"}}"#
            ),
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_projection_version_rebuilds_in_the_background_and_switches() {
    let v2 = variant_bin();
    let t = TestConfig::new();
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let h = engine::history::generate(60, 5);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 5)
        .await
        .unwrap();
    // The old code projects the history.
    caught_up(&old_bin(), &t);
    let old = t.main_gen();
    let gens = json(&old_bin(), &t, &["generations", "list", "--json"]);
    let g = gens
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["generation"] == old.as_str())
        .unwrap();
    assert_eq!(g["projection_version"], 1, "{gens}");
    assert_eq!(
        json(&old_bin(), &t, &["query", "story", "US-0001", "--json"])["title"],
        "Story 1"
    );

    // The new code takes over; the old generation stays live and served while it rebuilds.
    let mut new = Proc::start(
        &v2,
        &t,
        &["--on-projection-change", "rebuild", "--drop-grace", "3"],
    );
    let fresh = old.clone() + "-pv2";
    let mut seen_old = false;
    let mut published = 0;
    let switched = loop {
        assert!(
            new.exited().is_none(),
            "the new process exited:\n{}",
            new.log()
        );
        let (code, story) = get(new.port, "/v1/stories/US-0001");
        if code != 0 {
            assert_eq!(code, 200, "a read during the upgrade failed: {story}");
            match story["title"].as_str() {
                Some("Story 1") => seen_old = true,
                Some("STORY 1") => {}
                other => panic!("a half-built view: title {other:?} in {story}"),
            }
        }
        // Events published during the upgrade must all be in at the end.
        if published < 20 {
            publish_story(
                &t,
                &js,
                &format!("US-UP-{published}"),
                &format!("during {published}"),
            )
            .await;
            published += 1;
        }
        let (_, ready) = get(new.port, "/readyz");
        if ready["versions"]["generation"] == fresh.as_str() {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        seen_old,
        "the old generation was not served during the rebuild"
    );
    assert_eq!(
        switched["versions"]["generation_projection_version"], 2,
        "{switched}"
    );
    assert_eq!(switched["versions"]["projection_version"], 2);
    for i in published..20 {
        publish_story(&t, &js, &format!("US-UP-{i}"), &format!("during {i}")).await;
    }

    // After the switch every view reflects the new projection, and the events published
    // during the upgrade are in.
    eventually(60, || async {
        let (code, s) = get(new.port, "/v1/stories/US-UP-19");
        if code == 200 && s["title"] == "DURING 19" {
            Ok(())
        } else {
            Err((code, s))
        }
    })
    .await;
    for i in 0..20 {
        let s = json(
            &v2,
            &t,
            &["query", "story", &format!("US-UP-{i}"), "--json"],
        );
        assert_eq!(s["title"], format!("DURING {i}"));
    }
    assert_eq!(
        json(&v2, &t, &["query", "story", "US-0001", "--json"])["title"],
        "STORY 1"
    );
    let status = json(&v2, &t, &["streams", "status", "--json"]);
    assert_eq!(status["generation"], fresh.as_str());
    assert_eq!(status["generation_versions"]["projection_version"], 2);
    // Live equals a clean rebuild with the new code.
    let out = cli(&v2, &t, &["verify", "--against-rebuild", "--json"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // The old generation is gone after the grace period.
    eventually(60, || async {
        let names = generation_names(&t);
        if names.contains(&old) {
            Err(names)
        } else {
            Ok(())
        }
    })
    .await;
    let (_, metrics) = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", new.port)).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        ((), out)
    };
    for step in ["started", "built", "verified", "switched"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("projector_upgrade_steps_total")
                    && l.contains(&format!("step=\"{step}\""))
                    && l.ends_with(" 1")),
            "step {step} not counted:\n{metrics}"
        );
    }
    assert!(metrics.contains("projector_rebuild_expected_events"));
    assert_eq!(new.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn refuse_and_newer_versions_exit_2_without_writing() {
    let v2 = variant_bin();
    let t = TestConfig::new();
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    publish_story(&t, &js, "US-R", "refuse").await;
    caught_up(&old_bin(), &t);
    let before = t.digest(&t.main_gen());
    let out = cli(
        &v2,
        &t,
        &[
            "run",
            "--until-caught-up",
            "--metrics-addr",
            "off",
            "--on-projection-change",
            "refuse",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("projection version 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.digest(&t.main_gen()), before);
    // The new version switches live to its generation; then the old binary is refused
    // whatever its policy: it must not rebuild its own version and switch back.
    let mut new = Proc::start(&v2, &t, &["--drop-grace", "600"]);
    eventually(120, || async {
        let (_, r) = get(new.port, "/readyz");
        if r["versions"]["generation_projection_version"] == 2 {
            Ok(())
        } else {
            Err(r)
        }
    })
    .await;
    assert!(new.exited().is_none());
    let out = cli(
        &old_bin(),
        &t,
        &["run", "--until-caught-up", "--metrics-addr", "off"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("newer than this binary's 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(new.stop(), Some(0));
}

const PARTITIONS: u32 = 4;

/// Every stream's lag in the live generation is 0, per `streams status --json`.
fn all_caught_up(t: &TestConfig) -> Result<(), String> {
    let out = cli(&old_bin(), t, &["streams", "status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let parts = v["projectors"].as_array().ok_or("no projectors")?;
    if parts.iter().all(|p| p["lag"] == 0) {
        Ok(())
    } else {
        Err(format!("{parts:?}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_partitioned_instances_upgraded_one_by_one() {
    let v2 = variant_bin();
    let t = TestConfig::with(|text| {
        text.replace("count = 1", &format!("count = {PARTITIONS}"))
            .replace("lease_ttl = \"10s\"", "lease_ttl = \"3s\"")
    });
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let h = engine::history::generate(40, 8);
    engine::history::publish(&js, &t.cfg.subject_prefix, &h, 8)
        .await
        .unwrap();
    let old = t.main_gen();
    let fresh = old.clone() + "-pv2";
    let mut olds: Vec<(String, Proc)> = ["a", "b", "c"]
        .iter()
        .map(|i| {
            (
                i.to_string(),
                Proc::start(&old_bin(), &t, &["--instance", i]),
            )
        })
        .collect();
    eventually(120, || async { all_caught_up(&t) }).await;

    // One by one: stop an old instance, start a new one under the same name. The first new
    // one builds in the background while the old ones keep projecting the old generation;
    // after its switch the old ones are fenced out at their next batch.
    let mut news: Vec<Proc> = Vec::new();
    let mut n = 0;
    while let Some((name, mut p)) = (!olds.is_empty()).then(|| olds.remove(0)) {
        if p.exited().is_none() {
            p.stop();
        }
        news.push(Proc::start(
            &v2,
            &t,
            &["--instance", &name, "--drop-grace", "3"],
        ));
        // Events published during the upgrade, on every partition.
        for _ in 0..10 {
            publish_story(&t, &js, &format!("US-RU-{n}"), &format!("rolling {n}")).await;
            n += 1;
        }
        // Until the first new instance has switched, every instance still up answers every
        // read from a whole generation: the old one's view or the new one's, no 5xx.
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let ports: Vec<u16> = olds
                .iter()
                .map(|(_, p)| p.port)
                .chain(news.iter().map(|p| p.port))
                .collect();
            for port in ports {
                let (code, story) = try_get(port, "/v1/stories/US-0001");
                // 0: not listening (yet, or any more); anything else must be a whole view.
                if code != 0 {
                    assert_eq!(
                        code, 200,
                        "a read on :{port} during the rolling upgrade: {story}"
                    );
                    match story["title"].as_str() {
                        Some("Story 1") | Some("STORY 1") => {}
                        other => panic!("a half-built view on :{port}: {other:?} in {story}"),
                    }
                }
            }
            let (_, r) = try_get(news[0].port, "/readyz");
            if r["versions"]["generation"] == fresh.as_str() {
                break;
            }
            // An exit (e.g. a refused switch) would otherwise show only as a timeout.
            if let Some(code) = news[0].exited() {
                panic!(
                    "the first new instance exited ({code}) before switching:\n{}",
                    news[0].log()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the first new instance did not switch within 300 s: {r}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for _ in 0..10 {
            publish_story(&t, &js, &format!("US-RU-{n}"), &format!("rolling {n}")).await;
            n += 1;
        }
    }
    for p in &mut news {
        assert!(p.exited().is_none(), "a new instance exited:\n{}", p.log());
    }
    eventually(120, || async { all_caught_up(&t) }).await;
    for i in 0..n {
        let s = json(
            &v2,
            &t,
            &["query", "story", &format!("US-RU-{i}"), "--json"],
        );
        assert_eq!(s["title"], format!("ROLLING {i}"), "{s}");
    }
    let out = cli(&v2, &t, &["verify", "--against-rebuild", "--json"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    eventually(60, || async {
        let names = generation_names(&t);
        if names.contains(&old) {
            Err(names)
        } else {
            Ok(())
        }
    })
    .await;
    for p in news {
        assert_eq!(p.stop(), Some(0));
    }
}
