//! Rebuilds: a full deterministic replay into a new generation beside the live one, then an
//! atomic switch; and temporal generations (the state as of a sequence or a time).

use crate::replay::{
    replay_stream, ReplayError, ReplayRequest, ReplayTarget, StreamRange, StreamReport,
};
use engine::sink::graph::CheckpointKey;
use tokio::sync::watch;

/// The point in the past a temporal rebuild stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Every stream up to and including this sequence.
    Seq(u64),
    /// Messages whose stream time is at or before this (nanoseconds since the epoch).
    Time(i64),
}

impl AsOf {
    /// Parses `seq:N` or an RFC 3339 time.
    ///
    /// ```
    /// use replay::rebuild::AsOf;
    /// assert_eq!(AsOf::parse("seq:42").unwrap(), AsOf::Seq(42));
    /// assert_eq!(AsOf::parse("1970-01-01T00:00:01Z").unwrap(), AsOf::Time(1_000_000_000));
    /// assert!(AsOf::parse("yesterday").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<AsOf, String> {
        if let Some(n) = s.strip_prefix("seq:") {
            return n
                .parse()
                .map(AsOf::Seq)
                .map_err(|_| format!("--as-of {s:?}: expected seq:N with N a positive integer"));
        }
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| AsOf::Time(t.unix_timestamp_nanos() as i64))
            .map_err(|_| {
                format!("--as-of {s:?}: expected an RFC 3339 time (2026-01-31T12:00:00Z) or seq:N")
            })
    }
}

/// Replays every stream of a projector from its first sequence into `t.generation`, with the
/// run checkpoints as progress (so `run` can continue and an interrupted build resumes).
///
/// Up to `parallel` streams replay at once: while one waits for its commit another fetches
/// and projects. Each stream keeps its own order; projections do not depend on the order
/// between streams (the live workers run them concurrently too), so the graph, and its
/// hash, is the same for any `parallel`. Reports come back in `streams` order.
#[allow(clippy::too_many_arguments)]
pub async fn build(
    t: &ReplayTarget<'_>,
    projector: &str,
    streams: &[String],
    as_of: Option<AsOf>,
    batch_size: usize,
    parallel: usize,
    on_progress: impl FnMut(&str, u64, u64),
    stop: &watch::Receiver<bool>,
) -> Result<Vec<StreamReport>, ReplayError> {
    use futures::StreamExt;
    // Every stream is checked before any is replayed: a refusal writes nothing.
    let mut jobs = Vec::new();
    for stream in streams {
        let (first, last) = engine::source::bounds(t.js, stream).await?;
        let to = match as_of {
            Some(AsOf::Seq(n)) => n.min(last),
            _ => last,
        };
        if last == 0 {
            continue;
        }
        // A rebuild needs the whole history: from sequence 1, in the stream or its archive.
        if first > 1 {
            let archive = engine::config::archive_name(stream);
            match engine::source::bounds_if_exists(t.js, &archive).await? {
                Some((1, alast)) if alast > 0 => {}
                Some((afirst, _)) => {
                    return Err(ReplayError::BadInput(format!(
                        "cannot rebuild {stream}: it holds sequences from {first} and its archive {archive} from {afirst}; the history before is gone, and a partial rebuild would be wrong (raise the archive's limits, or accept the loss with `projector replay` on top of the live generation)"
                    )))
                }
                None => {
                    return Err(ReplayError::BadInput(format!(
                        "cannot rebuild {stream}: it holds sequences from {first} only and has no archive (enable [archive] in the config)"
                    )))
                }
            }
        }
        let req = ReplayRequest {
            projector: projector.to_string(),
            streams: vec![stream.clone()],
            from_seq: 1,
            to_seq: Some(to),
            batch_size,
            until_ts_ns: match as_of {
                Some(AsOf::Time(t)) => Some(t),
                _ => None,
            },
            as_run_checkpoint: true,
        };
        let stored = t
            .graph
            .checkpoint(t.generation, &CheckpointKey::new(projector, stream, 0))
            .await?
            // No checkpoint: nothing of this stream is in the generation yet.
            .unwrap_or(0);
        let range = StreamRange {
            stream: stream.clone(),
            from: req.from_seq,
            to,
            start: if stored >= req.from_seq {
                stored + 1
            } else {
                req.from_seq
            },
            progress: stored,
        };
        jobs.push((req, range));
    }
    let progress = std::sync::Mutex::new(on_progress);
    let mut done: Vec<(usize, StreamReport)> = futures::stream::iter(jobs.iter().enumerate())
        .map(|(i, (req, range))| {
            let progress = &progress;
            async move {
                let report = replay_stream(
                    t,
                    req,
                    range,
                    |n| {
                        (progress.lock().unwrap_or_else(|e| e.into_inner()))(
                            &range.stream,
                            n,
                            range.to,
                        )
                    },
                    stop,
                )
                .await?;
                Ok::<_, ReplayError>((i, report))
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}
