//! The committer: one group of every stream's messages, committed in this order, each step
//! confirmed before the next:
//!
//! 1. dead letters of the parked events (confirmed by the dead-letter stream);
//! 2. **one** Neo4j transaction: every stream's checkpoint move, the graph writes, the
//!    parked records and the outbox entries;
//! 3. Valkey: the touched stories' contexts, re-rendered from the committed graph, with every
//!    stream's Valkey checkpoint, in one MULTI;
//! 4. the outbound events, published from the outbox (deduplicated by message id).
//!
//! A failure says at which [`Stage`] it happened: before the Neo4j commit nothing of the
//! group is written; after it, the graph holds the group and only the later steps remain.

use super::route::{Item, Route};
use super::Worker;
use super::{ack, node_locks};
use crate::dlq::{self, DeadLetter};
use crate::error::WriteError;
use crate::sink::graph::{CheckpointKey, CheckpointMove, Commit, OutboxEntry, ParkedRecord};
use projections::{CacheOp, CompactBatch};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// The step of a commit that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Publishing dead letters: nothing of the group is in the graph.
    DeadLetters,
    /// The Neo4j transaction: rolled back, nothing of the group is in the graph.
    Graph,
    /// The Valkey step: the graph and its checkpoints hold the group.
    Cache,
    /// Publishing the outbox: graph and cache hold the group.
    Outbox,
}

/// A commit that did not complete, and where it stopped.
#[derive(Debug)]
pub(super) struct Failed {
    pub stage: Stage,
    pub error: WriteError,
}

impl Stage {
    fn failed(self) -> impl FnOnce(WriteError) -> Failed {
        move |error| Failed { stage: self, error }
    }
}

impl Worker {
    /// Commits a group of items (several streams, in route order) as one unit.
    pub(super) async fn commit_group(&mut self, items: &[Item]) -> Result<(), Failed> {
        // Each stream's last sequence (and its stream time) in this group.
        let mut ends: BTreeMap<usize, (u64, i64)> = BTreeMap::new();
        for it in items {
            let e = ends.entry(it.src).or_insert((it.seq, it.ts_ns));
            if it.seq >= e.0 {
                *e = (it.seq, it.ts_ns);
            }
        }
        let parked = self
            .publish_dead_letters(items)
            .await
            .map_err(Stage::DeadLetters.failed())?;
        let t0 = Instant::now();
        let mut batch = CompactBatch::default();
        let mut stories: BTreeSet<String> = BTreeSet::new();
        let mut outbox = Vec::new();
        for it in items {
            if let Route::Project { projection, .. } = &it.route {
                batch.extend(&projection.graph);
                for CacheOp::RefreshContext { story_id, .. } in &projection.cache {
                    stories.insert(story_id.clone());
                }
                if self.cfg.publish_outbound {
                    outbox.extend(projection.outbound.iter().map(|o| OutboxEntry {
                        stream: self.sources[it.src].stream.clone(),
                        event: o.clone(),
                    }));
                }
            }
        }
        // A parked event's story: its view now says "blocked" (its revision moves with the
        // parked record).
        stories.extend(parked.iter().filter_map(|p| p.story_id.clone()));
        let mut shared = node_locks::shared_nodes(&batch);
        shared.extend(stories.iter().map(|s| format!("Story:{s}")));
        let moves: Vec<CheckpointMove> = ends
            .iter()
            .map(|(&src, &(seq, ts_ns))| CheckpointMove {
                key: self.sources[src].key.clone(),
                expected: self.sources[src].stored,
                seq,
                ts_ns,
                back: false,
            })
            .collect();
        let (gen, graph, gate, locks) = (
            self.cfg.generation.clone(),
            self.sh.graph.clone(),
            self.sh.graph_gate.clone(),
            self.sh.node_locks.clone(),
        );
        let fence_live = self.cfg.follow_live;
        self.group_retrier()
            .run_waiting(
                "commit to Neo4j",
                || async {
                    // Both held for the transaction only, not across retry back-offs; the
                    // nodes first, so a worker never holds a slot while it waits for them.
                    let _nodes = locks.lock(shared.iter().map(String::as_str)).await;
                    let _turn = gate.acquire().await.expect("the gate is never closed");
                    let c = Commit {
                        batch: &batch,
                        parked: &parked,
                        outbox: &outbox,
                        moves: &moves,
                        fence_live,
                    };
                    graph.commit(&gen, &c).await
                },
                || ack::progress(self, items),
            )
            .await
            .map_err(Stage::Graph.failed())?;
        let graph_ms = t0.elapsed().as_secs_f64() * 1e3;
        for (&src, &(seq, _)) in &ends {
            self.sources[src].checkpoint = seq;
            self.sources[src].stored = seq;
        }
        let ckpts: Vec<(CheckpointKey, u64)> = ends
            .iter()
            .map(|(&src, &(seq, _))| (self.sources[src].key.clone(), seq))
            .collect();
        self.cache_step(&stories.into_iter().collect::<Vec<_>>(), &ckpts, items)
            .await
            .map_err(Stage::Cache.failed())?;
        let cache_ms = t0.elapsed().as_secs_f64() * 1e3 - graph_ms;
        self.publish_outbox(&outbox, items)
            .await
            .map_err(Stage::Outbox.failed())?;
        tracing::trace!(worker = %self.name, events = items.len(), streams = ends.len(), graph_ms, cache_ms, total_ms = t0.elapsed().as_secs_f64() * 1e3, "commit phases");
        Ok(())
    }

    /// Publishes the dead letters of the group's parked items (each confirmed by the
    /// stream) and returns their records for the graph transaction.
    async fn publish_dead_letters(&self, items: &[Item]) -> Result<Vec<ParkedRecord>, WriteError> {
        let mut parked = Vec::new();
        for it in items {
            let Route::Park {
                story_id,
                kind,
                reason,
                blocked_by,
                refused,
            } = &it.route
            else {
                continue;
            };
            let ct = it.content_type();
            let stream = &self.sources[it.src].stream;
            let d = DeadLetter {
                projector: &self.cfg.projector,
                stream,
                seq: it.seq,
                subject: &it.subject,
                delivered: it.delivered,
                story_id: story_id.as_deref(),
                kind,
                reason,
                blocked_by: blocked_by.as_deref(),
                content_type: ct.as_deref(),
                payload: &it.msg.payload,
            };
            let (js, prefix) = (&self.sh.js, &self.cfg.dlq_subject_prefix);
            let dlq_seq = self
                .retrier(it.src)
                .run_waiting(
                    "publish dead letter",
                    || dlq::park(js, prefix, &d),
                    || ack::progress(self, items),
                )
                .await?;
            parked.push(ParkedRecord {
                stream: stream.clone(),
                seq: it.seq,
                subject: it.subject.clone(),
                story_id: story_id.clone(),
                kind: kind.clone(),
                reason: reason.clone(),
                blocked_by: blocked_by.clone(),
                dlq_seq,
                ts_ns: it.ts_ns,
                refused: *refused,
            });
        }
        Ok(parked)
    }

    /// Valkey: the stories' contexts from the committed graph and the streams' Valkey
    /// checkpoints, in one MULTI.
    pub(super) async fn cache_step(
        &self,
        stories: &[String],
        ckpts: &[(CheckpointKey, u64)],
        inflight: &[Item],
    ) -> Result<(), WriteError> {
        let (graph, cache) = (&self.sh.graph, &self.sh.cache);
        let (gen, prefix) = (&self.cfg.generation, &self.cfg.cache_prefix);
        self.group_retrier()
            .run_waiting(
                "update Valkey",
                || async move {
                    let contexts = if stories.is_empty() {
                        Vec::new()
                    } else {
                        graph.story_contexts(gen, stories).await?
                    };
                    cache.apply_many(gen, prefix, &contexts, ckpts, false).await
                },
                || ack::progress(self, inflight),
            )
            .await
    }

    /// Publishes outbox entries (confirmed), then removes them from the outbox.
    pub(super) async fn publish_outbox(
        &self,
        outbox: &[OutboxEntry],
        inflight: &[Item],
    ) -> Result<(), WriteError> {
        if outbox.is_empty() {
            return Ok(());
        }
        // Sent together, confirmed together, retried together (the message ids make the
        // confirmed ones no-ops on a retry).
        let retrier = self.group_retrier();
        let events: Vec<projections::Outbound> = outbox.iter().map(|o| o.event.clone()).collect();
        let (js, prefix) = (&self.sh.js, &self.cfg.subject_prefix);
        retrier
            .run_waiting(
                "publish outbound events",
                || crate::sink::outbound::publish_all(js, prefix, &events),
                || ack::progress(self, inflight),
            )
            .await?;
        for o in outbox {
            self.sh
                .metrics
                .outbound
                .with_label_values(&[&self.cfg.projector, &o.event.subject])
                .inc();
        }
        let ids: Vec<String> = outbox.iter().map(|o| o.event.msg_id.clone()).collect();
        let (graph, gen) = (&self.sh.graph, &self.cfg.generation);
        retrier
            .run("clear outbox", || graph.outbox_done(gen, &ids))
            .await
    }
}
