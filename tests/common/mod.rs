//! Shared helpers for the integration tests. They run against the real local stack
//! (`dev/stack up`); every test isolates itself with unique stream, subject and key names.
#![allow(dead_code)]

pub mod sse;

use engine::config::{Config, DEFAULT_TOML};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub const STREAMS: [&str; 6] = [
    "PLANNING_EVENTS",
    "CONTEXT_EVENTS",
    "ORCHESTRATOR_EVENTS",
    "AGENT_COMMANDS",
    "AGENT_RESPONSES",
    "PROJECTOR_DLQ",
];

/// A unique lowercase tag, e.g. `t4f2a1c9`, for names that must not collide across runs.
pub fn tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{:x}{:x}{}",
        std::process::id(),
        nanos % 0xffff_ffff,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A test's own configuration: streams, subjects, dead letters and cache keys all carry
/// the tag, so tests never see each other's data on the shared servers.
pub struct TestConfig {
    pub tag: String,
    pub upper: String,
    pub cfg: Config,
    pub path: PathBuf,
}

impl TestConfig {
    pub fn new() -> TestConfig {
        Self::with(|t| t)
    }

    /// Like `new`, with a last edit of the TOML text.
    pub fn with(edit: impl FnOnce(String) -> String) -> TestConfig {
        let tag = tag();
        let upper = tag.to_uppercase();
        let mut text = DEFAULT_TOML.to_string();
        for s in STREAMS {
            text = text.replace(&format!("\"{s}\""), &format!("\"{upper}_{s}\""));
        }
        text = text
            .replace(
                "subject_prefix = \"\"",
                &format!("subject_prefix = \"{tag}.\""),
            )
            .replace("[\"planning.>\"]", &format!("[\"{tag}.planning.>\"]"))
            .replace("[\"context.>\"]", &format!("[\"{tag}.context.>\"]"))
            .replace(
                "[\"orchestration.>\"]",
                &format!("[\"{tag}.orchestration.>\"]"),
            )
            .replace("[\"agent.cmd.>\"]", &format!("[\"{tag}.agent.cmd.>\"]"))
            .replace(
                "[\"agent.response.>\"]",
                &format!("[\"{tag}.agent.response.>\"]"),
            )
            .replace(
                "subject_prefix = \"projector.dlq\"",
                &format!("subject_prefix = \"{tag}.projector.dlq\""),
            )
            .replace("key_prefix = \"\"", &format!("key_prefix = \"{tag}:\""))
            .replace(
                "lease_bucket = \"PROJECTOR_LEASES\"",
                &format!("lease_bucket = \"{upper}_LEASES\""),
            )
            .replace(
                "default_generation = \"main\"",
                &format!("default_generation = \"{tag}-main\""),
            );
        let text = edit(text);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("{tag}.toml"));
        std::fs::write(&path, &text).unwrap();
        let mut cfg = Config::from_toml(&text, "test").unwrap();
        cfg.apply_env(&std::env::vars().collect());
        TestConfig {
            tag,
            upper,
            cfg,
            path,
        }
    }

    /// This test's default (initially live) generation.
    pub fn main_gen(&self) -> String {
        format!("{}-main", self.tag)
    }

    /// This test's name for one of the standard streams.
    pub fn stream(&self, base: &str) -> String {
        format!("{}_{}", self.upper, base)
    }

    /// This test's subject for a catalog subject.
    pub fn subject(&self, catalog_subject: &str) -> String {
        format!("{}.{}", self.tag, catalog_subject)
    }

    /// Runs the projector binary with this config.
    pub fn projector(&self, args: &[&str]) -> Output {
        projector_with(&self.path, args)
    }
}

/// Another deployment's message in this test's planning stream: a stream that also captures
/// the bare catalog subject `planning.story.created` (created by `streams ensure`), and a
/// story published on it without the prefix.
pub struct Stranger;

impl Stranger {
    /// This test's config with the planning stream also capturing the bare subject.
    pub fn config() -> TestConfig {
        TestConfig::with(|s| {
            s.replace(
                ".planning.>\"]",
                ".planning.>\", \"planning.story.created\"]",
            )
        })
    }

    /// Publishes a story on the bare subject; returns its id.
    pub async fn publish(t: &TestConfig, js: &async_nats::jetstream::Context) -> String {
        let stranger = format!("{}-STRANGER", t.upper);
        js.publish(
            "planning.story.created",
            format!(r#"{{"story_id":"{stranger}","title":"not ours"}}"#).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        stranger
    }
}

/// The drop guard: a test's streams (its tag's `T<hex>_*` names, the lease bucket's
/// `KV_T<hex>_*`, a migration's `_MIGRATING`) and with them their consumers are deleted when
/// its `TestConfig` goes, whether the test passed or panicked. `dev/check-nats-leftovers`
/// checks after `dev/test` that nothing was left.
impl Drop for TestConfig {
    fn drop(&mut self) {
        let nats_cfg = self.cfg.nats.clone();
        let prefixes = [format!("{}_", self.upper), format!("KV_{}_", self.upper)];
        // Its own thread and runtime: Drop is synchronous and may run inside a runtime.
        let done = std::thread::spawn(move || -> Result<usize, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                use futures::TryStreamExt;
                let client = engine::nats::connect(&nats_cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                let js = async_nats::jetstream::new(client);
                let names: Vec<String> = js
                    .stream_names()
                    .try_collect()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut n = 0;
                for name in names
                    .iter()
                    .filter(|s| prefixes.iter().any(|p| s.starts_with(p.as_str())))
                {
                    js.delete_stream(name)
                        .await
                        .map_err(|e| format!("delete {name}: {e}"))?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .join();
        // Never a panic in drop (it would abort a test that is already unwinding); say it.
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("test cleanup of {}: {e}", self.tag),
            Err(_) => eprintln!("test cleanup of {} panicked", self.tag),
        }
    }
}

pub fn projector_with(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("projector binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `dev/stack ARGS` and panics with its output when it fails.
pub fn stack(args: &[&str]) {
    let out = Command::new(repo_root().join("dev/stack"))
        .args(args)
        .output()
        .expect("dev/stack runs");
    assert!(
        out.status.success(),
        "dev/stack {args:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
}

pub async fn nats(cfg: &Config) -> async_nats::Client {
    engine::nats::connect(&cfg.nats)
        .await
        .expect("NATS is up (run `dev/stack up`)")
}

pub fn neo4j(cfg: &Config) -> neo4rs::Graph {
    neo4rs::Graph::new(&cfg.neo4j.uri, &cfg.neo4j.user, &cfg.neo4j.password).unwrap()
}

pub async fn valkey(cfg: &Config) -> redis::aio::MultiplexedConnection {
    redis::Client::open(cfg.valkey.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Valkey is up (run `dev/stack up`)")
}

/// A stream's state (messages, first and last sequence); panics if the stream is missing.
pub async fn stream_state(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::State {
    js.get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"))
        .info()
        .await
        .unwrap()
        .state
        .clone()
}

/// Retries an async check until it holds or `secs` pass (for servers coming back up).
pub async fn eventually<F, Fut, T, E: std::fmt::Debug>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("gave up after {secs}s: {e:?}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `projector run` child process with its own metrics port.
pub struct Running {
    pub child: std::process::Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl TestConfig {
    /// Starts `projector run --generation <tag> ...` in the background; logs go to a file.
    pub fn spawn_run(&self, extra: &[&str]) -> Running {
        self.spawn_run_gen(&self.tag, extra)
    }

    /// `projector run` following the live generation (no --generation).
    pub fn spawn_run_follow_live(&self, extra: &[&str]) -> Running {
        self.spawn(&["run"], extra)
    }

    /// Like `spawn_run`, into generation `gen`.
    pub fn spawn_run_gen(&self, gen: &str, extra: &[&str]) -> Running {
        self.spawn(&["run", "--generation", gen], extra)
    }

    fn spawn(&self, cmd: &[&str], extra: &[&str]) -> Running {
        let port = free_port();
        let log =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{port}.log", self.tag));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_projector"))
            .arg("--config")
            .arg(&self.path)
            .args(cmd)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Running {
            child,
            metrics_port: port,
            log,
        }
    }

    /// `projector run --until-caught-up` into generation `gen`; panics unless it exits 0.
    pub fn run_until_caught_up(&self, gen: &str) {
        let out = self.projector(&[
            "run",
            "--until-caught-up",
            "--generation",
            gen,
            "--metrics-addr",
            "off",
        ]);
        assert!(out.status.success(), "run failed:\n{}", stderr(&out));
    }

    /// `projector verify --json` of a generation: (hash, nodes, relationships).
    pub fn digest(&self, gen: &str) -> (String, u64, u64) {
        let out = self.projector(&["verify", "--generation", gen, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["hash"].as_str().unwrap().to_string(),
            v["nodes"].as_u64().unwrap(),
            v["relationships"].as_u64().unwrap(),
        )
    }

    /// Publishes raw payloads on catalog subjects (prefixed with this test's tag).
    pub async fn publish(&self, js: &async_nats::jetstream::Context, events: &[(&str, &str)]) {
        for (subject, payload) in events {
            js.publish(self.subject(subject), payload.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
}

impl Running {
    pub fn metrics(&self) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        use std::io::{Read, Write};
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Sum of a metric's samples whose label set contains every `label="value"` given.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code (within 60 s).
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "projector did not stop within 60s after SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Counts nodes of `label` with property `key` = `value` in generation `gen`.
pub async fn count_nodes(g: &neo4rs::Graph, gen: &str, label: &str, key: &str, value: &str) -> i64 {
    let q = format!("MATCH (n:{label} {{gen: $gen}}) WHERE n.{key} = $v RETURN count(n) AS c");
    let mut rows = g
        .execute(neo4rs::query(&q).param("gen", gen).param("v", value))
        .await
        .unwrap();
    rows.next().await.unwrap().unwrap().get::<i64>("c").unwrap()
}

/// Waits until the durable `consumer` has nothing pending or unacked on all four projected
/// streams of this test.
pub async fn wait_all_acked(js: &async_nats::jetstream::Context, t: &TestConfig, consumer: &str) {
    eventually(90, || async {
        for base in [
            "PLANNING_EVENTS",
            "CONTEXT_EVENTS",
            "ORCHESTRATOR_EVENTS",
            "AGENT_RESPONSES",
        ] {
            let s = js
                .get_stream(t.stream(base))
                .await
                .map_err(|e| e.to_string())?;
            let mut c: async_nats::jetstream::consumer::PullConsumer = s
                .get_consumer(consumer)
                .await
                .map_err(|e| format!("{base}: {e}"))?;
            let i = c.info().await.map_err(|e| e.to_string())?;
            if i.num_pending != 0 || i.num_ack_pending != 0 {
                return Err(format!(
                    "{base}: pending {} ack pending {}",
                    i.num_pending, i.num_ack_pending
                ));
            }
        }
        Ok(())
    })
    .await
}

/// Waits until generation `gen` holds exactly `n` nodes of `label` with `key` = `value`.
pub async fn wait_for_count(
    g: &neo4rs::Graph,
    gen: &str,
    label: &str,
    key: &str,
    value: &str,
    n: i64,
) {
    eventually(60, || async move {
        match count_nodes(g, gen, label, key, value).await {
            c if c == n => Ok(()),
            c => Err(format!("{label} {key}={value}: {c} of {n}")),
        }
    })
    .await
}

/// A nats-server of a test's own (the stack's binary, a free port, JetStream in the test's
/// folder) with extra configuration, e.g. an `authorization` block or a bigger
/// `max_payload`. Killed when dropped.
pub struct OwnNats {
    child: std::process::Child,
    pub url: String,
}

impl OwnNats {
    pub fn start(tag: &str, extra_conf: &str) -> OwnNats {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{extra_conf}",
                dir.join("js").display()
            ),
        )
        .unwrap();
        let venv = std::env::var("VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".local/venv"));
        let log = std::fs::File::create(dir.join("nats.log")).unwrap();
        let child = Command::new(venv.join("bin/nats-server"))
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nats-server from the stack's venv (run `dev/stack install`)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        OwnNats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    /// Runs the projector binary with `t`'s config against this server, with extra env.
    pub fn projector(&self, t: &TestConfig, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_projector"));
        c.arg("--config")
            .arg(&t.path)
            .args(args)
            .env("NATS_URL", &self.url);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("projector binary runs")
    }
}

impl OwnNats {
    /// Starts the projector binary against this server (e.g. a long-running `run`); its
    /// stdout and stderr go to the returned log file.
    pub fn spawn(
        &self,
        t: &TestConfig,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> (std::process::Child, PathBuf) {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-own.log", t.tag));
        let file = std::fs::File::create(&log).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_projector"));
        c.arg("--config")
            .arg(&t.path)
            .args(args)
            .env("NATS_URL", &self.url)
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            c.env(k, v);
        }
        (c.spawn().expect("projector binary runs"), log)
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
