//! The pipeline of one partition of one projector: stream sources -> route -> one committer
//! -> acks. In that order, and each step in its own module:
//!
//! - [`fetch`]: one pull consumer per stream, positioned at its stored checkpoint; waits for
//!   the first message of any stream, then takes what every stream already has (group
//!   commit), and checks each stream's sequence (duplicates, redeliveries, gaps).
//! - [`route`]: what each message becomes (project, park, another partition's), through
//!   [`projections::ingest`], in one deterministic order across the streams.
//! - [`commit`]: dead letters (confirmed), then **one** Neo4j transaction with the graph
//!   writes of every stream and every stream's checkpoint, then the Valkey step, then the
//!   outbox publish.
//! - [`recovery`]: what a failure does ([`crate::error::Action`]): isolate the offending
//!   event (one event per transaction, then park it), halt, reposition; gaps and stream
//!   resets.
//! - [`start`]: start-up of each stream (checkpoint, reset checks, cache repair, outbox
//!   drain, consumer position).
//! - [`ack`]: the only place a message is acknowledged, after its effects are committed.
//! - [`events`]: metrics and log lines of a committed group.
//!
//! No transaction slot or lock is shared with another stream of the same partition: the
//! streams are one transaction.

mod ack;
mod archive;
mod commit;
mod events;
mod fetch;
mod node_locks;
mod recovery;
mod route;
mod start;

pub use node_locks::NodeLocks;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::{Backoff, Retrier};
use crate::sink::cache::CacheSink;
use crate::sink::graph::GraphSink;
use crate::source::ConsumerSettings;
use async_nats::jetstream;
use fetch::Source;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::watch;

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

/// What one transaction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionPer {
    /// One worker per stream of a partition, each committing its own batches; at most
    /// `[neo4j] max_concurrent_writes` transactions at once (the default: fastest measured
    /// on a 2-core Neo4j, docs/benchmarks.md).
    #[default]
    Stream,
    /// One worker per partition committing what all its streams hold in one transaction:
    /// no waits between streams of one process, one transaction at a time per partition.
    Partition,
}

/// Everything the worker of one partition needs to know about its job.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub projector: String,
    /// The projector's streams; one source each, one transaction for all.
    pub streams: Vec<String>,
    pub partition: u32,
    /// Partitions of the projector; events of other partitions are acked and skipped.
    pub partitions: u32,
    pub generation: String,
    /// Write whatever generation is live (re-resolved at start and after a promotion).
    pub follow_live: bool,
    /// Valkey key prefix of this generation's contexts.
    pub cache_prefix: String,
    /// Prefix in front of catalog subjects (stripped before decoding).
    pub subject_prefix: String,
    pub dlq_subject_prefix: String,
    /// Most messages taken from one stream for one transaction.
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
    /// How long to wait for a first message before checking whether to stop.
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
    /// Per projector, the parking rule's state (D58): blocked (story, stream) pairs, the
    /// lifts and rulings recorded by operators' decisions and refused writes.
    pub blocked: Arc<Mutex<projections::blocking::Blocks>>,
    /// Admits graph transactions (`[neo4j] max_concurrent_writes` at a time, across the
    /// partitions this process holds).
    pub graph_gate: Arc<tokio::sync::Semaphore>,
    /// Stories and agents being committed by a worker of this process ([`NodeLocks`]).
    pub node_locks: Arc<NodeLocks>,
    /// Full renders of a generation's contexts under a cache prefix, and when each started:
    /// workers starting together render once, not once each ([`ContextRenders`]).
    pub renders: ContextRenders,
}

/// When this process last started rendering every story context of (generation, cache
/// prefix), behind one lock so that only one full render runs at a time.
///
/// A stream whose Valkey checkpoint is behind Neo4j's needs every context to reflect at
/// least the commits up to its Neo4j checkpoint. A render that started after that checkpoint
/// was read covers them (it reads the committed graph, every story), so only the Valkey
/// checkpoint moves. Without this, every stream of a new generation rendered every context
/// at once (40 MB more at the end of a rebuild of 3,666 stories).
pub type ContextRenders = Arc<tokio::sync::Mutex<BTreeMap<(String, String), Instant>>>;

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was requested; the batch in flight was finished.
    Stopped,
    /// `until_caught_up`: every stream's checkpoint reached its stream's last sequence;
    /// `(stream, checkpoint)` of each.
    CaughtUp { checkpoints: Vec<(String, u64)> },
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
    #[error(
        "{stream} seq {seq} ({subject}): cannot park the event: {error}; halting, nothing acked"
    )]
    CannotPark {
        stream: String,
        seq: u64,
        subject: String,
        error: String,
    },
    #[error("{streams}: {error} after the Neo4j commit (at the {stage} step); halting, nothing acked. The graph holds the events: a restart repairs Valkey and publishes the outbox")]
    AfterCommit {
        streams: String,
        stage: String,
        error: String,
    },
    #[error("{stream}: {error}")]
    Fatal { stream: String, error: String },
    #[error(
        "the live generation {generation} was created by projection version {} and this binary projects version {ours}: it does not write a generation of another version (an upgrade switched live to it). Run this version's successor, or `projector rebuild` to go back (docs/operations.md, \"Upgrades\")",
        .live_version.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
    )]
    Fenced {
        generation: String,
        live_version: Option<i64>,
        ours: u32,
    },
}

/// The worker of one (projector, partition): every stream's source and one committer.
pub struct Worker {
    cfg: WorkerConfig,
    sh: Shared,
    /// `projector/partition`, for logs.
    name: String,
    sources: Vec<Source>,
    shutdown: watch::Receiver<bool>,
    /// Set when every source must be positioned again at the (re-read) checkpoints.
    reposition: bool,
}

impl Worker {
    pub fn new(cfg: WorkerConfig, sh: Shared, shutdown: watch::Receiver<bool>) -> Worker {
        let name = format!("{}/{}", cfg.projector, cfg.partition);
        let sources = cfg
            .streams
            .iter()
            .map(|s| Source::new(&cfg.projector, s, cfg.partition))
            .collect();
        Worker {
            cfg,
            sh,
            name,
            sources,
            shutdown,
            reposition: false,
        }
    }

    /// Shutdown requested, or nobody can request it any more (the supervisor is gone).
    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }

    /// The retry loop for a step of one stream (counted under its name).
    fn retrier(&self, src: usize) -> Retrier {
        let s = &self.sources[src];
        Retrier::new(self.cfg.backoff, self.shutdown.clone())
            .counted(self.sh.metrics.clone(), &self.cfg.projector, &s.stream)
            .reporting(self.sh.health.clone(), &s.name)
    }

    /// The retry loop for a step of the worker's transaction (stream label: its stream, or
    /// `*` when it holds several); every stream's health shows it.
    fn group_retrier(&self) -> Retrier {
        let label = match self.sources.as_slice() {
            [one] => one.stream.as_str(),
            _ => "*",
        };
        let mut r = Retrier::new(self.cfg.backoff, self.shutdown.clone()).counted(
            self.sh.metrics.clone(),
            &self.cfg.projector,
            label,
        );
        for s in &self.sources {
            r = r.reporting(self.sh.health.clone(), &s.name);
        }
        r
    }

    fn fatal(&self, src: usize, e: crate::error::WriteError) -> WorkerError {
        WorkerError::Fatal {
            stream: self.sources[src].stream.clone(),
            error: e.to_string(),
        }
    }

    /// Runs until shutdown, caught up (`until_caught_up`), or a halting condition.
    pub async fn run(mut self) -> Result<Exit, WorkerError> {
        for s in &self.sources {
            self.sh.health.update(&s.name, |h| h.connected = false);
            self.sh.metrics.init_worker(&self.cfg.projector, &s.stream);
        }
        if self.sources.len() > 1 {
            // The label of the partition's transaction steps (see `group_retrier`).
            self.sh.metrics.init_worker(&self.cfg.projector, "*");
        }
        loop {
            if self.stopping() {
                return Ok(self.exit());
            }
            // (Re)start: checkpoints from Neo4j, repair the cache, position the durables.
            self.start().await?;
            if self.consume().await? {
                return Ok(self.exit());
            }
        }
    }

    fn exit(&self) -> Exit {
        if self.cfg.until_caught_up {
            Exit::CaughtUp {
                checkpoints: self
                    .sources
                    .iter()
                    .map(|s| (s.stream.clone(), s.checkpoint))
                    .collect(),
            }
        } else {
            Exit::Stopped
        }
    }

    /// Reads and commits groups until exit (`true`) or until every source must be
    /// positioned again (`false`).
    async fn consume(&mut self) -> Result<bool, WorkerError> {
        loop {
            if self.stopping() {
                return Ok(true);
            }
            let fetched = self.gather().await;
            if fetched.is_empty() {
                continue;
            }
            // The lag counts what is fetched but not committed: set after a commit alone, it
            // would read 0 while the next group (already delivered) is still being written.
            for f in &fetched {
                if let Some(head) = f
                    .raw
                    .last()
                    // No metadata: the sequence check reports it; the lag waits a group.
                    .and_then(|m| m.info().ok())
                    .map(|i| i.stream_sequence + i.pending)
                {
                    let lag = head.saturating_sub(self.sources[f.src].checkpoint);
                    self.set_lag(f.src, lag);
                }
            }
            let started = Instant::now();
            let (items, anomalies) = self.route(fetched).await?;
            if !items.is_empty() {
                self.commit(items, started).await?;
                if std::mem::take(&mut self.reposition) {
                    return Ok(false);
                }
            }
            // A group interrupted by shutdown is not committed: a hole found behind it must
            // not move a checkpoint past its events.
            if self.stopping() {
                return Ok(true);
            }
            for (src, anomaly) in anomalies {
                self.handle_anomaly(src, anomaly).await?;
            }
        }
    }
}
