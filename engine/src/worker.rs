//! One stream worker: read a stream from its checkpoint, project, commit, ack. In that order.
//!
//! Over 600 lines on purpose, for now: issue #16 replaces this per-stream loop with stream
//! sources feeding one committer per partition (`worker/{fetch,route,commit,recovery,ack}`),
//! which changes what each piece holds; a split along today's lines would be undone by it.
//!
//! The data flow of one batch, end to end:
//! fetch (durable pull consumer) -> decode + project (pure) -> dead letters (confirmed) ->
//! Neo4j transaction (graph writes + parked records + checkpoint, every write confirmed) ->
//! Valkey MULTI (contexts + Valkey checkpoint) -> outbound events (confirmed, deduplicated)
//! -> acks. A message is acknowledged in exactly one place, [`Worker::ack_all`], and only
//! after every effect above is committed.

use crate::dlq::{self, DeadLetter};
use crate::error::WriteError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::sink::cache::CacheSink;
use crate::sink::graph::{CheckpointKey, CheckpointMove, GraphSink, ParkedRecord};
use crate::source::{self, ConsumerSettings};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use projections::{CacheOp, CompactBatch, Envelope, Projection};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::watch;
use tracing::Instrument;

/// What to do with an event whose write keeps failing permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Park it in the dead-letter stream (and the later events of its story) and go on.
    Park,
    /// Stop this projector; nothing is acked.
    Halt,
}

/// What to do when messages after the checkpoint were removed before they were projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnGap {
    /// Stop; an operator decides (rebuild from an archive, or accept the loss).
    Halt,
    /// Record the lost range and go on after it.
    Continue,
}

/// Everything a worker needs to know about its job.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub projector: String,
    pub stream: String,
    pub partition: u32,
    /// Partitions of this stream; events of other partitions are acked and skipped.
    pub partitions: u32,
    pub generation: String,
    /// Write whatever generation is live (re-resolved at start and after a promotion).
    pub follow_live: bool,
    /// Valkey key prefix of this generation's contexts.
    pub cache_prefix: String,
    /// Prefix in front of catalog subjects (stripped before decoding).
    pub subject_prefix: String,
    pub dlq_subject_prefix: String,
    pub batch_size: usize,
    pub on_error: OnError,
    pub on_gap: OnGap,
    /// A checkpoint past the stream's end (the stream was recreated): read the stream from
    /// its start instead of halting.
    pub accept_stream_reset: bool,
    /// False during replays: side effects are suppressed.
    pub publish_outbound: bool,
    pub until_caught_up: bool,
    pub consumer: ConsumerSettings,
    pub backoff: Backoff,
    /// How long to wait for a first message before checking whether we are caught up.
    pub idle: Duration,
}

/// The connections and shared state all workers of a process use.
#[derive(Clone)]
pub struct Shared {
    pub js: jetstream::Context,
    pub graph: GraphSink,
    pub cache: CacheSink,
    pub metrics: Metrics,
    pub health: Health,
    /// Stories with a parked event, per projector: later events of theirs are parked behind it.
    pub blocked: Arc<Mutex<BTreeMap<String, String>>>,
    /// Admits graph transactions (`[neo4j] max_concurrent_writes` at a time).
    pub graph_gate: Arc<tokio::sync::Semaphore>,
    /// Full renders of a generation's contexts under a cache prefix, and when each started:
    /// workers starting together render once, not once each ([`ContextRenders`]).
    pub renders: ContextRenders,
}

/// When this process last started rendering every story context of (generation, cache
/// prefix), behind one lock so that only one full render runs at a time.
///
/// A worker whose Valkey checkpoint is behind Neo4j's needs every context to reflect at
/// least the commits up to its Neo4j checkpoint. A render that started after that checkpoint
/// was read covers them (it reads the committed graph, every story), so the worker only
/// moves its Valkey checkpoint. Without this, the four workers of a new generation rendered
/// every context four times at once (40 MB more at the end of a rebuild of 3,666 stories).
pub type ContextRenders = Arc<tokio::sync::Mutex<BTreeMap<(String, String), Instant>>>;

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was requested; the batch in flight was finished.
    Stopped,
    /// `until_caught_up`: every worker's checkpoint reached its stream's last sequence.
    CaughtUp { checkpoint: u64 },
}

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("{stream}: messages {from}..={to} were removed from the stream before projector {projector} read them (stream now starts at {first}); halting as --on-gap halt says. Rebuild from an archive or restart with --on-gap continue to accept the loss")]
    Gap {
        projector: String,
        stream: String,
        from: u64,
        to: u64,
        first: u64,
    },
    #[error("{stream}: projector {projector}'s checkpoint is {checkpoint} but the stream holds sequences {first}..={last} ({why}): it was deleted and recreated, or restored from an older backup, and reading on would skip its messages up to {checkpoint}. Rebuild (`projector rebuild`), or restart with --accept-stream-reset to project the stream from its first sequence into this generation")]
    StreamReset {
        projector: String,
        stream: String,
        checkpoint: u64,
        first: u64,
        last: u64,
        why: String,
    },
    #[error(
        "{stream} seq {seq} ({subject}): {error}; halting as --on-error halt says, nothing acked"
    )]
    Halted {
        stream: String,
        seq: u64,
        subject: String,
        error: String,
    },
    #[error("{stream}: {error}")]
    Fatal { stream: String, error: String },
}

/// What a message turned into before any write.
enum Plan {
    Project {
        projection: Projection,
        story_id: Option<String>,
    },
    Park {
        story_id: Option<String>,
        kind: String,
        reason: String,
        blocked_by: Option<String>,
    },
    /// Another partition's event: acked, nothing written (its own worker projects it).
    Elsewhere,
}

struct Item {
    msg: jetstream::Message,
    seq: u64,
    ts_ns: i64,
    subject: String,
    delivered: i64,
    pending: u64,
    plan: Plan,
}

impl Item {
    fn story(&self) -> Option<&str> {
        match &self.plan {
            Plan::Project { story_id, .. } | Plan::Park { story_id, .. } => story_id.as_deref(),
            Plan::Elsewhere => None,
        }
    }
}

enum Anomaly {
    /// A later message came first while the expected one is still in the stream.
    OutOfOrder { expected: u64, got: u64 },
    /// The expected messages are gone.
    Gap { from: u64, to: u64 },
}

pub struct Worker {
    cfg: WorkerConfig,
    sh: Shared,
    key: CheckpointKey,
    name: String,
    /// Position: the last sequence committed or skipped as another partition's.
    checkpoint: u64,
    /// The checkpoint as stored in Neo4j (behind `checkpoint` while only other partitions'
    /// events were read); the expected value of the next optimistic move.
    stored: u64,
    shutdown: watch::Receiver<bool>,
    /// Set when the consumer must be recreated at the (re-read) checkpoint.
    reposition: bool,
}

impl Worker {
    pub fn new(cfg: WorkerConfig, sh: Shared, shutdown: watch::Receiver<bool>) -> Worker {
        let key = CheckpointKey::new(&cfg.projector, &cfg.stream, cfg.partition);
        let name = format!("{}/{}/{}", cfg.projector, cfg.stream, cfg.partition);
        Worker {
            cfg,
            sh,
            key,
            name,
            checkpoint: 0,
            stored: 0,
            shutdown,
            reposition: false,
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn labels(&self) -> [&str; 2] {
        [&self.cfg.projector, &self.cfg.stream]
    }

    /// Retries `f` on transient errors with backoff until it succeeds, a permanent error comes,
    /// or shutdown is requested (then the last error is returned). Progress acks keep the
    /// in-flight messages from being redelivered meanwhile.
    async fn retry<T, F, Fut>(
        &mut self,
        what: &str,
        inflight: &[Item],
        mut f: F,
    ) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, WriteError>>,
    {
        let mut attempt = 0u32;
        loop {
            match f().await {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(worker = %self.name, what, attempts = attempt + 1, "recovered");
                        self.sh.health.update(&self.name, |h| {
                            h.connected = true;
                            h.last_error = None;
                        });
                    }
                    return Ok(v);
                }
                Err(e) => {
                    self.sh
                        .metrics
                        .write_errors
                        .with_label_values(&[&self.cfg.projector, &self.cfg.stream, e.kind()])
                        .inc();
                    // A moved checkpoint is not retried in place: the worker re-reads it.
                    if !e.is_transient()
                        || self.stopping()
                        || matches!(
                            e,
                            WriteError::CheckpointMoved { .. } | WriteError::GenerationMoved { .. }
                        )
                    {
                        return Err(e);
                    }
                    self.sh
                        .metrics
                        .retries
                        .with_label_values(&[&self.cfg.projector, &self.cfg.stream, e.kind()])
                        .inc();
                    let delay = self.cfg.backoff.delay(attempt);
                    // Logged once per attempt with its context; never swallowed.
                    tracing::warn!(worker = %self.name, what, attempt = attempt + 1, error = %e, retry_in_ms = delay.as_millis() as u64, "transient error, retrying");
                    self.sh.health.update(&self.name, |h| {
                        h.connected = false;
                        h.last_error = Some(e.to_string());
                    });
                    for it in inflight {
                        let _ = it.msg.ack_with(AckKind::Progress).await;
                    }
                    let mut sd = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = sd.changed() => {}
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Runs until shutdown, caught up (`until_caught_up`), or a halting condition.
    pub async fn run(mut self) -> Result<Exit, WorkerError> {
        let fatal = |stream: &str, e: WriteError| WorkerError::Fatal {
            stream: stream.to_string(),
            error: e.to_string(),
        };
        self.sh.health.update(&self.name, |h| h.connected = false);
        self.sh
            .metrics
            .init_worker(&self.cfg.projector, &self.cfg.stream);
        loop {
            if self.stopping() {
                return Ok(self.exit());
            }
            // (Re)start: checkpoint from Neo4j, repair the cache, position the durable.
            if self.cfg.follow_live {
                let graph = self.sh.graph.clone();
                let live = self
                    .retry("resolve the live generation", &[], || {
                        crate::generations::live(&graph)
                    })
                    .await
                    .map_err(|e| fatal(&self.cfg.stream, e))?;
                if live != self.cfg.generation {
                    tracing::info!(worker = %self.name, from = %self.cfg.generation, to = %live, "writing the live generation");
                    self.cfg.generation = live;
                }
            }
            let (gen, key) = (self.cfg.generation.clone(), self.key.clone());
            let graph = self.sh.graph.clone();
            let stored = self
                .retry("read checkpoint", &[], || graph.checkpoint(&gen, &key))
                .await
                .map_err(|e| fatal(&self.cfg.stream, e))?;
            let checkpoint_read = Instant::now();
            let (first, last) = {
                let js = self.sh.js.clone();
                let stream = self.cfg.stream.clone();
                self.retry("stream bounds", &[], || source::bounds(&js, &stream))
                    .await
                    .map_err(|e| fatal(&self.cfg.stream, e))?
            };
            self.checkpoint = match stored {
                Some(c) => c,
                None => {
                    if first > 1 {
                        tracing::info!(worker = %self.name, first, "no checkpoint yet; the stream starts at {first} (earlier messages were removed before this projector existed)");
                    }
                    first.saturating_sub(1)
                }
            };
            self.stored = self.checkpoint;
            if self.checkpoint > last {
                self.stream_reset(first, last, None).await?;
            } else if stored.is_some() && self.checkpoint >= first.max(1) {
                // A recreated stream that already grew past the checkpoint: the message at
                // the checkpoint is not the one committed (another stream time). A mirror
                // migration keeps times, so it passes.
                let (js, stream, graph) = (
                    self.sh.js.clone(),
                    self.cfg.stream.clone(),
                    self.sh.graph.clone(),
                );
                let (ckpt, key) = (self.checkpoint, self.key.clone());
                let recorded = self
                    .retry("read checkpoint time", &[], || {
                        graph.checkpoint_ts(&gen, &key)
                    })
                    .await
                    .map_err(|e| fatal(&self.cfg.stream, e))?;
                if let Some(recorded) = recorded {
                    let found = self
                        .retry("read the message at the checkpoint", &[], || {
                            source::time_ns_at(&js, &stream, ckpt)
                        })
                        .await
                        .map_err(|e| fatal(&self.cfg.stream, e))?;
                    if found.is_some_and(|t| t != recorded) {
                        self.stream_reset(first, last, found.map(|f| (recorded, f)))
                            .await?;
                    }
                }
            }
            tracing::info!(worker = %self.name, generation = %gen, checkpoint = self.checkpoint, stream_last = last, "starting from stored checkpoint");
            self.repair_cache(checkpoint_read)
                .await
                .map_err(|e| fatal(&self.cfg.stream, e))?;
            self.drain_outbox()
                .await
                .map_err(|e| fatal(&self.cfg.stream, e))?;
            let consumer = {
                let js = self.sh.js.clone();
                let stream = self.cfg.stream.clone();
                // Live workers keep one durable whatever generation is live.
                let consumer_gen = (!self.cfg.follow_live).then_some(self.cfg.generation.as_str());
                let cname =
                    source::consumer_name(&self.cfg.projector, consumer_gen, self.cfg.partition);
                let (ckpt, settings) = (self.checkpoint, self.cfg.consumer);
                self.retry("position consumer", &[], || {
                    source::position(&js, &stream, &cname, ckpt, settings)
                })
                .await
                .map_err(|e| fatal(&self.cfg.stream, e))?
            };
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(self.cfg.batch_size)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(worker = %self.name, error = %e, "cannot open the consumer's message stream; retrying");
                    tokio::time::sleep(self.cfg.backoff.delay(3)).await;
                    continue;
                }
            };
            self.sh.health.update(&self.name, |h| {
                h.connected = true;
                h.lag = last.saturating_sub(self.checkpoint);
            });
            self.set_lag(last.saturating_sub(self.checkpoint));
            match self.consume(&mut messages).await? {
                Some(exit) => return Ok(exit),
                None => continue, // reposition requested
            }
        }
    }

    fn exit(&self) -> Exit {
        if self.cfg.until_caught_up {
            Exit::CaughtUp {
                checkpoint: self.checkpoint,
            }
        } else {
            Exit::Stopped
        }
    }

    fn set_lag(&self, lag: u64) {
        let p = self.cfg.partition.to_string();
        let l = [
            self.cfg.projector.as_str(),
            self.cfg.stream.as_str(),
            p.as_str(),
        ];
        self.sh.metrics.lag.with_label_values(&l).set(lag as i64);
        self.sh
            .metrics
            .checkpoint
            .with_label_values(&l)
            .set(self.checkpoint as i64);
        let (stream, ckpt) = (self.cfg.stream.clone(), self.checkpoint);
        self.sh.health.update(&self.name, |h| {
            h.lag = lag;
            h.stream = stream;
            h.checkpoint = ckpt;
        });
    }

    /// Reads batches until exit (`Some`) or until the consumer must be repositioned (`None`).
    async fn consume(
        &mut self,
        messages: &mut jetstream::consumer::pull::Stream,
    ) -> Result<Option<Exit>, WorkerError> {
        loop {
            if self.stopping() {
                return Ok(Some(self.exit()));
            }
            let raw = match self.next_batch(messages).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(worker = %self.name, error = %e, "consumer stream error; repositioning");
                    return Ok(None);
                }
            };
            if raw.is_empty() {
                continue;
            }
            // The lag counts what is fetched but not committed: set after a commit alone, it
            // would read 0 while the next batch (already delivered) is still being written.
            if let Some(head) = raw
                .last()
                .and_then(|m| m.info().ok())
                .map(|i| i.stream_sequence + i.pending)
            {
                self.set_lag(head.saturating_sub(self.checkpoint));
            }
            let started = Instant::now();
            let (items, anomaly) = self.plan(raw).await?;
            let tail_pending = items.last().map(|i| i.pending).unwrap_or(0);
            if items.iter().all(|i| matches!(i.plan, Plan::Elsewhere)) && tail_pending > 0 {
                // Only other partitions' events and more to come: no transaction, the next
                // commit stores the checkpoint past them (re-reading them after a crash only
                // skips them again). At the stream's end the checkpoint is stored as usual.
                if let Some(last) = items.last().map(|i| i.seq) {
                    self.ack_all(&items).await;
                    self.checkpoint = last;
                    self.set_lag(tail_pending);
                }
            } else if !items.is_empty() {
                let span = tracing::info_span!(
                    "batch",
                    worker = %self.name,
                    first = items[0].seq,
                    last = items[items.len() - 1].seq,
                    events = items.len()
                );
                self.commit(items, started).instrument(span).await?;
                if std::mem::take(&mut self.reposition) {
                    return Ok(None);
                }
            }
            match anomaly {
                None => {}
                Some(Anomaly::OutOfOrder { expected, got }) => {
                    tracing::warn!(worker = %self.name, expected, got, "delivery out of order (a redelivery); repositioning the consumer at the checkpoint");
                    return Ok(None);
                }
                Some(Anomaly::Gap { from, to }) => {
                    self.handle_gap(from, to).await?;
                    return Ok(None);
                }
            }
        }
    }

    /// Waits for a first message (up to `idle`), then takes whatever else is already there,
    /// up to the batch size: low latency when idle, big batches under load.
    async fn next_batch(
        &mut self,
        messages: &mut jetstream::consumer::pull::Stream,
    ) -> Result<Vec<jetstream::Message>, String> {
        let mut out = Vec::new();
        let mut sd = self.shutdown.clone();
        let first = tokio::select! {
            m = tokio::time::timeout(self.cfg.idle, messages.next()) => m,
            _ = sd.changed() => return Ok(out),
        };
        match first {
            Err(_) => return Ok(out),
            Ok(None) => return Err("consumer stream ended".into()),
            Ok(Some(Err(e))) => {
                use jetstream::consumer::pull::MessagesErrorKind as K;
                return match e.kind() {
                    K::MissingHeartbeat => Ok(out),
                    _ => Err(e.to_string()),
                };
            }
            Ok(Some(Ok(m))) => out.push(m),
        }
        while out.len() < self.cfg.batch_size {
            match tokio::time::timeout(Duration::from_millis(2), messages.next()).await {
                Ok(Some(Ok(m))) => out.push(m),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Decides what each message becomes, in order, stopping at the first anomaly.
    async fn plan(
        &mut self,
        raw: Vec<jetstream::Message>,
    ) -> Result<(Vec<Item>, Option<Anomaly>), WorkerError> {
        self.refresh_blocked().await;
        let mut items = Vec::with_capacity(raw.len());
        let mut expected = self.checkpoint + 1;
        let mut batch_blocked: BTreeMap<String, String> = BTreeMap::new();
        let mut rest = raw.into_iter();
        for msg in rest.by_ref() {
            let info = match msg.info() {
                Ok(i) => (
                    i.stream_sequence,
                    i.delivered,
                    i.pending,
                    i.published.unix_timestamp_nanos() as i64,
                ),
                Err(e) => {
                    tracing::warn!(worker = %self.name, error = %e, "message without JetStream metadata; repositioning");
                    return Ok((items, Some(Anomaly::OutOfOrder { expected, got: 0 })));
                }
            };
            let (seq, delivered, pending, ts_ns) = info;
            if seq < expected {
                // Already committed (a redelivery after a crash between commit and ack).
                self.sh
                    .metrics
                    .events
                    .with_label_values(&[&self.cfg.projector, &self.cfg.stream, "-", "duplicate"])
                    .inc();
                let _ = msg.double_ack().await;
                continue;
            }
            if seq > expected {
                let js = self.sh.js.clone();
                let stream = self.cfg.stream.clone();
                let still_there = self
                    .retry("check gap", &items, || {
                        source::exists(&js, &stream, expected)
                    })
                    .await
                    .map_err(|e| WorkerError::Fatal {
                        stream: self.cfg.stream.clone(),
                        error: e.to_string(),
                    })?;
                let anomaly = if still_there {
                    Anomaly::OutOfOrder { expected, got: seq }
                } else {
                    Anomaly::Gap {
                        from: expected,
                        to: seq - 1,
                    }
                };
                return Ok((items, Some(anomaly)));
            }
            expected = seq + 1;
            let subject = msg.subject.to_string();
            let plan = self.decide(&msg, seq, ts_ns, &subject, &batch_blocked);
            if let Plan::Park {
                story_id: Some(story),
                ..
            } = &plan
            {
                batch_blocked.entry(story.clone()).or_insert_with(|| {
                    format!("{}:{}:{}", self.cfg.projector, self.cfg.stream, seq)
                });
            }
            items.push(Item {
                msg,
                seq,
                ts_ns,
                subject,
                delivered,
                pending,
                plan,
            });
        }
        Ok((items, None))
    }

    /// Drops stories from the block list once an operator retried or discarded their parked
    /// events (`projector dlq`). Checked before each batch while the list is non-empty: one
    /// indexed query, and an unblocked story is never parked by a stale list.
    async fn refresh_blocked(&mut self) {
        let stories: Vec<String> = {
            let b = self.sh.blocked.lock().unwrap_or_else(|e| e.into_inner());
            if b.is_empty() {
                return;
            }
            b.keys().cloned().collect()
        };
        match self
            .sh
            .graph
            .still_blocked(&self.cfg.generation, &self.cfg.projector, &stories)
            .await
        {
            Ok(still) => {
                let still: BTreeSet<String> = still.into_iter().collect();
                let mut b = self.sh.blocked.lock().unwrap_or_else(|e| e.into_inner());
                b.retain(|story, _| {
                    let keep = still.contains(story);
                    if !keep {
                        tracing::info!(worker = %self.name, story, "story unblocked: its parked events were retried or discarded");
                    }
                    keep
                });
            }
            // Keeping the list is the safe side: at worst a story stays blocked a while longer.
            Err(e) => {
                tracing::warn!(worker = %self.name, error = %e, "cannot refresh the blocked stories; keeping the list")
            }
        }
    }

    fn decide(
        &self,
        msg: &jetstream::Message,
        seq: u64,
        ts_ns: i64,
        subject: &str,
        batch_blocked: &BTreeMap<String, String>,
    ) -> Plan {
        let content_type = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str().to_string());
        let ct = content_type.as_deref();
        let catalog_subject = subject.strip_prefix(self.cfg.subject_prefix.as_str());
        let decoded = match catalog_subject {
            Some(s) => projections::decode(s, ct, &msg.payload),
            None => Err(projections::DecodeError::UnknownSubject {
                subject: subject.to_string(),
            }),
        };
        if self.cfg.partitions > 1 {
            let story = match &decoded {
                Ok(event) => event.story_id().map(str::to_string),
                Err(_) => projections::sniff_story_id(ct, &msg.payload),
            };
            if projections::partition_of(story.as_deref(), self.cfg.partitions)
                != self.cfg.partition
            {
                return Plan::Elsewhere;
            }
        }
        match decoded {
            Err(e) => Plan::Park {
                story_id: projections::sniff_story_id(ct, &msg.payload),
                kind: e.kind().to_string(),
                reason: e.to_string(),
                blocked_by: None,
            },
            Ok(event) => {
                let story_id = event.story_id().map(str::to_string);
                if let Some(story) = &story_id {
                    let blocked = batch_blocked.get(story).cloned().or_else(|| {
                        self.sh
                            .blocked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(story)
                            .cloned()
                    });
                    if let Some(first) = blocked {
                        return Plan::Park {
                            story_id: Some(story.clone()),
                            kind: "story_blocked".into(),
                            reason: format!(
                                "story {story} has an earlier parked event ({first}); parked behind it to keep the story's order"
                            ),
                            blocked_by: Some(first),
                        };
                    }
                }
                let env = Envelope::new(
                    &self.cfg.stream,
                    seq,
                    catalog_subject.unwrap_or(subject),
                    ts_ns,
                    &msg.payload,
                )
                .with_content_type(ct);
                Plan::Project {
                    projection: projections::project(&env, &event),
                    story_id,
                }
            }
        }
    }

    /// Commits a planned batch; on a permanent write error, falls back to one event per
    /// transaction to find the offending event and park only it.
    async fn commit(&mut self, items: Vec<Item>, started: Instant) -> Result<(), WorkerError> {
        let n = items.len();
        match self.commit_group(&items).await {
            Ok(()) => {
                self.finish(items, started).await;
                return Ok(());
            }
            Err(e @ WriteError::GenerationMoved { .. }) => {
                tracing::info!(worker = %self.name, error = %e, "a rebuilt generation was promoted; switching to it, nothing acked");
                self.reposition = true;
                return Ok(());
            }
            Err(e @ WriteError::CheckpointMoved { .. }) => {
                tracing::warn!(worker = %self.name, error = %e, "checkpoint moved under this worker (another writer?); re-reading it, nothing acked");
                self.reposition = true;
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                // Only reached on shutdown during retries: nothing committed, nothing acked.
                tracing::info!(worker = %self.name, error = %e, "stopping with a batch uncommitted; it will be redelivered");
                return Ok(());
            }
            Err(e) if self.cfg.on_error == OnError::Halt => {
                return Err(self.halt(&items[0], &e));
            }
            Err(e) => {
                tracing::warn!(worker = %self.name, error = %e, batch = n, "permanent write error in batch; retrying its events one by one to isolate the offender");
            }
        }
        let mut local_blocked: BTreeMap<String, String> = BTreeMap::new();
        for mut item in items {
            if let (Plan::Project { .. }, Some(story)) = (&item.plan, item.story()) {
                if let Some(first) = local_blocked.get(story) {
                    item.plan = Plan::Park {
                        story_id: Some(story.to_string()),
                        kind: "story_blocked".into(),
                        reason: format!("story {story} has an earlier parked event ({first}); parked behind it to keep the story's order"),
                        blocked_by: Some(first.clone()),
                    };
                }
            }
            let single = vec![item];
            match self.commit_group(&single).await {
                Ok(()) => {}
                Err(e) if !e.is_transient() && matches!(single[0].plan, Plan::Project { .. }) => {
                    let mut item = single.into_iter().next().expect("one item");
                    tracing::error!(worker = %self.name, seq = item.seq, subject = %item.subject, story = ?item.story(), error = %e, "write refused; parking the event");
                    let story = item.story().map(str::to_string);
                    if let Some(s) = &story {
                        local_blocked.insert(
                            s.clone(),
                            format!("{}:{}:{}", self.cfg.projector, self.cfg.stream, item.seq),
                        );
                    }
                    item.plan = Plan::Park {
                        story_id: story,
                        kind: e.kind().to_string(),
                        reason: e.to_string(),
                        blocked_by: None,
                    };
                    let single = vec![item];
                    if let Err(e) = self.commit_group(&single).await {
                        return Err(self.halt(&single[0], &e));
                    }
                    self.finish(single, Instant::now()).await;
                    continue;
                }
                Err(WriteError::CheckpointMoved { .. } | WriteError::GenerationMoved { .. }) => {
                    self.reposition = true;
                    return Ok(());
                }
                Err(e) if e.is_transient() => return Ok(()),
                Err(e) => return Err(self.halt(&single[0], &e)),
            }
            self.finish(single, Instant::now()).await;
        }
        let _ = started;
        Ok(())
    }

    fn halt(&self, item: &Item, e: &WriteError) -> WorkerError {
        self.sh
            .health
            .update(&self.name, |h| h.halted = Some(e.to_string()));
        tracing::error!(worker = %self.name, seq = item.seq, subject = %item.subject, story = ?item.story(), error = %e, "halting");
        WorkerError::Halted {
            stream: self.cfg.stream.clone(),
            seq: item.seq,
            subject: item.subject.clone(),
            error: e.to_string(),
        }
    }

    /// Dead letters, then the graph transaction (with checkpoint), then the cache, then
    /// outbound events. Retries transient errors; returns permanent ones untouched.
    async fn commit_group(&mut self, items: &[Item]) -> Result<(), WriteError> {
        let last = items.last().expect("non-empty batch").seq;
        // 1. Dead letters, confirmed by the stream, before anything else commits.
        let mut parked = Vec::new();
        for it in items {
            if let Plan::Park {
                story_id,
                kind,
                reason,
                blocked_by,
            } = &it.plan
            {
                let ct = it
                    .msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Content-Type"))
                    .map(|v| v.as_str().to_string());
                let js = self.sh.js.clone();
                let prefix = self.cfg.dlq_subject_prefix.clone();
                let projector = self.cfg.projector.clone();
                let stream = self.cfg.stream.clone();
                let dlq_seq = self
                    .retry("publish dead letter", items, || {
                        let d = DeadLetter {
                            projector: &projector,
                            stream: &stream,
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
                        let js = js.clone();
                        let prefix = prefix.clone();
                        async move { dlq::park(&js, &prefix, &d).await }
                    })
                    .await?;
                parked.push(ParkedRecord {
                    stream: self.cfg.stream.clone(),
                    seq: it.seq,
                    subject: it.subject.clone(),
                    story_id: story_id.clone(),
                    kind: kind.clone(),
                    reason: reason.clone(),
                    blocked_by: blocked_by.clone(),
                    dlq_seq,
                    ts_ns: it.ts_ns,
                });
            }
        }
        // 2. One Neo4j transaction: graph writes, parked records, checkpoint.
        let t0 = Instant::now();
        let mut batch = CompactBatch::default();
        let mut stories: BTreeSet<String> = BTreeSet::new();
        let mut outbound = Vec::new();
        for it in items {
            if let Plan::Project { projection, .. } = &it.plan {
                batch.extend(&projection.graph);
                for c in &projection.cache {
                    let CacheOp::RefreshContext { story_id, .. } = c;
                    stories.insert(story_id.clone());
                }
                outbound.extend(projection.outbound.iter().cloned());
            }
        }
        let fence = self.cfg.follow_live;
        let mv = CheckpointMove {
            key: self.key.clone(),
            expected: self.stored,
            seq: last,
            // The batch ends at `last`; 0 (unknown) only if it somehow does not.
            ts_ns: items
                .iter()
                .rev()
                .find(|i| i.seq == last)
                .map_or(0, |i| i.ts_ns),
        };
        let gen = self.cfg.generation.clone();
        let graph = self.sh.graph.clone();
        let gate = self.sh.graph_gate.clone();
        if !self.cfg.publish_outbound {
            outbound.clear();
        }
        let res = self
            .retry("commit batch to Neo4j", items, || async {
                // Held for the transaction only, not across retry back-offs.
                let _turn = gate.acquire().await.expect("the gate is never closed");
                graph
                    .commit_batch(&gen, &batch, &parked, &outbound, &mv, fence)
                    .await
            })
            .await;
        if let Err(WriteError::CheckpointMoved { .. }) = &res {
            // Only when shutting down (transient errors are retried otherwise).
            return res;
        }
        res?;
        let graph_ms = t0.elapsed().as_secs_f64() * 1e3;
        self.checkpoint = last;
        self.stored = last;
        for p in &parked {
            if let Some(s) = &p.story_id {
                self.sh
                    .blocked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(s.clone())
                    .or_insert_with(|| p.id(&self.cfg.projector));
            }
        }
        // 3. Valkey: contexts re-rendered from the committed graph, with the Valkey checkpoint.
        let ids: Vec<String> = stories.into_iter().collect();
        let cache = self.sh.cache.clone();
        let prefix = self.cfg.cache_prefix.clone();
        let key = self.key.clone();
        self.retry("update Valkey", items, || {
            let (graph, cache, gen, prefix, key, ids) = (
                graph.clone(),
                cache.clone(),
                gen.clone(),
                prefix.clone(),
                key.clone(),
                ids.clone(),
            );
            async move {
                let contexts = if ids.is_empty() {
                    Vec::new()
                } else {
                    graph.story_contexts(&gen, &ids).await?
                };
                cache.apply(&gen, &prefix, &contexts, &key, last).await
            }
        })
        .await?;
        let cache_ms = t0.elapsed().as_secs_f64() * 1e3 - graph_ms;
        // 4. Outbound events from the outbox, deduplicated by their deterministic message id.
        self.publish_outbox(&outbound, items).await?;
        tracing::trace!(worker = %self.name, events = items.len(), graph_ms, cache_ms, total_ms = t0.elapsed().as_secs_f64() * 1e3, "commit phases");
        Ok(())
    }

    /// Publishes outbox entries (confirmed), then removes them from the outbox.
    async fn publish_outbox(
        &mut self,
        outbound: &[projections::Outbound],
        items: &[Item],
    ) -> Result<(), WriteError> {
        if outbound.is_empty() {
            return Ok(());
        }
        for o in outbound {
            let js = self.sh.js.clone();
            let subject = format!("{}{}", self.cfg.subject_prefix, o.subject);
            self.retry("publish outbound event", items, || {
                let (js, subject) = (js.clone(), subject.clone());
                async move {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", o.msg_id.as_str());
                    let fail = |e: String| WriteError::Nats {
                        message: format!("outbound {}: {e}", o.msg_id),
                    };
                    js.publish_with_headers(subject, h, o.payload.clone().into())
                        .await
                        .map_err(|e| fail(e.to_string()))?
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    Ok(())
                }
            })
            .await?;
            self.sh
                .metrics
                .outbound
                .with_label_values(&[&self.cfg.projector, &o.subject])
                .inc();
        }
        let ids: Vec<String> = outbound.iter().map(|o| o.msg_id.clone()).collect();
        let (graph, gen) = (self.sh.graph.clone(), self.cfg.generation.clone());
        self.retry("clear outbox", items, || graph.outbox_done(&gen, &ids))
            .await
    }

    /// Acks (the one place), metrics and logs of a committed group.
    async fn finish(&mut self, items: Vec<Item>, started: Instant) {
        self.ack_all(&items).await;
        let n = items.len();
        let first = items.first().map(|i| i.seq).unwrap_or(0);
        let lag = items.last().map(|i| i.pending).unwrap_or(0);
        let mut parked = 0;
        for it in &items {
            let outcome = match &it.plan {
                // Counted by the partition that owns it.
                Plan::Elsewhere => continue,
                Plan::Project { projection, .. } if projection.graph.is_empty() => "ignored",
                Plan::Project { .. } => "projected",
                Plan::Park {
                    kind,
                    reason,
                    story_id,
                    ..
                } => {
                    parked += 1;
                    self.sh
                        .metrics
                        .parked
                        .with_label_values(&[&self.cfg.projector, &self.cfg.stream, kind])
                        .inc();
                    tracing::warn!(worker = %self.name, seq = it.seq, subject = %it.subject, story = ?story_id, kind = %kind, reason = %reason, "parked in the dead-letter stream");
                    "parked"
                }
            };
            let subject = it
                .subject
                .strip_prefix(self.cfg.subject_prefix.as_str())
                .unwrap_or(&it.subject);
            self.sh
                .metrics
                .events
                .with_label_values(&[&self.cfg.projector, &self.cfg.stream, subject, outcome])
                .inc();
        }
        let labels = self.labels();
        self.sh
            .metrics
            .batch_size
            .with_label_values(&labels)
            .observe(n as f64);
        self.sh
            .metrics
            .batch_seconds
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let latency = self.sh.metrics.event_latency.with_label_values(&labels);
        for it in items
            .iter()
            .filter(|it| !matches!(it.plan, Plan::Elsewhere))
        {
            // Clocks of the NATS server and this host; negative skew is clamped to zero.
            latency.observe((now_ns - it.ts_ns).max(0) as f64 / 1e9);
        }
        self.set_lag(lag);
        tracing::debug!(worker = %self.name, first, last = self.checkpoint, events = n, parked, lag, "batch committed");
    }

    async fn ack_all(&self, items: &[Item]) {
        let acks = items.iter().map(|it| async move {
            let kind = match it.plan {
                Plan::Park { .. } => AckKind::Term,
                Plan::Project { .. } | Plan::Elsewhere => AckKind::Ack,
            };
            (it.seq, it.msg.double_ack_with(kind).await)
        });
        for (seq, res) in futures::future::join_all(acks).await {
            if let Err(e) = res {
                self.sh
                    .metrics
                    .write_errors
                    .with_label_values(&[&self.cfg.projector, &self.cfg.stream, "ack"])
                    .inc();
                // Effects are committed; a lost ack means a redelivery, skipped as a duplicate.
                tracing::warn!(worker = %self.name, seq, error = %e, "ack not confirmed; the redelivery will be skipped by the checkpoint");
            }
        }
    }

    async fn handle_gap(&mut self, from: u64, to: u64) -> Result<(), WorkerError> {
        let js = self.sh.js.clone();
        let stream = self.cfg.stream.clone();
        let (first, _) = source::bounds(&js, &stream).await.unwrap_or((0, 0));
        self.sh.metrics.gaps.with_label_values(&self.labels()).inc();
        self.sh
            .metrics
            .lost_messages
            .with_label_values(&self.labels())
            .inc_by(to - from + 1);
        let graph = self.sh.graph.clone();
        let gen = self.cfg.generation.clone();
        let key = self.key.clone();
        let halt = self.cfg.on_gap == OnGap::Halt;
        let ckpt = self.checkpoint;
        self.retry("record lost range", &[], || {
            graph.record_lost_range(&gen, &key, from, to, halt, ckpt)
        })
        .await
        .map_err(|e| WorkerError::Fatal {
            stream: self.cfg.stream.clone(),
            error: e.to_string(),
        })?;
        if halt {
            let err = WorkerError::Gap {
                projector: self.cfg.projector.clone(),
                stream: self.cfg.stream.clone(),
                from,
                to,
                first,
            };
            tracing::error!(worker = %self.name, from, to, first, "lost range detected; halting");
            self.sh
                .health
                .update(&self.name, |h| h.halted = Some(err.to_string()));
            return Err(err);
        }
        tracing::error!(worker = %self.name, from, to, "lost range detected and recorded; continuing after it as --on-gap continue says");
        // Move both checkpoints past the hole, or the next start would find it again.
        self.move_checkpoint("move checkpoint past the hole", to)
            .await
    }

    /// Moves both checkpoints (Neo4j, then Valkey) to `to` with nothing else written.
    async fn move_checkpoint(&mut self, what: &str, to: u64) -> Result<(), WorkerError> {
        let graph = self.sh.graph.clone();
        let gen = self.cfg.generation.clone();
        let key = self.key.clone();
        let fence = self.cfg.follow_live;
        let mv = CheckpointMove {
            key: self.key.clone(),
            expected: self.stored,
            seq: to,
            // Nothing was read at `to` (a hole, a reset stream): no time to compare later.
            ts_ns: 0,
        };
        let (cache, prefix) = (self.sh.cache.clone(), self.cfg.cache_prefix.clone());
        let empty = CompactBatch::default();
        self.retry(what, &[], || {
            let (graph, cache, gen, prefix, key, mv) = (
                graph.clone(),
                cache.clone(),
                gen.clone(),
                prefix.clone(),
                key.clone(),
                mv.clone(),
            );
            let empty = empty.clone();
            async move {
                graph
                    .commit_batch(&gen, &empty, &[], &[], &mv, fence)
                    .await?;
                cache.apply(&gen, &prefix, &[], &key, to).await
            }
        })
        .await
        .map_err(|e| WorkerError::Fatal {
            stream: self.cfg.stream.clone(),
            error: e.to_string(),
        })?;
        self.checkpoint = to;
        self.stored = to;
        Ok(())
    }

    /// The stored checkpoint is past the stream's last sequence: the stream was deleted and
    /// recreated, or restored from an older backup. Reading from checkpoint + 1 would skip
    /// the new stream's messages up to the old checkpoint in silence, so halt, unless the
    /// operator accepted it (`--accept-stream-reset`): then read the stream from its start.
    /// `times`: (recorded, found) stream times of the message at the checkpoint, when the
    /// stream is long enough but holds another message there.
    async fn stream_reset(
        &mut self,
        first: u64,
        last: u64,
        times: Option<(i64, i64)>,
    ) -> Result<(), WorkerError> {
        let checkpoint = self.checkpoint;
        self.sh
            .metrics
            .stream_resets
            .with_label_values(&self.labels())
            .inc();
        if self.cfg.accept_stream_reset {
            let to = first.saturating_sub(1);
            tracing::warn!(worker = %self.name, checkpoint, stream_first = first, stream_last = last, "stream reset accepted (--accept-stream-reset): reading the stream from its first sequence");
            self.move_checkpoint("move checkpoint to the reset stream's start", to)
                .await?;
            return Ok(());
        }
        let err = WorkerError::StreamReset {
            projector: self.cfg.projector.clone(),
            stream: self.cfg.stream.clone(),
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
        tracing::error!(worker = %self.name, checkpoint, stream_first = first, stream_last = last, "stream reset: checkpoint past the stream's last sequence; halting");
        self.sh
            .health
            .update(&self.name, |h| h.halted = Some(err.to_string()));
        Err(err)
    }

    /// Brings the Valkey side up to the Neo4j checkpoint after a crash between the two.
    /// Publishes what a previous run committed to the outbox but did not confirm as published
    /// (a crash or a failed publish between the Neo4j commit and the outbox delete). Without
    /// this, those outbound events would be lost: their input is already checkpointed.
    async fn drain_outbox(&mut self) -> Result<(), WriteError> {
        let (graph, gen, key) = (
            self.sh.graph.clone(),
            self.cfg.generation.clone(),
            self.key.clone(),
        );
        let pending = self
            .retry("read pending outbox", &[], || {
                graph.outbox_pending(&gen, &key)
            })
            .await?;
        if pending.is_empty() {
            return Ok(());
        }
        tracing::warn!(worker = %self.name, pending = pending.len(), "publishing outbound events committed by an earlier run but not confirmed as published");
        self.publish_outbox(&pending, &[]).await
    }

    /// Brings this worker's Valkey checkpoint to its Neo4j checkpoint (read at
    /// `checkpoint_read`), rendering every story context unless a render that started after
    /// that read already did.
    async fn repair_cache(&mut self, checkpoint_read: Instant) -> Result<(), WriteError> {
        let gen = self.cfg.generation.clone();
        let key = self.key.clone();
        let cache = self.sh.cache.clone();
        let valkey = self
            .retry("read Valkey checkpoint", &[], || {
                cache.checkpoint(&gen, &key)
            })
            .await?;
        if valkey == Some(self.checkpoint) || (valkey.is_none() && self.checkpoint == 0) {
            return Ok(());
        }
        let graph = self.sh.graph.clone();
        let prefix = self.cfg.cache_prefix.clone();
        let ckpt = self.checkpoint;
        let renders = self.sh.renders.clone();
        let mut renders = renders.lock().await;
        let render_key = (gen.clone(), prefix.clone());
        if renders
            .get(&render_key)
            .is_some_and(|started| *started >= checkpoint_read)
        {
            tracing::info!(worker = %self.name, valkey_checkpoint = ?valkey, neo4j_checkpoint = ckpt, "Valkey behind Neo4j, but every story context was rendered after this checkpoint was read; moving the Valkey checkpoint only");
            return self
                .retry("move the Valkey checkpoint", &[], || {
                    cache.apply(&gen, &prefix, &[], &key, ckpt)
                })
                .await;
        }
        match valkey {
            None => {
                tracing::info!(worker = %self.name, neo4j_checkpoint = ckpt, "no Valkey checkpoint yet (a new generation or partition); rendering this generation's story contexts")
            }
            Some(v) => {
                tracing::warn!(worker = %self.name, valkey_checkpoint = v, neo4j_checkpoint = ckpt, "Valkey is not at Neo4j's checkpoint (a crash between the two commits); re-rendering this generation's story contexts")
            }
        }
        let started = Instant::now();
        self.retry("repair Valkey", &[], || {
            let (graph, cache, gen, prefix, key) = (
                graph.clone(),
                cache.clone(),
                gen.clone(),
                prefix.clone(),
                key.clone(),
            );
            async move {
                let ids = graph.story_ids(&gen).await?;
                for chunk in ids.chunks(500) {
                    let contexts = graph.story_contexts(&gen, chunk).await?;
                    // Forced: after a switch of generation the cached revisions are another's.
                    cache
                        .apply_with(&gen, &prefix, &contexts, &key, ckpt, true)
                        .await?;
                }
                cache.apply(&gen, &prefix, &[], &key, ckpt).await
            }
        })
        .await?;
        renders.insert(render_key, started);
        Ok(())
    }
}
