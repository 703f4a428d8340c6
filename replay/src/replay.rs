//! `projector replay`: re-project a range of a stream on top of the current state.
//!
//! Reads with an ordered (ack-less) consumer, projects with the same pure projections and
//! writes with the same graph writer as `run`. Since writes are version-guarded (and an equal
//! version is rewritten), the result converges to what a clean pass with the current
//! projection code gives: the fix-forward tool after a projection bug. Outbound events are
//! never published. Progress is committed with each batch, so an interrupted replay resumes.

use async_nats::jetstream::{
    self,
    consumer::{pull, DeliverPolicy},
};
use engine::error::WriteError;
use engine::sink::cache::CacheSink;
use engine::sink::graph::{CheckpointKey, CheckpointMove, GraphSink};
use futures::StreamExt;
use projections::{CacheOp, CompactBatch, Envelope};
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
    /// Messages that do not decode: the live projector parked them; a replay skips them.
    pub undecodable: u64,
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
            return Err(bad(format!(
                "--from-seq {} is before the first sequence {stream} still holds ({first}); messages before it were removed by the stream's limits (or consumed, on a work-queue stream)",
                req.from_seq
            )));
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

/// Replays one stream range. `on_progress(done_seq)` is called after each committed batch.
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
    let stream =
        t.js.get_stream(&range.stream)
            .await
            .map_err(|e| nats(&range.stream, e))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: range.start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&range.stream, e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats(&range.stream, e))?;
    let mut expected_progress = range.progress;
    let mut done = false;
    while !done {
        if *stop.borrow() {
            return Ok(report);
        }
        let mut batch = CompactBatch::default();
        let mut stories = BTreeSet::new();
        let mut last = report.last;
        let mut n = 0;
        while n < req.batch_size {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(nats(&range.stream, e)),
                Ok(None) => return Err(nats(&range.stream, "ordered consumer ended")),
                Err(_) => return Err(nats(&range.stream, "no message within 10s while replaying")),
            };
            let info = msg.info().map_err(|e| nats(&range.stream, e))?;
            let seq = info.stream_sequence;
            let ts = info.published.unix_timestamp_nanos() as i64;
            if seq > range.to || req.until_ts_ns.is_some_and(|until| ts > until) {
                done = true;
                break;
            }
            let subject = msg.subject.to_string();
            let ct = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Content-Type"))
                .map(|v| v.as_str().to_string());
            let catalog = subject.strip_prefix(t.subject_prefix).unwrap_or(&subject);
            match projections::decode(catalog, ct.as_deref(), &msg.payload) {
                Ok(ev) => {
                    let env = Envelope::new(&range.stream, seq, catalog, ts, &msg.payload)
                        .with_content_type(ct.as_deref());
                    let p = projections::project(&env, &ev);
                    batch.extend(&p.graph);
                    for CacheOp::RefreshContext { story_id, .. } in &p.cache {
                        stories.insert(story_id.clone());
                    }
                    report.projected += 1;
                }
                Err(e) => {
                    tracing::debug!(stream = %range.stream, seq, error = %e, "skipping a message that does not decode (parked by the live projector)");
                    report.undecodable += 1;
                }
            }
            last = seq;
            n += 1;
            if seq == range.to {
                done = true;
                break;
            }
        }
        if last > report.last {
            let mv = CheckpointMove {
                key: key.clone(),
                fence_live: false,
                expected: expected_progress,
                seq: last,
            };
            commit_with_retry(t, &batch, &mv).await?;
            expected_progress = last;
            report.last = last;
            if !stories.is_empty() {
                let ids: Vec<String> = stories.into_iter().collect();
                let contexts = t.graph.story_contexts(t.generation, &ids).await?;
                t.cache.put_contexts(t.cache_prefix, &contexts).await?;
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
    mv: &CheckpointMove,
) -> Result<(), ReplayError> {
    let backoff = engine::retry::Backoff::default();
    let mut attempt = 0;
    loop {
        match t
            .graph
            .commit_batch(t.generation, batch, &[], &[], mv)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e)
                if e.is_transient()
                    && attempt < 30
                    && !matches!(e, WriteError::CheckpointMoved { .. }) =>
            {
                tracing::warn!(error = %e, attempt = attempt + 1, "transient error during replay; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
