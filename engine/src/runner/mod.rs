//! Runs projectors: connections, the HTTP server, the schema and the generation, then one
//! worker per (projector, partition) under one supervision loop ([`supervise`]): every
//! partition here (one instance), or those this instance holds a lease for.
//!
//! Graceful shutdown: a signal stops every worker after its group in flight, within
//! `--shutdown-timeout`; whatever is not committed by then is not acked and is redelivered.

mod backlog;
mod supervise;
pub mod upgrade;

pub use upgrade::{OnProjectionChange, RebuildHook, UpgradeContext};

use crate::config::Config;
use crate::error::WriteError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::source::ConsumerSettings;
use crate::worker::{Exit, OnError, OnGap, Shared, WorkerConfig, WorkerError};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;

/// The generation `run` writes when none is named.
pub const DEFAULT_GENERATION: &str = "main";

/// How long the server keeps a temporary durable (see [`WorkerConfig::consumer`]) that
/// nobody pulls from: a second line of defence behind the explicit deletion.
pub const TEMPORARY_CONSUMER_INACTIVITY: Duration = Duration::from_secs(15 * 60);

/// Options of `projector run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub projectors: Vec<String>,
    /// A fixed generation, or `None` to write whichever is live (and follow promotions).
    pub generation: Option<String>,
    pub batch_size: usize,
    pub on_error: OnError,
    pub on_gap: OnGap,
    /// A checkpoint past its stream's end: project the stream from its start, don't halt.
    pub accept_stream_reset: bool,
    pub until_caught_up: bool,
    pub metrics_addr: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    pub ready_lag: u64,
    pub publish_outbound: bool,
    /// This instance's name in the partition leases.
    pub instance: String,
    /// One transaction per stream's batch, or per partition's group of every stream.
    pub transaction_per: crate::worker::TransactionPer,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Connect(#[from] crate::nats::ConnectError),
    #[error(transparent)]
    Open(#[from] crate::connections::OpenError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("unknown projector {0:?}; configured: {1}")]
    UnknownProjector(String, String),
    #[error("cannot serve metrics on {addr}: {message}")]
    Serve { addr: SocketAddr, message: String },
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutApplyError),
    #[error(
        "generation {generation} is written in partitions ({stream} has checkpoints for {partitions:?}); \
         --until-caught-up reads a stream as one partition. Run without it (the instances share \
         the partitions), or give --generation a separate generation"
    )]
    PartitionedGeneration {
        generation: String,
        stream: String,
        partitions: Vec<u32>,
    },
    #[error("{} worker(s) failed: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Workers(Vec<WorkerError>),
    #[error(
        "{stream} has {retention} retention: a message is removed once any consumer acks it, \
         so projector's acks would take the messages other readers need (and a rebuild could \
         never read them again). Project a file mirror of it with limits retention instead \
         (docs/operations.md, \"Work-queue streams\")"
    )]
    NotLimits { stream: String, retention: String },
    #[error(
        "the live generation {generation} was created by projection version {}, this binary projects version {ours}; refusing to write it (--on-projection-change refuse). Rebuild with `projector rebuild`, run with --on-projection-change rebuild, or accept the mix with warn",
        .live_version.map(|v| v.to_string()).unwrap_or_else(|| "unknown (created before versions were recorded)".into())
    )]
    ProjectionChanged {
        generation: String,
        live_version: Option<i64>,
        ours: u32,
    },
    #[error(
        "the live generation {generation} was created by projection version {live_version}, newer than this binary's {ours}: an upgrade switched past this version. Run the newer binary; to go back, `projector rebuild` with this one"
    )]
    NewerProjection {
        generation: String,
        live_version: i64,
        ours: u32,
    },
    #[error("background rebuild: {0}")]
    Upgrade(String),
}

impl RunError {
    /// Refusals an operator must resolve (exit 2), as opposed to runtime failures (exit 1).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            RunError::UnknownProjector(..)
                | RunError::PartitionedGeneration { .. }
                | RunError::NotLimits { .. }
                | RunError::ProjectionChanged { .. }
                | RunError::NewerProjection { .. }
                | RunError::Layout(crate::layout::LayoutApplyError::Layout(_))
                | RunError::Connect(crate::nats::ConnectError::BadUrl { .. })
                | RunError::Open(crate::connections::OpenError::Nats(
                    crate::nats::ConnectError::BadUrl { .. }
                ))
        )
    }
}

/// Refuses a projected stream whose retention is not `limits` (work-queue, interest).
async fn check_retention(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<(), RunError> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::stream::RetentionPolicy;
    let mut s = match js.get_stream(stream).await {
        Ok(s) => s,
        // A missing stream is the workers' to report (they retry until it exists).
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
            if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(())
        }
        Err(e) => {
            return Err(RunError::Write(WriteError::Nats {
                message: format!("get stream {stream}: {e}"),
            }))
        }
    };
    let info = s.info().await.map_err(|e| WriteError::Nats {
        message: format!("stream info on stream {stream}: {e}"),
    })?;
    match info.config.retention {
        RetentionPolicy::Limits => Ok(()),
        other => Err(RunError::NotLimits {
            stream: stream.to_string(),
            retention: format!("{other:?}").to_lowercase(),
        }),
    }
}

/// Connects to all three servers.
pub async fn connect(cfg: &Config, health: Health, metrics: Metrics) -> Result<Shared, RunError> {
    let crate::connections::Connections { js, graph, cache } =
        crate::connections::Connections::open(cfg).await?;
    Ok(Shared {
        js,
        graph,
        cache,
        metrics,
        health,
        blocked: Arc::new(Mutex::new(Default::default())),
        graph_gate: Arc::new(tokio::sync::Semaphore::new(
            // At least 1 by config validation (`[neo4j] max_concurrent_writes`).
            cfg.neo4j.max_concurrent_writes,
        )),
        node_locks: Default::default(),
        renders: Default::default(),
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        // Err: no signal handler could be installed; shutting down is then the right answer.
        let _ = ctrl_c.await;
    }
}

/// Runs the projectors until a signal, caught up (`until_caught_up`), or a halting error.
/// A live generation of an older projection version is projected with a warning (see
/// [`run_with`] for the other policies).
pub async fn run(
    cfg: &Config,
    opts: RunOptions,
    router: Option<axum::Router>,
) -> Result<Vec<(String, Exit)>, RunError> {
    run_with(cfg, opts, router, OnProjectionChange::Warn).await
}

/// [`run`], with `on_change` deciding what a live generation of another projection version
/// does (following live only; a fixed `--generation` is written as it is).
pub async fn run_with(
    cfg: &Config,
    opts: RunOptions,
    router: Option<axum::Router>,
    on_change: OnProjectionChange,
) -> Result<Vec<(String, Exit)>, RunError> {
    let metrics = Metrics::new();
    let health = Health::new(opts.ready_lag);
    let projectors: Vec<_> = if opts.projectors.is_empty() {
        cfg.projectors.clone()
    } else {
        opts.projectors
            .iter()
            .map(|name| {
                cfg.projector(name).cloned().ok_or_else(|| {
                    RunError::UnknownProjector(
                        name.clone(),
                        cfg.projectors
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let server_stop = {
        let mut rx = stop_rx.clone();
        async move {
            // Err: the sender is gone, which also means stop.
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let shared = connect(cfg, health.clone(), metrics.clone()).await?;
    for p in &projectors {
        for s in &p.streams {
            check_retention(&shared.js, s).await?;
        }
    }
    if let Some(addr) = opts.metrics_addr {
        let mut app = crate::server::router(metrics.clone(), health.clone());
        if let Some(extra) = router {
            app = app.merge(extra);
        }
        // The read API over the same connections.
        app = app.merge(crate::api::router(
            shared.graph.clone(),
            Some(shared.cache.clone()),
            metrics.clone(),
        ));
        // The change feed and the live viewer: every instance serves every story's feed.
        let feed = crate::feed::hub::Feed::start(
            shared.graph.clone(),
            &shared.cache,
            cfg.feed.clone(),
            metrics.clone(),
            stop_rx.clone(),
        );
        app = app.merge(crate::feed::router(feed));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| RunError::Serve {
                addr,
                message: e.to_string(),
            })?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz, the read API (/v1/..., /openapi.json), the change feed (/v1/changes) and the viewer (/ui/)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(server_stop)
                .await
            {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }
    // Schema first: constraints back every MERGE.
    crate::retry::Retrier::bounded(Backoff::default(), 30)
        .run("schema setup", || shared.graph.ensure_schema())
        .await?;
    let follow_live = opts.generation.is_none();
    crate::generations::register_pointer(&shared.graph).await?;
    if follow_live && !upgrade::apply(&shared.graph, on_change, &metrics, &health).await? {
        // Stopped during the background rebuild: the old generation stays live. Err: nobody
        // listens any more, which is the same.
        let _ = stop_tx.send(true);
        return Ok(Vec::new());
    }
    let generation = match &opts.generation {
        Some(g) => g.clone(),
        None => crate::generations::live(&shared.graph).await?,
    };
    // `generations list` shows when a generation was first written, and by which versions.
    crate::generations::mark(&shared.graph, &generation, None).await?;
    let marker = crate::generations::list(&shared.graph)
        .await?
        .into_iter()
        .find(|g| g.generation == generation);
    health.set_generation(
        &generation,
        marker.as_ref().and_then(|g| g.projection_version),
        marker.and_then(|g| g.binary_version),
    );
    let live = follow_live || generation == crate::generations::live(&shared.graph).await?;
    let partitioned = cfg.partitions.count > 1 && !opts.until_caught_up;
    for p in &projectors {
        if partitioned || cfg.partitions.count == 1 {
            let count = cfg.partitions.count;
            let changed = crate::layout::apply(
                &shared.graph,
                &generation,
                &p.name,
                &p.streams,
                count,
                &shared.js,
            )
            .await?;
            for (stream, plan) in changed {
                tracing::info!(projector = %p.name, %stream, created = ?plan.create, removed = ?plan.delete, at = plan.at, "checkpoint layout set for {count} partition(s)");
            }
        } else {
            for stream in &p.streams {
                let found = shared
                    .graph
                    .checkpoints_of(&generation, &p.name, stream)
                    .await?;
                if found.keys().any(|&k| k > 0) {
                    return Err(RunError::PartitionedGeneration {
                        generation: generation.clone(),
                        stream: stream.clone(),
                        partitions: found.keys().copied().collect(),
                    });
                }
            }
        }
    }
    let base = WorkerBase {
        cfg,
        opts: &opts,
        generation: &generation,
        follow_live,
        cache_prefix: shared.cache.gen_prefix(&generation, live),
    };
    let watcher = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: finishing the batches in flight");
            // Err: every receiver is gone, so everything already stopped.
            let _ = stop_tx.send(true);
        })
    };
    if opts.until_caught_up {
        tokio::spawn(watch_caught_up(
            shared.clone(),
            stop_tx.clone(),
            stop_rx.clone(),
        ));
    }
    tokio::spawn(backlog::watch(
        shared.clone(),
        generation.clone(),
        follow_live,
        stop_rx.clone(),
    ));
    let leases = if partitioned {
        Some(supervise::leases(&base, &projectors, &shared).await?)
    } else {
        None
    };
    let res = supervise::supervise(&base, &projectors, &shared, &stop_tx, stop_rx, leases).await;
    watcher.abort();
    if opts.until_caught_up && res.is_ok() {
        summary(&shared, &generation).await;
    }
    // Err: every receiver is gone, so everything already stopped.
    let _ = stop_tx.send(true);
    res
}

/// The end of a `run --until-caught-up`, at the default log level: what this run did with
/// the events it read, and how many stories the generation has blocked.
async fn summary(sh: &Shared, generation: &str) {
    let by = sh.metrics.events_by_outcome();
    // An outcome never counted in this run is 0.
    let n = |k: &str| by.get(k).copied().unwrap_or(0);
    match sh.graph.blocked_story_count(generation).await {
        Ok(blocked) => tracing::info!(
            generation,
            projected = n("projected"),
            parked = n("parked"),
            skipped = n("duplicate") + n("ignored"),
            blocked_stories = blocked,
            "summary: {} projected, {} parked, {} skipped; {blocked} blocked stories in generation {generation}{}",
            n("projected"),
            n("parked"),
            n("duplicate") + n("ignored"),
            if blocked > 0 { " (see `projector dlq list`)" } else { "" }
        ),
        // The run itself succeeded; only the blocked count is missing from its summary.
        Err(e) => tracing::warn!(
            generation,
            error = %e,
            "summary: {} projected, {} parked, {} skipped; cannot count the blocked stories",
            n("projected"),
            n("parked"),
            n("duplicate") + n("ignored")
        ),
    }
}

/// Stops the workers once every one of them has committed its stream's last sequence.
/// Checked against the streams themselves, so an outbound event one worker just published
/// into another's stream is not missed.
async fn watch_caught_up(
    sh: Shared,
    stop: watch::Sender<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let workers = sh.health.snapshot();
        if workers.is_empty()
            || workers
                .values()
                .any(|w| w.stream.is_empty() || !w.connected)
        {
            continue;
        }
        let mut all = true;
        for w in workers.values() {
            match crate::source::bounds(&sh.js, &w.stream).await {
                Ok((_, last)) if w.checkpoint >= last => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            tracing::info!("every worker is caught up");
            stop.send_replace(true);
            return;
        }
    }
}

/// What every worker of one `run` shares; `worker` fills in the stream and partition.
struct WorkerBase<'a> {
    cfg: &'a Config,
    opts: &'a RunOptions,
    generation: &'a str,
    follow_live: bool,
    cache_prefix: String,
}

impl WorkerBase<'_> {
    fn worker(
        &self,
        projector: &str,
        streams: &[String],
        partition: u32,
        partitions: u32,
    ) -> WorkerConfig {
        let opts = self.opts;
        WorkerConfig {
            projector: projector.to_string(),
            streams: streams.to_vec(),
            partition,
            partitions,
            generation: self.generation.to_string(),
            follow_live: self.follow_live,
            cache_prefix: self.cache_prefix.clone(),
            subject_prefix: self.cfg.subject_prefix.clone(),
            dlq_subject_prefix: self.cfg.dead_letters.subject_prefix.clone(),
            batch_size: opts.batch_size,
            on_error: opts.on_error,
            on_gap: opts.on_gap,
            accept_stream_reset: opts.accept_stream_reset,
            publish_outbound: opts.publish_outbound,
            until_caught_up: opts.until_caught_up,
            consumer: ConsumerSettings {
                ack_wait: Duration::from_secs(60),
                max_ack_pending: (opts.batch_size * 4) as i64,
                // A fixed generation caught up once (a rebuild's catch-up, verify's
                // temporary build) leaves a durable nobody reads again: the caller deletes
                // it, and the server does too after this much inactivity if the caller died.
                inactive_threshold: if opts.until_caught_up && !self.follow_live {
                    TEMPORARY_CONSUMER_INACTIVITY
                } else {
                    Duration::ZERO
                },
            },
            backoff: Backoff::default(),
            idle: Duration::from_millis(if opts.until_caught_up { 300 } else { 1000 }),
        }
    }
}
