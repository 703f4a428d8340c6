//! What a failed commit does, decided by [`WriteError::action`] and the [`Stage`] it
//! failed at:
//!
//! - `Retry` reaches here only when shutting down: nothing is acked, all is redelivered;
//! - `Reposition`: the checkpoints are read again and every source positioned anew;
//! - `Isolate`, before the Neo4j commit: the group's events are committed one per
//!   transaction, in route order, to find the offender; it is parked (with the later events
//!   of its story) under `--on-error park`, or halts the projector naming it under
//!   `--on-error halt`. After the Neo4j commit the events are in the graph: isolating would
//!   commit them a second time, so it halts;
//! - `Halt`: a bug of ours; no event is to blame.
//!
//! Also here: holes in a stream (`--on-gap`) and streams recreated under a checkpoint.

use super::commit::{Failed, Stage};
use super::fetch::Anomaly;
use super::route::{blocked_reason, Item, Route};
use super::{ack, OnError, OnGap, Worker, WorkerError};
use crate::error::{Action, WriteError};
use crate::sink::graph::{CheckpointMove, Commit};
use projections::CompactBatch;
use std::collections::BTreeMap;
use std::time::Instant;
use tracing::Instrument;

impl Worker {
    /// Commits a routed group: acks it once committed, or recovers as its failure says.
    pub(super) async fn commit(
        &mut self,
        items: Vec<Item>,
        started: Instant,
    ) -> Result<(), WorkerError> {
        let mut items = self.skip_elsewhere(items).await;
        if self.cfg.on_error == OnError::Halt {
            // `--on-error halt` covers input too (a payload that does not decode, an unknown
            // subject, a story blocked by an earlier run's parked event): what comes before
            // the first such event commits, and the run halts on it with nothing parked.
            if let Some(k) = items
                .iter()
                .position(|it| matches!(it.route, Route::Park { .. }))
            {
                let rest = items.split_off(k);
                if !items.is_empty() {
                    self.commit_routed(items, started).await?;
                    if self.reposition {
                        return Ok(());
                    }
                }
                let it = &rest[0];
                let Route::Park { kind, reason, .. } = &it.route else {
                    unreachable!("found as a Park route above");
                };
                return Err(self.halted(it, &format!("{kind}: {reason}")));
            }
        }
        self.commit_routed(items, started).await
    }

    /// Commits routed items (no `--on-error halt` check): acks them once committed, or
    /// recovers as the failure says.
    async fn commit_routed(
        &mut self,
        items: Vec<Item>,
        started: Instant,
    ) -> Result<(), WorkerError> {
        if items.is_empty() {
            return Ok(());
        }
        let span = tracing::info_span!("group", worker = %self.name, events = items.len());
        match self.commit_group(&items).instrument(span).await {
            Ok(()) => {
                ack::committed(self, &items).await;
                self.committed(&items, started);
                Ok(())
            }
            Err(f) => self.recover(items, f).await,
        }
    }

    /// A stream whose part of the group is only other partitions' events, with more to
    /// come, needs no transaction: its events are acked and its position moves; the next
    /// commit stores the checkpoint past them (re-reading them after a crash only skips
    /// them again). At the stream's end the checkpoint is stored as usual.
    async fn skip_elsewhere(&mut self, items: Vec<Item>) -> Vec<Item> {
        let mut only_elsewhere: BTreeMap<usize, (bool, u64, u64)> = BTreeMap::new();
        for it in &items {
            let e = only_elsewhere.entry(it.src).or_insert((true, 0, 0));
            e.0 &= matches!(it.route, Route::Elsewhere | Route::Discarded);
            if it.seq >= e.1 {
                (e.1, e.2) = (it.seq, it.pending);
            }
        }
        let skip: BTreeMap<usize, (u64, u64)> = only_elsewhere
            .into_iter()
            .filter(|(_, (only, _, pending))| *only && *pending > 0)
            .map(|(src, (_, last, pending))| (src, (last, pending)))
            .collect();
        if skip.is_empty() {
            return items;
        }
        let (skipped, kept): (Vec<Item>, Vec<Item>) =
            items.into_iter().partition(|it| skip.contains_key(&it.src));
        ack::committed(self, &skipped).await;
        for (src, (last, pending)) in skip {
            self.sources[src].checkpoint = last;
            self.set_lag(src, pending);
        }
        kept
    }

    async fn recover(&mut self, items: Vec<Item>, f: Failed) -> Result<(), WorkerError> {
        let e = f.error;
        match (e.action(), f.stage) {
            (Action::Reposition, _) => {
                if matches!(e, WriteError::GenerationMoved { .. }) {
                    tracing::info!(worker = %self.name, error = %e, "a rebuilt generation was promoted; switching to it, nothing acked");
                } else {
                    tracing::warn!(worker = %self.name, error = %e, "checkpoint moved under this worker (another writer?); re-reading it, nothing acked");
                }
                self.reposition = true;
                Ok(())
            }
            // Retriable errors come back only when shutting down.
            (Action::Retry, _) => {
                tracing::info!(worker = %self.name, error = %e, stage = ?f.stage, "stopping with a group uncommitted; it will be redelivered");
                Ok(())
            }
            (Action::Isolate, Stage::DeadLetters | Stage::Graph) => {
                tracing::warn!(worker = %self.name, error = %e, events = items.len(), "permanent write error in a group; committing its events one by one to isolate the offender");
                self.isolate(items).await
            }
            (Action::Isolate, stage) => Err(self.fatal_after_commit(&items, stage, &e)),
            (Action::Halt, _) => Err(self.bug(&items, &e)),
        }
    }

    /// One event per transaction, in route order; the offender is parked (or halts).
    async fn isolate(&mut self, items: Vec<Item>) -> Result<(), WorkerError> {
        for mut item in items {
            // An event refused earlier in this group blocks its story's later events on its
            // stream (the rule's state holds it since it was refused, below).
            if let (Route::Project { .. }, Some(story)) = (&item.route, item.story()) {
                let stream = &self.sources[item.src].stream;
                let blocker = self
                    .sh
                    .blocked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .blocker(stream, story, item.seq);
                if let Some(b) = blocker.filter(|b| b.seq < item.seq) {
                    item.route = Route::Park {
                        story_id: Some(story.to_string()),
                        kind: "story_blocked".into(),
                        reason: blocked_reason(story, &b.id),
                        blocked_by: Some(b.id),
                        refused: false,
                    };
                }
            }
            let single = vec![item];
            let Err(f) = self.commit_group(&single).await else {
                self.done(&single).await;
                continue;
            };
            let mut item = single.into_iter().next().expect("one item");
            match (f.error.action(), f.stage) {
                (Action::Isolate, Stage::Graph) if matches!(item.route, Route::Project { .. }) => {}
                (Action::Reposition, _) => {
                    self.reposition = true;
                    return Ok(());
                }
                (Action::Retry, _) => return Ok(()),
                (Action::Isolate, Stage::Cache | Stage::Outbox) => {
                    return Err(self.fatal_after_commit(&[item], f.stage, &f.error))
                }
                (Action::Halt, _) => return Err(self.bug(&[item], &f.error)),
                // A dead letter or a parked record that cannot be written.
                (Action::Isolate, _) => return Err(self.cannot_park(&item, &f.error)),
            }
            let e = f.error;
            if self.cfg.on_error == OnError::Halt {
                return Err(self.halted(&item, &e.to_string()));
            }
            tracing::error!(worker = %self.name, stream = %self.sources[item.src].stream, seq = item.seq, subject = %item.subject, story = ?item.story(), error = %e, "write refused; parking the event");
            let story = item.story().map(str::to_string);
            let stream = self.sources[item.src].stream.clone();
            {
                let mut b = self.sh.blocked.lock().unwrap_or_else(|e| e.into_inner());
                // Recorded with the parked record, so every generation's build parks it too.
                b.rule(&stream, item.seq, projections::blocking::Ruling::REFUSED);
                if let Some(s) = &story {
                    b.block(
                        &stream,
                        s,
                        projections::blocking::Blocker {
                            id: projections::blocking::parked_id(
                                &self.cfg.projector,
                                &stream,
                                item.seq,
                            ),
                            seq: item.seq,
                        },
                    );
                }
            }
            item.route = Route::Park {
                story_id: story,
                kind: e.kind().to_string(),
                reason: e.to_string(),
                blocked_by: None,
                refused: true,
            };
            let single = vec![item];
            if let Err(f) = self.commit_group(&single).await {
                return match f.error.action() {
                    Action::Reposition => {
                        self.reposition = true;
                        Ok(())
                    }
                    Action::Retry => Ok(()),
                    _ => Err(self.cannot_park(&single[0], &f.error)),
                };
            }
            self.done(&single).await;
        }
        Ok(())
    }

    async fn done(&self, items: &[Item]) {
        ack::committed(self, items).await;
        self.committed(items, Instant::now());
    }

    fn mark_halted(&self, srcs: impl IntoIterator<Item = usize>, why: &str) {
        for src in srcs {
            self.sh.health.update(&self.sources[src].name, |h| {
                h.halted = Some(why.to_string())
            });
        }
    }

    /// `--on-error halt`: the offending event, named, with what is wrong with it.
    fn halted(&self, item: &Item, e: &str) -> WorkerError {
        let stream = self.sources[item.src].stream.clone();
        tracing::error!(worker = %self.name, stream = %stream, seq = item.seq, subject = %item.subject, story = ?item.story(), error = %e, "halting as --on-error halt says");
        let err = WorkerError::Halted {
            stream,
            seq: item.seq,
            subject: item.subject.clone(),
            error: e.to_string(),
        };
        self.mark_halted([item.src], &err.to_string());
        err
    }

    /// An event could not be parked (its dead letter or parked record refused).
    fn cannot_park(&self, item: &Item, e: &WriteError) -> WorkerError {
        let stream = self.sources[item.src].stream.clone();
        tracing::error!(worker = %self.name, stream = %stream, seq = item.seq, subject = %item.subject, error = %e, "cannot park the event; halting, nothing acked");
        let err = WorkerError::CannotPark {
            stream,
            seq: item.seq,
            subject: item.subject.clone(),
            error: e.to_string(),
        };
        self.mark_halted([item.src], &err.to_string());
        err
    }

    /// A permanent error after the Neo4j commit: the graph holds the events, so they are
    /// neither isolated nor parked (that would commit them twice).
    fn fatal_after_commit(&self, items: &[Item], stage: Stage, e: &WriteError) -> WorkerError {
        let streams = self.streams_of(items);
        tracing::error!(worker = %self.name, streams = %streams, ?stage, error = %e, "permanent error after the Neo4j commit; halting, nothing acked (the graph holds the events; a restart repairs Valkey and drains the outbox)");
        let err = WorkerError::AfterCommit {
            streams,
            stage: format!("{stage:?}"),
            error: e.to_string(),
        };
        self.mark_halted(items.iter().map(|i| i.src), &err.to_string());
        err
    }

    /// A bug of ours (a row or context of the wrong shape): no event is to blame.
    fn bug(&self, items: &[Item], e: &WriteError) -> WorkerError {
        let streams = self.streams_of(items);
        tracing::error!(worker = %self.name, streams = %streams, error = %e, "projector read something of the wrong shape (a bug); halting, nothing acked");
        let err = WorkerError::Fatal {
            stream: streams,
            error: format!("{e} (a bug of projector, not of an event: please report it)"),
        };
        self.mark_halted(items.iter().map(|i| i.src), &err.to_string());
        err
    }

    fn streams_of(&self, items: &[Item]) -> String {
        let mut s: Vec<&str> = items
            .iter()
            .map(|i| self.sources[i.src].stream.as_str())
            .collect();
        s.sort_unstable();
        s.dedup();
        s.join(",")
    }

    /// A stream's part of the group ended early: position it again, after recording a hole.
    pub(super) async fn handle_anomaly(
        &mut self,
        src: usize,
        anomaly: Anomaly,
    ) -> Result<(), WorkerError> {
        let name = self.sources[src].name.clone();
        match anomaly {
            Anomaly::OutOfOrder { expected, got } => {
                tracing::warn!(worker = %name, expected, got, "delivery out of order (a redelivery); repositioning the consumer at the checkpoint");
            }
            Anomaly::Broken(why) => {
                tracing::warn!(worker = %name, error = %why, "consumer stream error; repositioning");
            }
            // Every event of the archived range before it is committed (the group ended at
            // the first one past it): the live stream holds the rest.
            Anomaly::ArchiveDone => self.leave_archive(src).await?,
            Anomaly::Gap { from, to } if from == self.sources[src].checkpoint + 1 => {
                self.handle_gap(src, from, to).await?
            }
            // The events before the hole are not committed (an interrupted group): read
            // again from the checkpoint; the hole is found again behind them.
            Anomaly::Gap { from, .. } => {
                tracing::warn!(worker = %name, from, checkpoint = self.sources[src].checkpoint, "a hole behind uncommitted events; repositioning at the checkpoint");
            }
        }
        self.position(src).await
    }

    async fn handle_gap(&mut self, src: usize, from: u64, to: u64) -> Result<(), WorkerError> {
        // Only a range the archive cannot serve either is lost.
        if self.sources[src].archive_until.is_none()
            && self.heal_from_archive(src, from, to).await?
        {
            return Ok(());
        }
        let (js, stream) = (self.sh.js.clone(), self.sources[src].stream.clone());
        let labels = [self.cfg.projector.as_str(), stream.as_str()];
        let first = match crate::source::bounds(&js, &stream).await {
            Ok((first, _)) => first,
            Err(e) => {
                // Only the message's "stream now starts at" figure is missing.
                tracing::warn!(worker = %self.name, error = %e, "cannot read the stream's bounds for the gap report");
                0
            }
        };
        self.sh.metrics.gaps.with_label_values(&labels).inc();
        self.sh
            .metrics
            .lost_messages
            .with_label_values(&labels)
            .inc_by(to - from + 1);
        let (graph, gen) = (&self.sh.graph, &self.cfg.generation);
        let key = self.sources[src].key.clone();
        let halt = self.cfg.on_gap == OnGap::Halt;
        let ckpt = self.sources[src].checkpoint;
        self.retrier(src)
            .run("record lost range", || {
                graph.record_lost_range(gen, &key, from, to, halt, ckpt)
            })
            .await
            .map_err(|e| self.fatal(src, e))?;
        if halt {
            let err = WorkerError::Gap {
                projector: self.cfg.projector.clone(),
                stream,
                from,
                to,
                first,
            };
            tracing::error!(worker = %self.sources[src].name, from, to, first, "lost range detected; halting");
            self.mark_halted([src], &err.to_string());
            return Err(err);
        }
        tracing::error!(worker = %self.sources[src].name, from, to, "lost range detected and recorded; continuing after it as --on-gap continue says");
        // Move both checkpoints past the hole, or the next start would find it again.
        self.move_checkpoint(src, "move checkpoint past the hole", to, false)
            .await
    }

    /// Moves one stream's checkpoints (Neo4j, then Valkey) to `to` with nothing else written.
    pub(super) async fn move_checkpoint(
        &mut self,
        src: usize,
        what: &str,
        to: u64,
        back: bool,
    ) -> Result<(), WorkerError> {
        let s = &self.sources[src];
        let mv = CheckpointMove {
            key: s.key.clone(),
            expected: s.stored,
            seq: to,
            // Nothing was read at `to` (a hole, a reset stream): no time to compare later.
            ts_ns: 0,
            back,
        };
        let (graph, cache) = (&self.sh.graph, &self.sh.cache);
        let (gen, prefix) = (&self.cfg.generation, &self.cfg.cache_prefix);
        let empty = CompactBatch::default();
        let fence_live = self.cfg.follow_live;
        self.retrier(src)
            .run(what, || async {
                let c = Commit {
                    batch: &empty,
                    parked: &[],
                    outbox: &[],
                    moves: std::slice::from_ref(&mv),
                    fence_live,
                };
                graph.commit(gen, &c).await?;
                cache.apply(gen, prefix, &[], &mv.key, to).await
            })
            .await
            .map_err(|e| self.fatal(src, e))?;
        self.sources[src].checkpoint = to;
        self.sources[src].stored = to;
        Ok(())
    }

    /// The stored checkpoint is past the stream's last sequence, or at a message of another
    /// time: the stream was deleted and recreated, or restored from an older backup. Reading
    /// from checkpoint + 1 would skip the new stream's messages up to the old checkpoint in
    /// silence, so halt, unless the operator accepted it (`--accept-stream-reset`): then read
    /// the stream from its start. `times`: (recorded, found) stream times of the message at
    /// the checkpoint.
    pub(super) async fn stream_reset(
        &mut self,
        src: usize,
        first: u64,
        last: u64,
        times: Option<(i64, i64)>,
    ) -> Result<(), WorkerError> {
        let (stream, name) = (
            self.sources[src].stream.clone(),
            self.sources[src].name.clone(),
        );
        let checkpoint = self.sources[src].checkpoint;
        self.sh
            .metrics
            .stream_resets
            .with_label_values(&[&self.cfg.projector, &stream])
            .inc();
        if self.cfg.accept_stream_reset {
            let to = first.saturating_sub(1);
            tracing::warn!(worker = %name, checkpoint, stream_first = first, stream_last = last, "stream reset accepted (--accept-stream-reset): reading the stream from its first sequence");
            return self
                .move_checkpoint(src, "move checkpoint to the reset stream's start", to, true)
                .await;
        }
        let err = WorkerError::StreamReset {
            projector: self.cfg.projector.clone(),
            stream,
            checkpoint,
            first,
            last,
            why: match times {
                None => "past the stream's last sequence".into(),
                Some((recorded, found)) => format!(
                    "at a message of another time (stream time {found} ns, {recorded} ns when committed)"
                ),
            },
        };
        tracing::error!(worker = %name, checkpoint, stream_first = first, stream_last = last, "stream reset: checkpoint past the stream's last sequence; halting");
        self.mark_halted([src], &err.to_string());
        Err(err)
    }
}
