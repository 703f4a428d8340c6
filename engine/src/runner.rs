//! Runs a projector: one worker per stream, the HTTP server, and graceful shutdown.
//!
//! Over 600 lines on purpose, for now: its two supervision loops (single instance and
//! partitioned with leases) become one `Supervisor` in issue #16's pipeline; until then
//! they stay side by side here so their shutdown and lease rules can be read together.

use crate::config::Config;
use crate::error::WriteError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::sink::cache::CacheSink;
use crate::sink::graph::GraphSink;
use crate::source::ConsumerSettings;
use crate::worker::{Exit, OnError, OnGap, Shared, Worker, WorkerConfig, WorkerError};
use std::collections::BTreeMap;
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
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Connect(#[from] crate::nats::ConnectError),
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
}

impl RunError {
    /// Refusals an operator must resolve (exit 2), as opposed to runtime failures (exit 1).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            RunError::UnknownProjector(..)
                | RunError::PartitionedGeneration { .. }
                | RunError::NotLimits { .. }
                | RunError::Layout(crate::layout::LayoutApplyError::Layout(_))
                | RunError::Connect(crate::nats::ConnectError::BadUrl { .. })
        )
    }
}

/// Refuses a projected stream whose retention is not `limits` (work-queue, interest).
async fn check_retention(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<(), RunError> {
    use async_nats::jetstream::stream::RetentionPolicy;
    let mut s = match js.get_stream(stream).await {
        Ok(s) => s,
        // A missing stream is the workers' to report (they retry until it exists).
        Err(_) => return Ok(()),
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

/// Connects to all three servers and prepares the graph schema.
pub async fn connect(cfg: &Config, health: Health, metrics: Metrics) -> Result<Shared, RunError> {
    let client = crate::nats::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(client);
    let graph = GraphSink::for_config(cfg)?;
    let cache = CacheSink::connect(&cfg.valkey).await?;
    Ok(Shared {
        js,
        graph,
        cache,
        metrics,
        health,
        blocked: Arc::new(Mutex::new(BTreeMap::new())),
        graph_gate: Arc::new(tokio::sync::Semaphore::new(
            cfg.neo4j.max_concurrent_writes.max(1),
        )),
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
        let _ = ctrl_c.await;
    }
}

/// Runs the projectors until a signal, caught up (`until_caught_up`), or a halting error.
pub async fn run(
    cfg: &Config,
    opts: RunOptions,
    router: Option<axum::Router>,
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
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| RunError::Serve {
                addr,
                message: e.to_string(),
            })?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz and the read API (/v1/..., /openapi.json)");
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
    let mut attempt = 0;
    loop {
        match shared.graph.ensure_schema().await {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempt < 30 => {
                tracing::warn!(error = %e, "Neo4j not ready for schema setup; retrying");
                tokio::time::sleep(Backoff::default().delay(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let follow_live = opts.generation.is_none();
    crate::generations::register_pointer(&shared.graph).await?;
    let generation = match &opts.generation {
        Some(g) => g.clone(),
        None => crate::generations::live(&shared.graph).await?,
    };
    // `generations list` shows when a generation was first written.
    crate::generations::mark(&shared.graph, &generation, None).await?;
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
    let mut set = tokio::task::JoinSet::new();
    let base = WorkerBase {
        cfg,
        opts: &opts,
        generation: &generation,
        follow_live,
        cache_prefix: shared.cache.gen_prefix(&generation, live),
    };
    if partitioned {
        let watcher = tokio::spawn({
            let stop_tx = stop_tx.clone();
            async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested: finishing the batches in flight");
                let _ = stop_tx.send(true);
            }
        });
        let res = run_partitioned(&base, &projectors, &shared, &stop_tx, stop_rx.clone()).await;
        watcher.abort();
        let _ = stop_tx.send(true);
        return res;
    }
    for p in &projectors {
        let blocked = shared.graph.blocked_stories(&generation, &p.name).await?;
        let sh = Shared {
            blocked: Arc::new(Mutex::new(blocked.into_iter().collect())),
            ..shared.clone()
        };
        for stream in &p.streams {
            let wc = base.worker(&p.name, stream, 0, 1);
            let name = format!("{}/{}", p.name, stream);
            // Registered before it starts, so `until_caught_up` waits for every worker.
            health.update(&format!("{}/{}/0", p.name, stream), |h| h.connected = false);
            let worker = Worker::new(wc, sh.clone(), stop_rx.clone());
            set.spawn(async move { (name, worker.run().await) });
        }
    }
    let watcher = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: finishing the batches in flight");
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
    let mut exits = Vec::new();
    let mut errors = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut stop_seen = stop_rx.clone();
    loop {
        let joined = match deadline {
            Some(d) => match tokio::time::timeout_at(d, set.join_next()).await {
                Ok(j) => j,
                Err(_) => {
                    tracing::error!(
                        secs = opts.shutdown_timeout.as_secs(),
                        "shutdown deadline passed with batches in flight; they were not acked and will be redelivered"
                    );
                    set.abort_all();
                    break;
                }
            },
            None => tokio::select! {
                j = set.join_next() => j,
                _ = stop_seen.wait_for(|s| *s) => {
                    deadline = Some(tokio::time::Instant::now() + opts.shutdown_timeout);
                    continue;
                }
            },
        };
        let Some(joined) = joined else { break };
        match joined {
            Ok((name, Ok(exit))) => exits.push((name, exit)),
            Ok((_, Err(e))) => {
                // One halting worker stops the others: an operator must look.
                let _ = stop_tx.send(true);
                errors.push(e);
            }
            Err(join) => {
                let _ = stop_tx.send(true);
                errors.push(WorkerError::Fatal {
                    stream: "?".into(),
                    error: join.to_string(),
                });
            }
        }
    }
    watcher.abort();
    let _ = stop_tx.send(true);
    if errors.is_empty() {
        Ok(exits)
    } else {
        Err(RunError::Workers(errors))
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
            let _ = stop.send(true);
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
        stream: &str,
        partition: u32,
        partitions: u32,
    ) -> WorkerConfig {
        let opts = self.opts;
        WorkerConfig {
            projector: projector.to_string(),
            stream: stream.to_string(),
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

/// One partition of one projector, running here: its workers' stop switch and how many of
/// them are still running.
struct Owned {
    stop: watch::Sender<bool>,
    workers: usize,
}

/// `run` with `[partitions] count` > 1: partitions are claimed through leases
/// (`crate::leases`); each held partition runs one worker per stream of its projector. Lost
/// or surplus partitions stop after their batch in flight; on shutdown every lease is given
/// back so the other instances take over at once.
async fn run_partitioned(
    base: &WorkerBase<'_>,
    projectors: &[crate::config::ProjectorEntry],
    shared: &Shared,
    stop_tx: &watch::Sender<bool>,
    mut stop_seen: watch::Receiver<bool>,
) -> Result<Vec<(String, Exit)>, RunError> {
    let pc = &base.cfg.partitions;
    let kv = crate::leases::bucket(&shared.js, pc, base.cfg.stream_defaults.replicas).await?;
    let mut leases: Vec<crate::leases::Leases> = projectors
        .iter()
        .map(|p| {
            crate::leases::Leases::new(
                kv.clone(),
                &p.name,
                &base.opts.instance,
                pc.count,
                pc.lease_ttl,
            )
        })
        .collect();
    let sh: Vec<Shared> = projectors
        .iter()
        .map(|_| Shared {
            blocked: Arc::new(Mutex::new(BTreeMap::new())),
            ..shared.clone()
        })
        .collect();
    for p in projectors {
        shared.metrics.init_partitioned(&p.name, pc.count);
    }
    tracing::info!(instance = %base.opts.instance, partitions = pc.count, lease_ttl_s = pc.lease_ttl.as_secs(), bucket = %pc.lease_bucket, "claiming partitions through leases");
    let mut owned: BTreeMap<(usize, u32), Owned> = BTreeMap::new();
    let mut handing_over: std::collections::BTreeSet<(usize, u32)> = Default::default();
    let mut set = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(crate::leases::tick_interval(pc.lease_ttl));
    let (mut exits, mut errors) = (Vec::new(), Vec::new());
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if deadline.is_some() && set.is_empty() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {
                if deadline.is_some() {
                    // Shutting down: keep the leases of partitions still finishing their
                    // batch (each is released as soon as its workers stop, below), so none
                    // expires and gets a second writer while the first still commits.
                    for (l, p) in leases.iter_mut().zip(projectors) {
                        match l.refresh().await {
                            Ok(lost) if lost.is_empty() => {}
                            Ok(lost) => tracing::warn!(projector = %p.name, partitions = ?lost, "leases taken by another instance while this one shuts down; their batches in flight will not commit (checkpoint moved)"),
                            Err(e) => tracing::warn!(projector = %p.name, error = %e, "lease refresh failed while shutting down; retrying next round"),
                        }
                    }
                    continue;
                }
                for (i, l) in leases.iter_mut().enumerate() {
                    let p = &projectors[i];
                    // An instance holding no partition is a ready standby while its upkeep works.
                    let upkeep = format!("{}/leases", p.name);
                    let ch = match l.tick().await {
                        Ok(ch) => {
                            shared.health.update(&upkeep, |h| {
                                h.connected = true;
                                h.last_error = None;
                            });
                            ch
                        }
                        Err(e) => {
                            shared.health.update(&upkeep, |h| {
                                h.connected = false;
                                h.last_error = Some(e.to_string());
                            });
                            shared.metrics.write_errors.with_label_values(&[&p.name, "-", "lease"]).inc();
                            tracing::warn!(projector = %p.name, error = %e, "lease upkeep failed; retrying next round (a lease not refreshed within its TTL passes to another instance)");
                            continue;
                        }
                    };
                    for part in ch.lost {
                        if let Some(o) = owned.get(&(i, part)) {
                            let _ = o.stop.send(true);
                        }
                        tracing::warn!(projector = %p.name, partition = part, "lease lost to another instance (not refreshed in time); stopping this partition's workers");
                    }
                    for part in ch.surplus {
                        if handing_over.insert((i, part)) {
                            match owned.get(&(i, part)) {
                                Some(o) => {
                                    let _ = o.stop.send(true);
                                }
                                None => {
                                    handing_over.remove(&(i, part));
                                    if let Err(e) = l.release(part).await {
                                        tracing::warn!(projector = %p.name, partition = part, error = %e, "cannot release the lease; it expires by itself");
                                    }
                                }
                            }
                            tracing::info!(projector = %p.name, partition = part, "more than a fair share of partitions; handing this one over");
                        }
                    }
                    for part in ch.acquired {
                        // Stories parked by the partition's previous holder stay blocked here.
                        match shared.graph.blocked_stories(base.generation, &p.name).await {
                            Ok(b) => sh[i].blocked.lock().unwrap_or_else(|e| e.into_inner()).extend(b),
                            Err(e) => {
                                let _ = l.release(part).await;
                                tracing::warn!(projector = %p.name, partition = part, error = %e, "cannot read the blocked stories; giving the partition back");
                                continue;
                            }
                        }
                        let (stop, rx) = watch::channel(false);
                        for stream in &p.streams {
                            let wc = base.worker(&p.name, stream, part, pc.count);
                            let name = format!("{}/{}/{}", p.name, stream, part);
                            shared.health.update(&name, |h| h.connected = false);
                            let worker = Worker::new(wc, sh[i].clone(), rx.clone());
                            set.spawn(async move { ((i, part), name, worker.run().await) });
                        }
                        owned.insert((i, part), Owned { stop, workers: p.streams.len() });
                        tracing::info!(projector = %p.name, partition = part, instance = %base.opts.instance, "partition acquired; its workers start from the stored checkpoints");
                    }
                    for t in &ch.taken_over {
                        shared.metrics.takeovers.with_label_values(&[&p.name, t.how()]).inc();
                        if t.handed_over {
                            tracing::info!(projector = %p.name, partition = t.partition, from = %t.from, "took over a partition from another instance (it handed the partition over)");
                        } else {
                            shared.metrics.takeover_gap.with_label_values(&[&p.name]).observe(t.seconds_since_refresh);
                            tracing::info!(projector = %p.name, partition = t.partition, from = %t.from, seconds_since_its_last_refresh = format!("{:.1}", t.seconds_since_refresh), lease_ttl_s = pc.lease_ttl.as_secs(), "took over a partition from another instance (its lease expired)");
                        }
                    }
                    shared.metrics.partitions_held.with_label_values(&[&p.name, &base.opts.instance]).set(l.held().len() as i64);
                }
            }
            joined = set.join_next(), if !set.is_empty() => {
                let Some(joined) = joined else { continue };
                let ((i, part), name, res) = match joined {
                    Ok(j) => j,
                    Err(join) => {
                        let _ = stop_tx.send(true);
                        errors.push(WorkerError::Fatal { stream: "?".into(), error: join.to_string() });
                        continue;
                    }
                };
                if let Some(o) = owned.get_mut(&(i, part)) {
                    o.workers -= 1;
                    if o.workers == 0 {
                        owned.remove(&(i, part));
                        if handing_over.remove(&(i, part)) || deadline.is_some() {
                            // Surplus, or shutting down: the partition's workers are done, so
                            // another instance may take it now rather than after the others.
                            if let Err(e) = leases[i].release(part).await {
                                tracing::warn!(projector = %projectors[i].name, partition = part, error = %e, "cannot release the lease; it expires by itself");
                            }
                            tracing::info!(projector = %projectors[i].name, partition = part, "partition handed over");
                        }
                    }
                }
                match res {
                    Ok(exit) => {
                        if deadline.is_none() {
                            shared.health.remove(&name);
                            // name is projector/stream/partition (set where it was spawned).
                            if let Some((projector, stream)) = name.rsplit_once('/').and_then(|(ps, _)| ps.split_once('/')) {
                                shared.metrics.forget_partition(projector, stream, part);
                            }
                        }
                        exits.push((name, exit));
                    }
                    Err(e) => {
                        // One halting worker stops the others: an operator must look.
                        let _ = stop_tx.send(true);
                        errors.push(e);
                    }
                }
            }
            _ = stop_seen.wait_for(|s| *s), if deadline.is_none() => {
                for o in owned.values() {
                    let _ = o.stop.send(true);
                }
                // Leave the fair share now: without it the other instances still count this
                // one and take its partitions only after the lease TTL, not on release.
                for (l, p) in leases.iter_mut().zip(projectors) {
                    if let Err(e) = l.leave().await {
                        tracing::warn!(projector = %p.name, error = %e, "cannot remove this instance's heartbeat; the others take its partitions when its heartbeat ages out");
                    }
                }
                deadline = Some(tokio::time::Instant::now() + base.opts.shutdown_timeout);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                tracing::error!(secs = base.opts.shutdown_timeout.as_secs(), "shutdown deadline passed with batches in flight; they were not acked and will be redelivered");
                set.abort_all();
                // Wait until the aborted workers are gone before the leases are released:
                // a commit still in flight must not land after another instance took over.
                while set.join_next().await.is_some() {}
                break;
            }
        }
    }
    for (l, p) in leases.iter_mut().zip(projectors) {
        match l.release_all().await {
            Ok(()) => {
                tracing::info!(projector = %p.name, "leases released for the other instances")
            }
            Err(e) => {
                tracing::warn!(projector = %p.name, error = %e, "cannot release the leases; they expire after the TTL")
            }
        }
    }
    if errors.is_empty() {
        Ok(exits)
    } else {
        Err(RunError::Workers(errors))
    }
}
