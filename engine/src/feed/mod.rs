//! The change feed: `GET /v1/changes` (Server-Sent Events), one event per committed change
//! of a story view of the live generation, resumable from a position (docs/views.md).
//!
//! The committer's Valkey MULTI appends each change to the changelog, a capped Valkey stream
//! (`CacheSink::changelog_key`), in the same script that writes the context
//! (`sink/cache.rs`): an entry exists exactly when its context does, never before the Neo4j
//! commit (which precedes the Valkey step) and never twice for one revision. A position is the
//! entry's Valkey stream id (`<ms>-<n>`), which only grows across every writer of the
//! deployment, so every instance serves every story's feed by reading the same stream (D66).
//!
//! - [`Changelog`]: reads of that stream (ranges, the last position, watermarks);
//! - [`hub`]: one tailer per process that fans new entries out to the open feeds;
//! - [`sse`]: the endpoint: filters, resume, reset, slow clients;
//! - [`ui`]: the live story viewer at `/ui/`, static files built into the binary.

pub mod hub;
pub mod sse;
pub mod ui;

use crate::error::WriteError;
use crate::sink::cache::CacheSink;
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use utoipa::ToSchema;

/// A changelog position: a Valkey stream id. Ordered as Valkey orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub ms: u64,
    pub seq: u64,
}

impl Position {
    /// Reads `<ms>-<n>` (as sent in `id:`); `None` for anything else.
    ///
    /// ```
    /// use engine::feed::Position;
    /// let p = Position::parse("1764650000000-3").unwrap();
    /// assert_eq!(p.to_string(), "1764650000000-3");
    /// assert!(Position::parse("12").is_none() && Position::parse("a-1").is_none());
    /// ```
    pub fn parse(s: &str) -> Option<Position> {
        let (ms, seq) = s.trim().split_once('-')?;
        Some(Position {
            ms: ms.parse().ok()?,   // not a number: not a position (400 or reset)
            seq: seq.parse().ok()?, // the same
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// `event: story.changed`: a story's view changed at this revision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Change {
    /// The changelog position (also the event's `id:`).
    #[schema(value_type = String, example = "1764650000000-0")]
    pub position: String,
    #[schema(example = "US-0001")]
    pub story_id: String,
    /// The story's revision: `GET /v1/stories/{id}` read after this event serves at least it.
    pub revision: i64,
    /// The parts of the view that changed: story, phase, plans, approvals, tasks, decisions,
    /// milestones (for a story's first render, the parts it has).
    pub what: Vec<String>,
    /// The story's newest event time, milliseconds since the epoch.
    pub event_time_ms: i64,
    /// The generation written.
    pub generation: String,
}

/// `event: watermark`: every stream's checkpoint; every change up to `position` was sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Watermark {
    /// The changelog's last position when the checkpoints were read (absent while empty).
    pub position: Option<String>,
    /// The live generation.
    pub generation: String,
    /// Checkpoint (last committed stream sequence) by checkpoint key (projector, stream,
    /// partition), read in the same MULTI as `position`.
    pub checkpoints: BTreeMap<String, u64>,
}

/// `event: generation`: a rebuild was switched live; read every view again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GenerationSwitch {
    pub position: String,
    /// The new live generation.
    pub generation: String,
}

/// `event: reset` (the position asked for is no longer, or never was, in the changelog:
/// read the views again, then follow) and `event: dropped` (the server closes the feed).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Notice {
    /// Where the feed continues (reset), or the last position sent (dropped).
    pub position: Option<String>,
    pub reason: String,
}

/// One changelog entry or progress marker, as fanned out to the feeds.
#[derive(Debug, Clone)]
pub enum Item {
    Change(Position, Change),
    Generation(Position, GenerationSwitch),
    Watermark(Option<Position>, Watermark),
}

impl Item {
    /// The position the item carries (a watermark of an empty changelog has none).
    pub fn position(&self) -> Option<Position> {
        match self {
            Item::Change(p, _) | Item::Generation(p, _) => Some(*p),
            Item::Watermark(p, _) => *p,
        }
    }
}

/// Reads of the changelog through the cache's shared connection.
#[derive(Clone)]
pub struct Changelog {
    conn: ConnectionManager,
    cache: CacheSink,
    key: String,
}

type Raw = Vec<(String, Vec<String>)>;

impl Changelog {
    pub fn new(cache: &CacheSink) -> Changelog {
        Changelog {
            conn: cache.conn(),
            key: cache.changelog_key(),
            cache: cache.clone(),
        }
    }

    /// The changelog's Valkey key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn err(&self) -> impl Fn(redis::RedisError) -> WriteError + '_ {
        move |e| WriteError::Valkey {
            url: self.cache.url().to_string(),
            message: format!("changelog {}: {e}", self.key),
        }
    }

    /// Entries after `after` up to `upto` (inclusive), oldest first, at most `count`.
    pub async fn range(
        &self,
        after: Position,
        upto: Position,
        count: usize,
    ) -> Result<Vec<Item>, WriteError> {
        let mut c = self.conn.clone();
        let raw: Raw = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(format!("({after}"))
            .arg(upto.to_string())
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await
            .map_err(self.err())?;
        Ok(items(raw))
    }

    /// The changelog's last position, `None` while it is empty.
    pub async fn last(&self) -> Result<Option<Position>, WriteError> {
        let mut c = self.conn.clone();
        let raw: Raw = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .map_err(self.err())?;
        Ok(raw.first().and_then(|(id, _)| Position::parse(id)))
    }

    /// Whether the changelog still holds the entry at `p` (a position it handed out).
    pub async fn holds(&self, p: Position) -> Result<bool, WriteError> {
        let mut c = self.conn.clone();
        let raw: Raw = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(p.to_string())
            .arg(p.to_string())
            .query_async(&mut c)
            .await
            .map_err(self.err())?;
        Ok(!raw.is_empty())
    }

    /// The live generation's checkpoints and the changelog's last position, read in one
    /// MULTI: the committer moves both in one, so every change up to that position is
    /// committed up to those checkpoints, and none after it is.
    pub async fn watermark(&self, gen: &str) -> Result<(Option<Position>, Watermark), WriteError> {
        let mut c = self.conn.clone();
        let prefix = self.cache.checkpoint_prefix(gen);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(self.err())?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        if !keys.is_empty() {
            pipe.cmd("MGET").arg(&keys);
        }
        let (last, values): (Raw, Vec<Option<u64>>) = if keys.is_empty() {
            let (last,): (Raw,) = pipe.query_async(&mut c).await.map_err(self.err())?;
            (last, Vec::new())
        } else {
            pipe.query_async(&mut c).await.map_err(self.err())?
        };
        let position = last.first().and_then(|(id, _)| Position::parse(id));
        let checkpoints = keys
            .iter()
            .zip(values)
            // A key that vanished between SCAN and MGET (a dropped generation) has no value.
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v?)))
            .collect();
        let w = Watermark {
            position: position.map(|p| p.to_string()),
            generation: gen.to_string(),
            checkpoints,
        };
        Ok((position, w))
    }
}

/// Decodes raw entries. An entry of an unknown kind (a newer writer) is skipped with a
/// warning: an older reader cannot render it, and skipping it loses no change it knows of.
fn items(raw: Raw) -> Vec<Item> {
    raw.into_iter()
        .filter_map(|(id, fields)| {
            let item = decode(&id, &fields);
            if item.is_none() {
                tracing::warn!(position = %id, ?fields, "changelog entry not understood; skipped");
            }
            item
        })
        .collect()
}

fn decode(id: &str, fields: &[String]) -> Option<Item> {
    let position = Position::parse(id)?;
    let get = |name: &str| {
        fields
            .chunks(2)
            .find(|kv| kv[0] == name)
            .and_then(|kv| kv.get(1))
            .cloned()
    };
    match get("kind")?.as_str() {
        "change" => Some(Item::Change(
            position,
            Change {
                position: id.to_string(),
                story_id: get("story")?,
                // A field that does not parse: the entry is not understood (warned by `items`).
                revision: get("rev")?.parse().ok()?,
                what: get("what")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                // As above: not understood, warned.
                event_time_ms: get("ts")?.parse().ok()?,
                generation: get("gen")?,
            },
        )),
        "generation" => Some(Item::Generation(
            position,
            GenerationSwitch {
                position: id.to_string(),
                generation: get("gen")?,
            },
        )),
        _ => None,
    }
}

/// The feed's routes: `/v1/changes` and the live viewer under `/ui/`.
pub fn router(feed: hub::Feed) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/v1/changes", get(sse::changes))
        .with_state(feed)
        .merge(ui::router())
}
