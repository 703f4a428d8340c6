//! A rebuild from start to switch: claim the name, replay the streams into it, catch up with
//! live, switch the live pointer, re-render the live cache, drop the old generation. The
//! `projector rebuild` and `verify --against-rebuild` commands call this and only print.

use crate::rebuild::{build, AsOf};
use crate::replay::{ReplayError, ReplayTarget};
use engine::config::Config;
use engine::error::WriteError;
use engine::generations;
use engine::runner::{self, RunError, RunOptions};
use engine::sink::{cache::CacheSink, graph::CheckpointKey, graph::GraphSink};
use engine::worker::{OnError, OnGap};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a rebuild stopped.
#[derive(Debug, Error)]
pub enum RebuildError {
    /// The request cannot be served as asked (a name in use, the live generation, an
    /// unknown projector); nothing was written.
    #[error("{0}")]
    BadInput(String),
    /// It ran and did not finish; the message says what to do.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Connect(#[from] engine::nats::ConnectError),
}

impl RebuildError {
    /// Bad input (exit 2 at the CLI) rather than a runtime failure.
    pub fn is_bad_input(&self) -> bool {
        match self {
            RebuildError::BadInput(_) => true,
            RebuildError::Replay(e) => e.is_bad_input(),
            RebuildError::Run(e) => e.needs_operator(),
            RebuildError::Connect(e) => matches!(e, engine::nats::ConnectError::BadUrl { .. }),
            RebuildError::Failed(_) | RebuildError::Write(_) => false,
        }
    }
}

/// What to rebuild.
#[derive(Debug, Clone)]
pub struct RebuildRequest {
    pub projector: String,
    /// The new generation's name.
    pub name: String,
    /// A temporal generation: built up to this point, never made live.
    pub as_of: Option<AsOf>,
    /// Drop an existing generation of that name first.
    pub replace: bool,
    /// Keep the old live generation after the switch.
    pub keep_old: bool,
    pub batch_size: usize,
}

/// What a rebuild did, step by step, for the caller to print as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An existing generation of the name was dropped (`replace`).
    Replaced { nodes: u64 },
    /// The new generation is live instead of `previous`; this many story contexts were
    /// re-rendered.
    Live { previous: String, stories: usize },
    /// The previous live generation was dropped.
    DroppedOld { generation: String, nodes: u64 },
}

/// How a rebuild ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    pub generation: String,
    /// The live generation when the rebuild started.
    pub previous: String,
    /// Whether it was made live (a temporal generation never is).
    pub live: bool,
    pub stories: Option<usize>,
    pub dropped_nodes: Option<u64>,
}

/// How many times live may move ahead of the new generation before the switch gives up.
const SWITCH_ATTEMPTS: usize = 20;

/// Builds `req.name` and, unless it is temporal, switches live to it. `on_step` hears each
/// visible step as it happens. A refusal (a name in use, a range the streams cannot serve)
/// leaves no generation behind; a build that wrote and was interrupted stays `building`,
/// and the same request resumes it.
pub async fn rebuild(
    cfg: &Config,
    req: &RebuildRequest,
    mut on_step: impl FnMut(Step),
) -> Result<Rebuilt, RebuildError> {
    let graph = GraphSink::for_config(cfg)?;
    let live = generations::live(&graph).await?;
    let name = req.name.as_str();
    if name == live {
        return Err(RebuildError::BadInput(format!(
            "generation {name} is the live one; pick another --name"
        )));
    }
    if let Some(nodes) = prepare_name(cfg, &graph, name, req.replace).await? {
        on_step(Step::Replaced { nodes });
    }
    let keys = match build_generation(cfg, &req.projector, name, req.as_of, req.batch_size).await {
        Ok(k) => k,
        Err(e) => {
            // A refusal (a range the streams cannot serve) wrote nothing: no generation is
            // left behind either. A build that wrote stays `building`, to be resumed.
            if let Err(u) = generations::unmark_if_empty(&graph, name).await {
                tracing::error!(generation = %name, error = %u, "could not remove the empty generation's marker");
            }
            return Err(e);
        }
    };
    generations::mark(&graph, name, Some("built")).await?;
    let mut done = Rebuilt {
        generation: name.to_string(),
        previous: live.clone(),
        live: false,
        stories: None,
        dropped_nodes: None,
    };
    if req.as_of.is_some() {
        return Ok(done);
    }
    switch(cfg, &graph, req, &keys).await?;
    done.live = true;
    // Readers of `context:{story_id}` switch with the graph: re-render every story of the new
    // live generation under the live prefix.
    let cache = CacheSink::connect(&cfg.valkey).await?;
    let ids = graph.story_ids(name).await?;
    for chunk in ids.chunks(500) {
        let contexts = graph.story_contexts(name, chunk).await?;
        cache
            .put_contexts(name, &cache.gen_prefix(name, true), &contexts, true)
            .await?;
    }
    // Feed clients learn of the switch after the new views are in place (D68).
    cache.log_generation(name).await?;
    done.stories = Some(ids.len());
    on_step(Step::Live {
        previous: live.clone(),
        stories: ids.len(),
    });
    if !req.keep_old {
        let nodes = generations::drop_generation(&graph, &cache, &live).await?;
        on_step(Step::DroppedOld {
            generation: live.clone(),
            nodes,
        });
        done.dropped_nodes = Some(nodes);
    }
    Ok(done)
}

/// Promotes the built generation, catching up again while live keeps moving ahead of it.
async fn switch(
    cfg: &Config,
    graph: &GraphSink,
    req: &RebuildRequest,
    keys: &[CheckpointKey],
) -> Result<(), RebuildError> {
    let name = req.name.as_str();
    let streams = match cfg.projector(&req.projector) {
        Some(p) => p.streams.clone(),
        None => return Err(unknown_projector(cfg, &req.projector)),
    };
    let others: Vec<u32> = (1..cfg.partitions.count).collect();
    for attempt in 0..SWITCH_ATTEMPTS {
        // The build read every stream as one partition; with partitions configured, each
        // starts where that pass ended, so live workers switching over apply nothing twice.
        for s in &streams {
            let at = graph
                .checkpoint(name, &CheckpointKey::new(&req.projector, s, 0))
                .await?
                // No checkpoint: the stream was empty when built, so nothing was read.
                .unwrap_or(0);
            graph
                .set_checkpoints(name, &req.projector, s, &others, at)
                .await?;
        }
        if generations::promote(graph, name, keys).await? {
            return Ok(());
        }
        tracing::info!(
            attempt,
            "live is ahead of {name}; catching up before the switch"
        );
        // Back to one partition for the next catch-up pass (nothing wrote the others).
        for s in &streams {
            graph
                .delete_checkpoints(name, &req.projector, s, &others)
                .await?;
        }
        build_generation(cfg, &req.projector, name, None, req.batch_size).await?;
    }
    Err(RebuildError::Failed(format!(
        "generation {name} kept falling behind live; it is built but not live. Run `projector rebuild --name {name}` again at a quieter time"
    )))
}

/// A rebuild creates its generation: an existing name is refused (building into it would
/// merge with its leftovers) unless `replace` drops it first (`Some(nodes dropped)`), or an
/// interrupted build of it is resumed. Then the name is marked `building` until the build
/// completes.
async fn prepare_name(
    cfg: &Config,
    graph: &GraphSink,
    name: &str,
    replace: bool,
) -> Result<Option<u64>, RebuildError> {
    let mut dropped = None;
    if generations::exists(graph, name).await? {
        let state = generations::state(graph, name).await?;
        if replace {
            let cache = CacheSink::connect(&cfg.valkey).await?;
            let n = generations::drop_generation(graph, &cache, name)
                .await
                .map_err(|e| match e {
                    WriteError::Neo4jRefused { code, message }
                        if code == "projector.LiveGeneration" =>
                    {
                        RebuildError::BadInput(message)
                    }
                    e => e.into(),
                })?;
            dropped = Some(n);
        } else if state.as_deref() == Some("building") {
            tracing::info!(
                generation = name,
                "resuming the interrupted build of this generation"
            );
        } else {
            return Err(RebuildError::BadInput(format!(
                "generation {name} exists already; building into it would mix in what it holds. Pick another --name, or pass --replace to drop it and build it anew"
            )));
        }
    }
    generations::mark(graph, name, Some("building")).await?;
    Ok(dropped)
}

fn unknown_projector(cfg: &Config, projector: &str) -> RebuildError {
    RebuildError::BadInput(format!(
        "unknown projector {projector:?}; configured: {}",
        cfg.projectors
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Builds generation `name` from the streams and catches it up with the streams' current end
/// (not for a temporal build). Returns the checkpoint keys it holds. SIGINT/SIGTERM stop it
/// between batches; it then fails saying the same command resumes.
pub async fn build_generation(
    cfg: &Config,
    projector: &str,
    name: &str,
    as_of: Option<AsOf>,
    batch_size: usize,
) -> Result<Vec<CheckpointKey>, RebuildError> {
    let Some(p) = cfg.projector(projector) else {
        return Err(unknown_projector(cfg, projector));
    };
    let client = engine::nats::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(client);
    let graph = GraphSink::for_config(cfg)?;
    let cache = CacheSink::connect(&cfg.valkey).await?;
    graph.ensure_schema().await?;
    let prefix = cache.gen_prefix(name, false);
    let parking =
        crate::parking::Parking::build(&graph, name, projector, &cfg.dead_letters.subject_prefix)
            .await?;
    let target = ReplayTarget {
        js: &js,
        graph: &graph,
        cache: &cache,
        generation: name,
        cache_prefix: &prefix,
        subject_prefix: &cfg.subject_prefix,
        parking: &parking,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        runner::shutdown_signal().await;
        // The build may have ended and dropped the receiver: then nobody needs the stop.
        let _ = stop_tx.send(true);
    });
    let started = Instant::now();
    let mut last_log = Instant::now();
    let reports = build(
        &target,
        projector,
        &p.streams,
        as_of,
        batch_size,
        cfg.neo4j.max_concurrent_writes,
        |stream, done, to| {
            if last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(generation = name, stream, done, to, "rebuilding");
            }
        },
        &stop_rx,
    )
    .await;
    signals.abort();
    let reports = reports?;
    let events: u64 = reports
        .iter()
        .map(|r| r.projected + r.undecodable + r.parked + r.discarded)
        .sum();
    if reports.iter().any(|r| !r.completed) {
        return Err(RebuildError::Failed(format!(
            "rebuild of {name} interrupted after {events} events; run the same command to resume"
        )));
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        generation = name,
        events,
        seconds = format!("{secs:.1}"),
        rate = (events as f64 / secs.max(1e-9)) as u64,
        parked = reports.iter().map(|r| r.parked).sum::<u64>(),
        discarded = reports.iter().map(|r| r.discarded).sum::<u64>(),
        "replayed the streams into the generation (parked: left out as live left them out, D59)"
    );
    if as_of.is_none() {
        // Events that arrived during the replay: the same workers as `run`, into `name`.
        let caught_up = runner::run(
            cfg,
            RunOptions {
                projectors: vec![projector.to_string()],
                generation: Some(name.to_string()),
                batch_size: batch_size.min(1000),
                on_error: OnError::Park,
                on_gap: OnGap::Halt,
                accept_stream_reset: false,
                until_caught_up: true,
                metrics_addr: None,
                shutdown_timeout: Duration::from_secs(30),
                ready_lag: u64::MAX,
                publish_outbound: false,
                instance: "rebuild".into(),
                transaction_per: Default::default(),
            },
            None,
        )
        .await;
        // The catch-up durables are one-off: gone on every path, or the server keeps them
        // (with whatever was pending) until their inactivity threshold.
        let cleanup = engine::source::delete_generation_consumers(
            &js,
            projector,
            name,
            &p.streams,
            cfg.partitions.count,
        )
        .await;
        caught_up?;
        cleanup?;
    }
    // At the default log level: what the replay did (the catch-up logs its own summary).
    let projected: u64 = reports.iter().map(|r| r.projected).sum();
    let parked: u64 = reports.iter().map(|r| r.parked).sum();
    let discarded: u64 = reports.iter().map(|r| r.discarded).sum();
    let skipped: u64 = reports.iter().map(|r| r.undecodable).sum();
    let blocked = graph.blocked_story_count(name).await?;
    tracing::info!(
        generation = name,
        projected,
        parked,
        discarded,
        skipped,
        blocked_stories = blocked,
        "summary: {projected} projected, {parked} parked, {discarded} discarded by an operator, {skipped} skipped by the replay; {blocked} blocked stories in generation {name}"
    );
    Ok(p.streams
        .iter()
        .map(|s| CheckpointKey::new(projector, s, 0))
        .collect())
}

/// Switches live to the built generation `name` holding every projector of `projectors`
/// (their checkpoint keys `keys`), catching up again while live keeps moving ahead, then
/// re-renders the live cache from it. Returns the story contexts re-rendered. The switch of
/// `run --on-projection-change rebuild` (`crate::upgrade`); `rebuild` keeps its own.
pub async fn switch_live(
    cfg: &Config,
    projectors: &[String],
    name: &str,
    keys: &[CheckpointKey],
    batch_size: usize,
) -> Result<usize, RebuildError> {
    let graph = GraphSink::for_config(cfg)?;
    let others: Vec<u32> = (1..cfg.partitions.count).collect();
    let mut switched = false;
    for attempt in 0..SWITCH_ATTEMPTS {
        // As in `switch`: partitions start where the one-partition build ended.
        for projector in projectors {
            let Some(p) = cfg.projector(projector) else {
                return Err(unknown_projector(cfg, projector));
            };
            for s in &p.streams {
                let at = graph
                    .checkpoint(name, &CheckpointKey::new(projector, s, 0))
                    .await?
                    // No checkpoint: the stream was empty when built, so nothing was read.
                    .unwrap_or(0);
                graph
                    .set_checkpoints(name, projector, s, &others, at)
                    .await?;
            }
        }
        if generations::promote(&graph, name, keys).await? {
            switched = true;
            break;
        }
        tracing::info!(
            attempt,
            "live is ahead of {name}; catching up before the switch"
        );
        for projector in projectors {
            if let Some(p) = cfg.projector(projector) {
                for s in &p.streams {
                    graph
                        .delete_checkpoints(name, projector, s, &others)
                        .await?;
                }
            }
            build_generation(cfg, projector, name, None, batch_size).await?;
        }
    }
    if !switched {
        return Err(RebuildError::Failed(format!(
            "generation {name} kept falling behind live; it is built but not live"
        )));
    }
    let cache = CacheSink::connect(&cfg.valkey).await?;
    let ids = graph.story_ids(name).await?;
    for chunk in ids.chunks(500) {
        let contexts = graph.story_contexts(name, chunk).await?;
        cache
            .put_contexts(name, &cache.gen_prefix(name, true), &contexts, true)
            .await?;
    }
    // Feed clients learn of the switch after the new views are in place (D68).
    cache.log_generation(name).await?;
    Ok(ids.len())
}
