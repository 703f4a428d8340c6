//! `projector replay`: re-project a range of a stream on top of the current state.
//!
//! Reads with an ordered (ack-less) consumer, projects with the same pure projections and
//! writes with the same graph writer as `run`. Since writes are version-guarded (and an equal
//! version is rewritten), the result converges to what a clean pass with the current
//! projection code gives: the fix-forward tool after a projection bug. Outbound events are
//! never published. Progress is committed with each batch, so an interrupted replay resumes.

use crate::parking::{park, Replayed, ToPark};
use async_nats::jetstream::{
    self,
    consumer::{pull, DeliverPolicy},
};
use engine::error::WriteError;
use engine::sink::cache::CacheSink;
use engine::sink::graph::{CheckpointKey, CheckpointMove, GraphSink, ParkedRecord};
use futures::StreamExt;
use projections::ingest::{ingest, Stored};
use projections::{CacheOp, CompactBatch};
use std::collections::BTreeSet;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;

#[derive(Debug, Error)]
pub enum ReplayError {
    /// The request cannot be served as asked; nothing was written.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl ReplayError {
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ReplayError::BadInput(_))
    }
}

/// Where a replay reads and writes.
pub struct ReplayTarget<'a> {
    pub js: &'a jetstream::Context,
    pub graph: &'a GraphSink,
    pub cache: &'a CacheSink,
    pub generation: &'a str,
    pub cache_prefix: &'a str,
    pub subject_prefix: &'a str,
    /// How a message's parking is decided, as live decides it (D59).
    pub parking: &'a crate::parking::Parking,
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub projector: String,
    pub streams: Vec<String>,
    pub from_seq: u64,
    pub to_seq: Option<u64>,
    pub batch_size: usize,
    /// Stop before the first message whose stream time is after this (temporal rebuilds).
    pub until_ts_ns: Option<i64>,
    /// Rebuilds: progress is the run checkpoint of the target generation (so `run` can
    /// continue from it) and is kept at the end.
    pub as_run_checkpoint: bool,
}

/// One stream's part of a replay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamRange {
    pub stream: String,
    pub from: u64,
    pub to: u64,
    /// Where this run started (after `from` when resuming an interrupted replay).
    pub start: u64,
    /// The stored progress this run continues from (0 for a fresh replay).
    pub progress: u64,
}

/// How a stream's replay ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamReport {
    pub stream: String,
    pub projected: u64,
    /// Messages left out that do not decode (a replay on top: the live projector parked
    /// them) or that the generation holds parked.
    pub undecodable: u64,
    /// Messages a build parked into its generation (as live did, D59).
    pub parked: u64,
    /// Messages an operator discarded: left out.
    pub discarded: u64,
    pub last: u64,
    pub completed: bool,
}

fn bad(msg: String) -> ReplayError {
    ReplayError::BadInput(msg)
}

fn nats(stream: &str, e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Write(WriteError::Nats {
        message: format!("{stream}: {e}"),
    })
}

fn progress_key(req: &ReplayRequest, stream: &str, to: u64) -> CheckpointKey {
    if req.as_run_checkpoint {
        return CheckpointKey::new(&req.projector, stream, 0);
    }
    // Keyed by the request, so the same command resumes and a different range starts afresh.
    CheckpointKey::new(
        &format!("replay~{}~{}-{}", req.projector, req.from_seq, to),
        stream,
        0,
    )
}

/// Checks the request against the streams' bounds before anything is written.
///
/// # Errors
/// [`ReplayError::BadInput`] naming the limit: `--from-seq` past the last sequence or before
/// the first retained one, `--to-seq` below `--from-seq` or past the end.
pub async fn plan(
    t: &ReplayTarget<'_>,
    req: &ReplayRequest,
) -> Result<Vec<StreamRange>, ReplayError> {
    if let Some(to) = req.to_seq {
        if to < req.from_seq {
            return Err(bad(format!(
                "--to-seq {to} is below --from-seq {}",
                req.from_seq
            )));
        }
    }
    if req.from_seq == 0 {
        return Err(bad(
            "--from-seq starts at 1 (stream sequences are 1-based)".into()
        ));
    }
    let mut out = Vec::new();
    for stream in &req.streams {
        let (first, last) = engine::source::bounds(t.js, stream)
            .await
            .map_err(ReplayError::Write)?;
        if last == 0 || req.from_seq > last {
            return Err(bad(format!(
                "--from-seq {} is beyond the last sequence of {stream} ({last})",
                req.from_seq
            )));
        }
        if req.from_seq < first {
            let archive = engine::config::archive_name(stream);
            match engine::source::bounds_if_exists(t.js, &archive).await? {
                Some((afirst, alast)) if alast > 0 && afirst <= req.from_seq => {}
                Some((afirst, _)) => {
                    return Err(bad(format!(
                        "--from-seq {} is before the first sequence {stream} still holds ({first}) and before the first its archive {archive} holds ({afirst}); messages before them were removed by their limits",
                        req.from_seq
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "--from-seq {} is before the first sequence {stream} still holds ({first}); messages before it were removed by the stream's limits (or consumed, on a work-queue stream), and there is no archive",
                        req.from_seq
                    )))
                }
            }
        }
        let to = match req.to_seq {
            Some(to) if to > last => {
                return Err(bad(format!(
                    "--to-seq {to} is beyond the last sequence of {stream} ({last})"
                )))
            }
            Some(to) => to,
            None => last,
        };
        let stored = t
            .graph
            .checkpoint(t.generation, &progress_key(req, stream, to))
            .await?
            // No stored progress: a fresh replay of this range.
            .unwrap_or(0);
        let start = if stored >= req.from_seq {
            stored + 1
        } else {
            req.from_seq
        };
        out.push(StreamRange {
            stream: stream.clone(),
            from: req.from_seq,
            to,
            start,
            progress: stored,
        });
    }
    Ok(out)
}

/// Where the messages of a range are read from: the archive for what the live stream no
/// longer holds, then the live stream. Each part is (stream to read, last sequence).
async fn segments(
    t: &ReplayTarget<'_>,
    range: &StreamRange,
) -> Result<Vec<(String, u64)>, ReplayError> {
    let (live_first, _) = engine::source::bounds(t.js, &range.stream).await?;
    if range.start >= live_first {
        return Ok(vec![(range.stream.clone(), range.to)]);
    }
    let archive = engine::config::archive_name(&range.stream);
    let Some((_, alast)) = engine::source::bounds_if_exists(t.js, &archive).await? else {
        return Err(bad(format!(
            "{} no longer holds sequence {} (it starts at {live_first}) and has no archive",
            range.stream, range.start
        )));
    };
    let end = alast.min(range.to);
    let mut out = vec![(archive.clone(), end)];
    if end < range.to {
        if live_first > end + 1 {
            return Err(bad(format!(
                "{archive} reaches sequence {end} but {} starts at {live_first}: sequences {}..{} are in neither (is the archive's mirror lagging? see `projector streams status`)",
                range.stream,
                end + 1,
                live_first - 1
            )));
        }
        out.push((range.stream.clone(), range.to));
    }
    Ok(out)
}

async fn open(
    t: &ReplayTarget<'_>,
    read_from: &str,
    start: u64,
) -> Result<jetstream::consumer::pull::Ordered, ReplayError> {
    let stream =
        t.js.get_stream(read_from)
            .await
            .map_err(|e| nats(read_from, e))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats(read_from, e))?;
    consumer.messages().await.map_err(|e| nats(read_from, e))
}

/// Replays one stream range. `on_progress(done_seq)` is called after each committed batch.
///
/// Messages keep the identity of the stream they were published to (`range.stream`), also
/// when read from its archive: a mirror keeps sequences and timestamps, so the versions and
/// ids are those of a run that read the live stream.
pub async fn replay_stream(
    t: &ReplayTarget<'_>,
    req: &ReplayRequest,
    range: &StreamRange,
    mut on_progress: impl FnMut(u64),
    stop: &watch::Receiver<bool>,
) -> Result<StreamReport, ReplayError> {
    let mut report = StreamReport {
        stream: range.stream.clone(),
        last: range.start.saturating_sub(1),
        ..Default::default()
    };
    let key = progress_key(req, &range.stream, range.to);
    if range.start > range.to {
        report.completed = true;
        if !req.as_run_checkpoint {
            t.graph.delete_checkpoint(t.generation, &key).await?;
        }
        return Ok(report);
    }
    let mut parts = segments(t, range).await?.into_iter();
    let (mut read_from, mut part_end) = parts.next().expect("at least one segment");
    if read_from != range.stream {
        tracing::info!(stream = %range.stream, archive = %read_from, until = part_end, "reading from the archive: the stream no longer holds the start of the range");
    }
    let mut messages = open(t, &read_from, range.start).await?;
    let mut expected_progress = range.progress;
    let mut done = false;
    while !done {
        if *stop.borrow() {
            return Ok(report);
        }
        let mut batch = CompactBatch::default();
        let mut parked = Vec::new();
        let mut stories = BTreeSet::new();
        let mut last = report.last;
        // Stream time of the message at `last` (0: none read in this batch).
        let mut last_ts = 0i64;
        let mut n = 0;
        while n < req.batch_size {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(nats(&read_from, e)),
                Ok(None) => return Err(nats(&read_from, "ordered consumer ended")),
                Err(_) => return Err(nats(&read_from, "no message within 10s while replaying")),
            };
            let info = msg.info().map_err(|e| nats(&read_from, e))?;
            let seq = info.stream_sequence;
            let ts = info.published.unix_timestamp_nanos() as i64;
            if seq > range.to || req.until_ts_ns.is_some_and(|until| ts > until) {
                done = true;
                break;
            }
            let ct = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Content-Type"))
                .map(|v| v.as_str());
            let stored = Stored {
                stream: &range.stream,
                seq,
                ts_ns: ts,
                subject: &msg.subject,
                content_type: ct,
                payload: &msg.payload,
            };
            let ingested = ingest(t.subject_prefix, &stored);
            match t
                .parking
                .decide(&req.projector, &range.stream, seq, ingested)
            {
                Replayed::Project(projection) => {
                    batch.extend(&projection.graph);
                    for CacheOp::RefreshContext { story_id, .. } in &projection.cache {
                        stories.insert(story_id.clone());
                    }
                    report.projected += 1;
                }
                Replayed::Skip { discarded: true } => report.discarded += 1,
                Replayed::Skip { discarded: false } => {
                    tracing::debug!(stream = %range.stream, seq, "skipping a message the live projector parked");
                    report.undecodable += 1;
                }
                p @ Replayed::Park { .. } => {
                    let Some(prefix) = t.parking.dlq_subject_prefix() else {
                        unreachable!("only a build parks");
                    };
                    let m = ToPark {
                        projector: &req.projector,
                        stream: &range.stream,
                        seq,
                        ts_ns: ts,
                        subject: &msg.subject,
                        content_type: ct,
                        payload: &msg.payload,
                    };
                    parked.push(park(t.js, prefix, &m, p).await?);
                    report.parked += 1;
                }
            }
            last = seq;
            last_ts = ts;
            n += 1;
            if seq >= part_end {
                match parts.next() {
                    Some((next_from, next_end)) => {
                        // The archive's part is done: the rest comes from the live stream.
                        read_from = next_from;
                        part_end = next_end;
                        messages = open(t, &read_from, seq + 1).await?;
                        break;
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            }
        }
        if last > report.last {
            let mv = CheckpointMove {
                key: key.clone(),
                expected: expected_progress,
                seq: last,
                ts_ns: last_ts,
                back: false,
            };
            commit_with_retry(t, &batch, &parked, &mv).await?;
            expected_progress = last;
            report.last = last;
            if !stories.is_empty() {
                let ids: Vec<String> = stories.into_iter().collect();
                let contexts = t.graph.story_contexts(t.generation, &ids).await?;
                t.cache
                    .put_contexts(t.generation, t.cache_prefix, &contexts, false)
                    .await?;
            }
            on_progress(last);
        }
    }
    report.completed = true;
    if !req.as_run_checkpoint {
        t.graph.delete_checkpoint(t.generation, &key).await?;
    }
    Ok(report)
}

/// Commits a replay batch, retrying transient errors (deadlocks with the live workers,
/// a Neo4j restart) with backoff; permanent ones end the replay.
async fn commit_with_retry(
    t: &ReplayTarget<'_>,
    batch: &CompactBatch,
    parked: &[ParkedRecord],
    mv: &CheckpointMove,
) -> Result<(), ReplayError> {
    // A moved checkpoint is not retried: another replay of this generation is running.
    engine::retry::Retrier::bounded(engine::retry::Backoff::default(), 30)
        .run("commit replayed batch", || {
            t.graph
                .commit_batch(t.generation, batch, parked, &[], mv, false)
        })
        .await
        .map_err(ReplayError::from)
}
