//! The persistent streams: their wanted config, drift detection, memory->file migration, status.
//!
//! The seeds' bug #1 was streams created without `storage=file`. Here the wanted config is
//! declared once (config/projector.toml), every existing stream is compared field by field,
//! and nothing that differs is left in silence.

use crate::config::Config;
use async_nats::jetstream::{
    self,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use futures::TryStreamExt;
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

/// A stream as projector wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    /// Zero means unlimited.
    pub max_age: Duration,
    /// -1 means unlimited.
    pub max_msgs: i64,
    pub replicas: usize,
    pub duplicate_window: Duration,
    /// -1 means unlimited.
    pub max_bytes: i64,
    /// For an archive: the stream it mirrors (then it has no subjects of its own).
    pub mirror_of: Option<String>,
}

impl StreamSpec {
    /// The JetStream config: file storage, limits retention, discard old.
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: self.max_age,
            max_messages: self.max_msgs,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_bytes: self.max_bytes,
            mirror: self.mirror_of.as_ref().map(|origin| stream::Source {
                name: origin.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The stream set of a configuration: its `[[streams]]` plus the dead-letter stream.
pub fn specs(cfg: &Config) -> Vec<StreamSpec> {
    let d = &cfg.stream_defaults;
    let mut out: Vec<StreamSpec> = cfg
        .streams
        .iter()
        .map(|s| StreamSpec {
            name: s.name.clone(),
            subjects: s.subjects.clone(),
            max_age: s.max_age,
            max_msgs: s.max_msgs,
            // Not set for this stream: the [stream_defaults] value.
            replicas: s.replicas.unwrap_or(d.replicas),
            // Likewise.
            duplicate_window: s.duplicate_window.unwrap_or(d.duplicate_window),
            max_bytes: -1,
            mirror_of: None,
        })
        .collect();
    out.push(StreamSpec {
        name: cfg.dead_letters.stream.clone(),
        subjects: vec![format!("{}.>", cfg.dead_letters.subject_prefix)],
        max_age: Duration::ZERO,
        max_msgs: -1,
        replicas: d.replicas,
        duplicate_window: d.duplicate_window,
        max_bytes: -1,
        mirror_of: None,
    });
    if cfg.archive.enabled {
        for origin in cfg.projected_streams() {
            out.push(StreamSpec {
                name: crate::config::archive_name(&origin),
                subjects: vec![],
                max_age: cfg.archive.max_age,
                max_msgs: cfg.archive.max_msgs,
                replicas: d.replicas,
                duplicate_window: d.duplicate_window,
                max_bytes: cfg.archive.max_bytes,
                mirror_of: Some(origin),
            });
        }
    }
    out
}

/// One field that differs between the wanted and the found config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub field: &'static str,
    pub wanted: String,
    pub found: String,
}

/// Compares the fields projector owns. The server fills defaults for the rest, so only
/// these are compared (a whole-struct comparison would always differ).
///
/// ```
/// use engine::streams::{diff, StreamSpec};
/// use std::time::Duration;
/// let spec = StreamSpec { name: "S".into(), subjects: vec!["s.>".into()], max_age: Duration::from_secs(60),
///     max_msgs: 10, replicas: 1, duplicate_window: Duration::from_secs(120), max_bytes: -1, mirror_of: None };
/// let mut found = spec.config();
/// found.storage = async_nats::jetstream::stream::StorageType::Memory;
/// let d = diff(&spec.config(), &found);
/// assert_eq!(d.len(), 1);
/// assert_eq!((d[0].field, d[0].wanted.as_str(), d[0].found.as_str()), ("storage", "file", "memory"));
/// ```
pub fn diff(wanted: &stream::Config, found: &stream::Config) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut check = |field: &'static str, w: String, f: String| {
        if w != f {
            out.push(Drift {
                field,
                wanted: w,
                found: f,
            });
        }
    };
    let mut ws = wanted.subjects.clone();
    let mut fs = found.subjects.clone();
    ws.sort();
    fs.sort();
    check("subjects", ws.join(","), fs.join(","));
    check(
        "storage",
        storage_name(wanted.storage),
        storage_name(found.storage),
    );
    check(
        "retention",
        format!("{:?}", wanted.retention).to_lowercase(),
        format!("{:?}", found.retention).to_lowercase(),
    );
    check(
        "discard",
        format!("{:?}", wanted.discard).to_lowercase(),
        format!("{:?}", found.discard).to_lowercase(),
    );
    check("max_age", human(wanted.max_age), human(found.max_age));
    check(
        "max_msgs",
        wanted.max_messages.to_string(),
        found.max_messages.to_string(),
    );
    check(
        "max_bytes",
        wanted.max_bytes.to_string(),
        found.max_bytes.to_string(),
    );
    // A mirror has no duplicate window of its own (it stores what its origin accepted):
    // nats-server reports 0 for it after a restart whatever it was created with, so
    // comparing it would report drift that no edit can fix.
    if wanted.mirror.is_none() {
        check(
            "duplicate_window",
            human(wanted.duplicate_window),
            human(found.duplicate_window),
        );
    }
    check(
        "replicas",
        wanted.num_replicas.max(1).to_string(),
        found.num_replicas.max(1).to_string(),
    );
    check("mirror", mirror_name(wanted), mirror_name(found));
    out
}

fn mirror_name(c: &stream::Config) -> String {
    c.mirror
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_else(|| "none".into())
}

fn storage_name(s: StorageType) -> String {
    match s {
        StorageType::File => "file".into(),
        StorageType::Memory => "memory".into(),
    }
}

/// `30d`, `1h`, `2m`, `0s` (unlimited ages print as `0s`).
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{s}s")
    }
}

#[derive(Debug, Error)]
pub enum StreamError {
    #[error("JetStream request about stream {stream} failed: {message}")]
    Request { stream: String, message: String },
    #[error("migrating {stream} to file storage failed at step '{step}': {message}")]
    Migration {
        stream: String,
        step: &'static str,
        message: String,
    },
}

fn req(stream: &str) -> impl Fn(String) -> StreamError + '_ {
    move |message| StreamError::Request {
        stream: stream.to_string(),
        message,
    }
}

/// What `ensure` did with one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Ensured {
    Created,
    UpToDate,
    /// Left as found; the caller reports it and exits 2.
    Drifted {
        drift: Vec<Drift>,
    },
    /// Moved from memory to file storage with every message and sequence kept.
    Migrated {
        messages: u64,
        first_seq: u64,
        last_seq: u64,
    },
    /// A migration to file storage stopped half way (`NAME_MIGRATING` exists); nothing was
    /// touched. The caller exits 2 and says to run `ensure --migrate`, which continues it.
    MigrationInterrupted {
        stage: &'static str,
    },
}

pub(crate) async fn lookup(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Stream>, StreamError> {
    match js.get_stream(name).await {
        Ok(s) => Ok(Some(s)),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(err)
                if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(req(name)(e.to_string())),
        },
    }
}

/// Creates missing streams and compares existing ones; with `migrate`, moves memory streams
/// to file storage keeping every message and sequence number.
///
/// # Errors
/// A JetStream request that fails (server gone, permissions) or a failed migration step.
pub async fn ensure(
    js: &jetstream::Context,
    specs: &[StreamSpec],
    migrate: bool,
) -> Result<Vec<(String, Ensured)>, StreamError> {
    let mut out = Vec::new();
    for spec in specs {
        let wanted = spec.config();
        // A migration under way first: with NAME deleted, its copy may be the only data, and
        // creating an empty NAME here would make publishers restart at sequence 1.
        let stage = if spec.mirror_of.is_none() {
            crate::migrate::stage(js, &spec.name).await?
        } else {
            None
        };
        let outcome = match (stage, lookup(js, &spec.name).await?) {
            (Some(st), _) if st != crate::migrate::Stage::Start => {
                if migrate {
                    migrated(crate::migrate::run(js, spec).await?)
                } else {
                    tracing::warn!(stream = %spec.name, stage = st.describe(), "migration to file storage interrupted");
                    Ensured::MigrationInterrupted {
                        stage: st.describe(),
                    }
                }
            }
            (_, None) => {
                js.create_stream(wanted)
                    .await
                    .map_err(|e| req(&spec.name)(e.to_string()))?;
                tracing::info!(stream = %spec.name, "created stream (storage file)");
                Ensured::Created
            }
            (_, Some(mut s)) => {
                let found = s
                    .info()
                    .await
                    .map_err(|e| req(&spec.name)(e.to_string()))?
                    .config
                    .clone();
                let drift = diff(&wanted, &found);
                if drift.is_empty() {
                    Ensured::UpToDate
                } else if migrate && found.storage == StorageType::Memory {
                    migrated(crate::migrate::run(js, spec).await?)
                } else {
                    for d in &drift {
                        tracing::warn!(stream = %spec.name, field = d.field, wanted = %d.wanted, found = %d.found, "stream config drift");
                    }
                    Ensured::Drifted { drift }
                }
            }
        };
        out.push((spec.name.clone(), outcome));
    }
    Ok(out)
}

fn migrated((messages, first_seq, last_seq): (u64, u64, u64)) -> Ensured {
    Ensured::Migrated {
        messages,
        first_seq,
        last_seq,
    }
}

/// A consumer of a stream, as `nats consumer ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub pending: u64,
    pub ack_pending: usize,
    pub ack_floor: u64,
    pub redelivered: usize,
}

/// A stream, as `nats stream ls` shows it, with its consumers.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub exists: bool,
    pub storage: Option<String>,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub consumers: Vec<ConsumerStatus>,
    pub drift: Vec<Drift>,
    /// For an archive: the stream it mirrors and how many messages it is behind.
    pub mirror_of: Option<String>,
    pub mirror_lag: Option<u64>,
}

/// Status of every stream in `specs`.
pub async fn status(
    js: &jetstream::Context,
    specs: &[StreamSpec],
) -> Result<Vec<StreamStatus>, StreamError> {
    let mut out = Vec::new();
    for spec in specs {
        let Some(mut s) = lookup(js, &spec.name).await? else {
            out.push(StreamStatus {
                name: spec.name.clone(),
                exists: false,
                storage: None,
                messages: 0,
                bytes: 0,
                first_seq: 0,
                last_seq: 0,
                consumers: vec![],
                drift: vec![],
                mirror_of: spec.mirror_of.clone(),
                mirror_lag: None,
            });
            continue;
        };
        let info = s
            .info()
            .await
            .map_err(|e| req(&spec.name)(e.to_string()))?
            .clone();
        let mut consumers: Vec<ConsumerStatus> = s
            .consumers()
            .map_ok(|c| ConsumerStatus {
                name: c.name.clone(),
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                ack_floor: c.ack_floor.stream_sequence,
                redelivered: c.num_redelivered,
            })
            .try_collect()
            .await
            .map_err(|e| req(&spec.name)(e.to_string()))?;
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        out.push(StreamStatus {
            name: spec.name.clone(),
            exists: true,
            storage: Some(storage_name(info.config.storage)),
            messages: info.state.messages,
            bytes: info.state.bytes,
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            consumers,
            drift: diff(&spec.config(), &info.config),
            mirror_of: spec.mirror_of.clone(),
            mirror_lag: info.mirror.as_ref().map(|m| m.lag),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_TOML};

    #[test]
    fn specs_are_file_limits_discard_old_plus_dlq() {
        let cfg = Config::from_toml(DEFAULT_TOML, "t").unwrap();
        let specs = specs(&cfg);
        // Five streams, the dead letters, and an archive per projected stream.
        assert_eq!(specs.len(), 6 + cfg.projected_streams().len());
        assert_eq!(specs[6].name, "PLANNING_EVENTS_ARCHIVE");
        assert_eq!(specs[6].mirror_of.as_deref(), Some("PLANNING_EVENTS"));
        for s in &specs {
            let c = s.config();
            assert_eq!(c.storage, StorageType::File);
            assert_eq!(c.retention, RetentionPolicy::Limits);
            assert_eq!(c.discard, DiscardPolicy::Old);
            assert_eq!(c.duplicate_window, Duration::from_secs(120));
        }
        assert_eq!(specs[5].name, "PROJECTOR_DLQ");
    }

    #[test]
    fn diff_reports_every_differing_field() {
        let cfg = Config::from_toml(DEFAULT_TOML, "t").unwrap();
        let wanted = specs(&cfg)[0].config();
        let mut found = wanted.clone();
        assert!(diff(&wanted, &found).is_empty());
        found.storage = StorageType::Memory;
        found.max_age = Duration::from_secs(3600);
        found.subjects = vec!["planning.story.>".into()];
        let fields: Vec<_> = diff(&wanted, &found).iter().map(|d| d.field).collect();
        assert_eq!(fields, vec!["subjects", "storage", "max_age"]);
    }

    #[test]
    fn a_mirrors_duplicate_window_is_not_compared_a_live_streams_is() {
        let cfg = Config::from_toml(DEFAULT_TOML, "t").unwrap();
        let all = specs(&cfg);
        let archive = all.iter().find(|s| s.mirror_of.is_some()).unwrap().config();
        let mut found = archive.clone();
        // What nats-server 2.15 reports for a mirror after a restart.
        found.duplicate_window = Duration::ZERO;
        assert!(diff(&archive, &found).is_empty());
        let live = all[0].config();
        let mut found = live.clone();
        found.duplicate_window = Duration::ZERO;
        let fields: Vec<_> = diff(&live, &found).iter().map(|d| d.field).collect();
        assert_eq!(fields, vec!["duplicate_window"]);
    }

    #[test]
    fn subjects_compare_as_sets() {
        let cfg = Config::from_toml(DEFAULT_TOML, "t").unwrap();
        let mut wanted = specs(&cfg)[0].config();
        wanted.subjects = vec!["a".into(), "b".into()];
        let mut found = wanted.clone();
        found.subjects = vec!["b".into(), "a".into()];
        assert!(diff(&wanted, &found).is_empty());
    }
}
