//! Configuration: `config/projector.toml` (compiled in as the defaults) plus env overrides.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// The built-in configuration: the same file operators read in the repository.
pub const DEFAULT_TOML: &str = include_str!("../../config/projector.toml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d` (e.g. `30d`).
///
/// ```
/// use engine::config::parse_duration;
/// assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
/// assert!(parse_duration("2 weeks").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs(secs))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds_file: Option<String>,
    #[serde(default)]
    pub tls_required: bool,
}

// Secrets never reach logs: Debug hides password and token.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("connect_timeout", &self.connect_timeout)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("creds_file", &self.creds_file)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

/// The most Bolt connections one sink's pool may open (`[neo4j] max_connections`); a
/// bound that catches a typo before it reaches Neo4j's own connection limit.
pub const MAX_CONNECTIONS: usize = 512;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neo4jConfig {
    pub uri: String,
    pub user: String,
    pub password: String,
    /// Graph transactions this process runs at once, across all its workers. The streams
    /// share stories, so concurrent batches wait on each other's node locks (and deadlock);
    /// two measured best on the 2-core bench machine. See docs/decisions.md.
    #[serde(default = "two")]
    pub max_concurrent_writes: usize,
    /// Connections in the Bolt pool of one sink. More than `max_concurrent_writes`: each
    /// open write transaction holds one, and reads (checkpoints, outbox, the Valkey step's
    /// contexts, readiness, the HTTP views) take theirs meanwhile.
    #[serde(default = "sixteen")]
    pub max_connections: usize,
    /// How long one-shot commands (`run --until-caught-up`, replay, rebuild, verify, query,
    /// status) wait for Neo4j before failing with exit 1. The daemon keeps retrying.
    #[serde(default = "thirty_secs", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
}

fn two() -> usize {
    2
}

fn sixteen() -> usize {
    16
}

fn thirty_secs() -> Duration {
    Duration::from_secs(30)
}

// Secrets never reach logs: Debug hides the password.
impl std::fmt::Debug for Neo4jConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neo4jConfig")
            .field("uri", &self.uri)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("max_concurrent_writes", &self.max_concurrent_writes)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValkeyConfig {
    pub url: String,
    #[serde(default)]
    pub key_prefix: String,
    /// The change feed's changelog keeps at most this many entries (`/v1/changes`).
    #[serde(default = "default_changelog_max_len")]
    pub changelog_max_len: u64,
    /// ... and none older than this ("0s": no age limit).
    #[serde(default, deserialize_with = "de_duration")]
    pub changelog_max_age: Duration,
}

fn default_changelog_max_len() -> u64 {
    100_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDefaults {
    pub replicas: usize,
    #[serde(deserialize_with = "de_duration")]
    pub duplicate_window: Duration,
}

/// One stream as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamEntry {
    pub name: String,
    pub subjects: Vec<String>,
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
    pub max_msgs: i64,
    pub replicas: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub duplicate_window: Option<Duration>,
}

/// Archive mirrors of the projected streams (`NAME_ARCHIVE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
    pub max_bytes: i64,
    pub max_msgs: i64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: false,
            max_age: Duration::ZERO,
            max_bytes: -1,
            max_msgs: -1,
        }
    }
}

/// The archive stream of `stream`.
pub fn archive_name(stream: &str) -> String {
    format!("{stream}_ARCHIVE")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub stream: String,
    pub subject_prefix: String,
}

/// How the streams are split between instances (issue #9, docs/operations.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// Partitions per projector and stream; events go to `partition_of(story_id, count)`.
    /// 1 = one writer reads everything and no leases are taken.
    pub count: u32,
    /// A partition whose holder stopped refreshing its lease this long is free to take.
    #[serde(deserialize_with = "de_duration")]
    pub lease_ttl: Duration,
    /// The JetStream KV bucket that holds the leases.
    pub lease_bucket: String,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            count: 1,
            lease_ttl: Duration::from_secs(10),
            lease_bucket: "PROJECTOR_LEASES".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorEntry {
    pub name: String,
    pub streams: Vec<String>,
}

fn default_generation() -> String {
    "main".into()
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub subject_prefix: String,
    /// The generation that is live until a rebuild is promoted.
    #[serde(default = "default_generation")]
    pub default_generation: String,
    pub nats: NatsConfig,
    pub neo4j: Neo4jConfig,
    pub valkey: ValkeyConfig,
    pub stream_defaults: StreamDefaults,
    pub streams: Vec<StreamEntry>,
    #[serde(default)]
    pub archive: ArchiveConfig,
    pub dead_letters: DeadLetterConfig,
    #[serde(default)]
    pub partitions: PartitionConfig,
    #[serde(default)]
    pub feed: FeedConfig,
    pub projectors: Vec<ProjectorEntry>,
}

/// The change feed's serving side (`GET /v1/changes`, `crate::feed`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// How often every client gets `event: watermark` (each stream's checkpoint).
    #[serde(deserialize_with = "de_duration")]
    pub watermark_interval: Duration,
    /// A `:` comment after this long without an event, so proxies keep the stream open.
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat: Duration,
    /// Events one client may have waiting; past that it is dropped with a reason.
    pub client_buffer: usize,
    /// Feeds open at once on one instance; another gets 503.
    pub max_clients: usize,
}

impl Default for FeedConfig {
    fn default() -> FeedConfig {
        FeedConfig {
            watermark_interval: Duration::from_secs(5),
            heartbeat: Duration::from_secs(15),
            client_buffer: 1024,
            max_clients: 10_000,
        }
    }
}

impl Config {
    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// A parsed TOML table (the layers already merged, `crate::effective`).
    pub fn from_table(table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// The built-in defaults with the file at `path` merged over them, then env overrides
    /// (`crate::effective::load` also says where each value came from).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Ok(crate::effective::load(path, &env)?.0)
    }

    /// Env overrides, including the seed ConfigMap names (`REDIS_HOST`, `REDIS_PORT`).
    /// Returns the config keys overridden, each with the variable that set it.
    pub fn apply_env(
        &mut self,
        env: &BTreeMap<String, String>,
    ) -> Vec<(&'static str, &'static str)> {
        let mut set = Vec::new();
        let mut get = |key: &'static str, vars: &[&'static str]| {
            let found = vars.iter().find_map(|k| {
                env.get(*k)
                    .filter(|v| !v.is_empty())
                    .map(|v| (*k, v.clone()))
            });
            if let Some((var, _)) = &found {
                set.push((key, *var));
            }
            found.map(|(_, v)| v)
        };
        if let Some(v) = get("nats.url", &["NATS_URL"]) {
            self.nats.url = v;
        }
        if let Some(v) = get("nats.user", &["NATS_USER"]) {
            self.nats.user = Some(v);
        }
        if let Some(v) = get("nats.password", &["NATS_PASSWORD"]) {
            self.nats.password = Some(v);
        }
        if let Some(v) = get("nats.token", &["NATS_TOKEN"]) {
            self.nats.token = Some(v);
        }
        if let Some(v) = get("nats.creds_file", &["NATS_CREDS"]) {
            self.nats.creds_file = Some(v);
        }
        if let Some(v) = get("neo4j.uri", &["NEO4J_URI"]) {
            self.neo4j.uri = v;
        }
        if let Some(v) = get("neo4j.user", &["NEO4J_USER", "NEO4J_USERNAME"]) {
            self.neo4j.user = v;
        }
        if let Some(v) = get("neo4j.password", &["NEO4J_PASSWORD"]) {
            self.neo4j.password = v;
        }
        if let Some(v) = get("valkey.url", &["VALKEY_URL", "REDIS_URL"]) {
            self.valkey.url = v;
        } else if let Some(host) = get("valkey.url", &["REDIS_HOST", "VALKEY_HOST"]) {
            // The port only completes the host's URL: not a key of its own.
            let port = ["REDIS_PORT", "VALKEY_PORT"]
                .iter()
                .find_map(|k| env.get(*k).filter(|v| !v.is_empty()).cloned())
                .unwrap_or_else(|| "6379".into());
            self.valkey.url = format!("redis://{host}:{port}");
        }
        set
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        if !(1..=256).contains(&self.partitions.count) {
            return Err(bad(format!(
                "[partitions] count = {} (use 1 to 256; 1 for a single instance)",
                self.partitions.count
            )));
        }
        if self.partitions.lease_ttl < Duration::from_secs(2) {
            return Err(bad(
                "[partitions] lease_ttl must be at least 2s (leases are refreshed every third of it)".into(),
            ));
        }
        if self.valkey.changelog_max_len == 0 {
            return Err(bad(
                "[valkey] changelog_max_len must be at least 1 (feed clients resume from it)"
                    .into(),
            ));
        }
        let f = &self.feed;
        if f.client_buffer == 0 || f.max_clients == 0 || f.watermark_interval.is_zero() {
            return Err(bad(
                "[feed] client_buffer, max_clients and watermark_interval must be above 0".into(),
            ));
        }
        let n = &self.neo4j;
        if !(1..=MAX_CONNECTIONS).contains(&n.max_concurrent_writes) {
            return Err(bad(format!(
                "[neo4j] max_concurrent_writes = {} (use 1 to {}, and less than max_connections)",
                n.max_concurrent_writes,
                MAX_CONNECTIONS - 1
            )));
        }
        if n.max_connections <= n.max_concurrent_writes || n.max_connections > MAX_CONNECTIONS {
            return Err(bad(format!(
                "[neo4j] max_connections = {} (use {} to {MAX_CONNECTIONS}: more than max_concurrent_writes = {})",
                n.max_connections,
                n.max_concurrent_writes + 1,
                n.max_concurrent_writes
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.streams {
            if !names.insert(s.name.as_str()) {
                return Err(bad(format!("stream {} is defined twice", s.name)));
            }
            if s.subjects.is_empty() {
                return Err(bad(format!("stream {} has no subjects", s.name)));
            }
        }
        for p in &self.projectors {
            for s in &p.streams {
                if !names.contains(s.as_str()) {
                    return Err(bad(format!(
                        "projector {} reads stream {s}, which is not defined under [[streams]]",
                        p.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Streams that some projector reads (the ones that get archives).
    pub fn projected_streams(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.projectors {
            for s in &p.streams {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    /// The projector named `name`.
    pub fn projector(&self, name: &str) -> Option<&ProjectorEntry> {
        self.projectors.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_config_has_the_five_seed_streams() {
        let cfg = Config::from_toml(DEFAULT_TOML, "test").unwrap();
        let got: Vec<(&str, u64, i64)> = cfg
            .streams
            .iter()
            .map(|s| (s.name.as_str(), s.max_age.as_secs(), s.max_msgs))
            .collect();
        assert_eq!(
            got,
            vec![
                ("PLANNING_EVENTS", 30 * 86_400, 1_000_000),
                ("CONTEXT_EVENTS", 7 * 86_400, 100_000),
                ("ORCHESTRATOR_EVENTS", 7 * 86_400, 50_000),
                ("AGENT_COMMANDS", 3_600, 10_000),
                ("AGENT_RESPONSES", 3_600, 10_000),
            ]
        );
    }

    #[test]
    fn env_overrides_and_seed_names() {
        let mut cfg = Config::from_toml(DEFAULT_TOML, "test").unwrap();
        let env = BTreeMap::from([
            ("NATS_URL".to_string(), "nats://n:1".to_string()),
            ("REDIS_HOST".to_string(), "valkey.svc".to_string()),
            ("NEO4J_PASSWORD".to_string(), "s3cret".to_string()),
        ]);
        cfg.apply_env(&env);
        assert_eq!(cfg.nats.url, "nats://n:1");
        assert_eq!(cfg.valkey.url, "redis://valkey.svc:6379");
        assert!(!format!("{:?}", cfg.neo4j).contains("s3cret"));
        let env = BTreeMap::from([("NATS_PASSWORD".to_string(), "n4ts-s3cret".to_string())]);
        cfg.apply_env(&env);
        assert_eq!(cfg.nats.password.as_deref(), Some("n4ts-s3cret"));
        assert!(!format!("{cfg:?}").contains("n4ts-s3cret"));
    }

    #[test]
    fn graph_writes_and_pool_are_validated() {
        let with = |extra: &str| {
            let text = DEFAULT_TOML
                .replace("max_connections = 16\n", "")
                .replace("max_concurrent_writes = 2\n", &format!("{extra}\n"));
            Config::from_toml(&text, "t").map_err(|e| e.to_string())
        };
        let cfg = with("max_concurrent_writes = 2").unwrap();
        assert_eq!(cfg.neo4j.max_connections, 16);
        // 0 used to be accepted and silently run as 1.
        let err = with("max_concurrent_writes = 0").unwrap_err();
        assert!(
            err.contains("[neo4j] max_concurrent_writes = 0 (use 1 to"),
            "{err}"
        );
        let err = with("max_concurrent_writes = 4\nmax_connections = 4").unwrap_err();
        assert!(
            err.contains("[neo4j] max_connections = 4 (use 5 to 512"),
            "{err}"
        );
        let cfg = with("max_concurrent_writes = 4\nmax_connections = 5").unwrap();
        assert_eq!(cfg.neo4j.max_connections, 5);
    }

    #[test]
    fn projector_on_unknown_stream_is_refused() {
        let text = DEFAULT_TOML.replace(
            "streams = [\"PLANNING_EVENTS\",",
            "streams = [\"NOPE\", \"PLANNING_EVENTS\",",
        );
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("reads stream NOPE"), "{err}");
    }
}
