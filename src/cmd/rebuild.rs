//! `projector rebuild`, `projector generations`, and the rebuild behind `verify --against-rebuild`.

use super::CliError;
use crate::cli::{GenerationsCommand, RebuildArgs};
use engine::config::Config;
use engine::generations;
use engine::runner::{self, RunOptions};
use engine::sink::{cache::CacheSink, graph::CheckpointKey, graph::GraphSink};
use engine::worker::{OnError, OnGap};
use replay::rebuild::{build, AsOf};
use replay::replay::ReplayTarget;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Builds generation `name` from the streams and catches it up with the streams' current end.
/// Returns the checkpoint keys it holds.
pub async fn build_generation(
    cfg: &Config,
    projector: &str,
    name: &str,
    as_of: Option<AsOf>,
    batch_size: usize,
) -> Result<Vec<CheckpointKey>, CliError> {
    let Some(p) = cfg.projector(projector) else {
        return Err(CliError::Usage(format!(
            "unknown projector {projector:?}; configured: {}",
            cfg.projectors
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let client = engine::nats::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(client);
    let graph = GraphSink::for_config(cfg)?;
    let cache = CacheSink::connect(&cfg.valkey).await?;
    graph.ensure_schema().await?;
    let prefix = cache.gen_prefix(name, false);
    let target = ReplayTarget {
        js: &js,
        graph: &graph,
        cache: &cache,
        generation: name,
        cache_prefix: &prefix,
        subject_prefix: &cfg.subject_prefix,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        runner::shutdown_signal().await;
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
    .await?;
    signals.abort();
    let events: u64 = reports.iter().map(|r| r.projected + r.undecodable).sum();
    if reports.iter().any(|r| !r.completed) {
        return Err(CliError::Failed(format!(
            "rebuild of {name} interrupted after {events} events; run the same command to resume"
        )));
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        generation = name,
        events,
        seconds = format!("{secs:.1}"),
        rate = (events as f64 / secs.max(1e-9)) as u64,
        "replayed the streams into the generation"
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
    Ok(p.streams
        .iter()
        .map(|s| CheckpointKey::new(projector, s, 0))
        .collect())
}

/// A rebuild creates its generation: an existing name is refused (building into it would
/// merge with its leftovers) unless `replace` drops it first, or an interrupted build of it
/// is resumed. Then the name is marked `building` until the build completes.
async fn prepare_name(
    cfg: &Config,
    graph: &GraphSink,
    name: &str,
    replace: bool,
) -> Result<(), CliError> {
    if generations::exists(graph, name).await? {
        let state = generations::state(graph, name).await?;
        if replace {
            let cache = CacheSink::connect(&cfg.valkey).await?;
            let n = generations::drop_generation(graph, &cache, name)
                .await
                .map_err(|e| match e {
                    engine::error::WriteError::Neo4jRefused { code, message }
                        if code == "projector.LiveGeneration" =>
                    {
                        CliError::Usage(message)
                    }
                    e => e.into(),
                })?;
            println!("replacing generation {name}: dropped its {n} nodes");
        } else if state.as_deref() == Some("building") {
            tracing::info!(
                generation = name,
                "resuming the interrupted build of this generation"
            );
        } else {
            return Err(CliError::Usage(format!(
                "generation {name} exists already; building into it would mix in what it holds. Pick another --name, or pass --replace to drop it and build it anew"
            )));
        }
    }
    generations::mark(graph, name, Some("building")).await?;
    Ok(())
}

pub async fn run(cfg: &Config, a: RebuildArgs) -> Result<ExitCode, CliError> {
    let as_of = a
        .as_of
        .as_deref()
        .map(AsOf::parse)
        .transpose()
        .map_err(CliError::Usage)?;
    let graph = GraphSink::for_config(cfg)?;
    let live = generations::live(&graph).await?;
    let name = a.name.clone().unwrap_or_else(|| {
        // A name, not projected state: the wall clock is fine here.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("rebuild-{secs}")
    });
    if name == live {
        return Err(CliError::Usage(format!(
            "generation {name} is the live one; pick another --name"
        )));
    }
    prepare_name(cfg, &graph, &name, a.replace).await?;
    let keys = match build_generation(cfg, &a.projector, &name, as_of, a.batch_size as usize).await
    {
        Ok(k) => k,
        Err(e) => {
            // A refusal (a range the streams cannot serve) wrote nothing: no generation is
            // left behind either. A build that wrote stays `building`, to be resumed.
            if let Err(u) = generations::unmark_if_empty(&graph, &name).await {
                tracing::error!(generation = %name, error = %u, "could not remove the empty generation's marker");
            }
            return Err(e);
        }
    };
    generations::mark(&graph, &name, Some("built")).await?;
    if as_of.is_some() {
        if a.json {
            println!(
                "{}",
                serde_json::json!({"generation": name, "live": false, "previous": live,
                    "as_of": a.as_of, "stories": null, "dropped_nodes": null})
            );
        } else {
            println!(
                "temporal generation {name} built as of {}; live ({live}) untouched",
                a.as_of.unwrap_or_default()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Live keeps moving: catch up again until the switch finds the new generation not behind.
    let mut promoted = false;
    let streams = cfg
        .projector(&a.projector)
        .map(|p| p.streams.clone())
        .unwrap_or_default();
    let others: Vec<u32> = (1..cfg.partitions.count).collect();
    for attempt in 0..20 {
        // The build read every stream as one partition; with partitions configured, each
        // starts where that pass ended, so live workers switching over apply nothing twice.
        for s in &streams {
            let at = graph
                .checkpoint(&name, &CheckpointKey::new(&a.projector, s, 0))
                .await?
                .unwrap_or(0);
            graph
                .set_checkpoints(&name, &a.projector, s, &others, at)
                .await?;
        }
        if generations::promote(&graph, &name, &keys).await? {
            promoted = true;
            break;
        }
        tracing::info!(
            attempt,
            "live is ahead of {name}; catching up before the switch"
        );
        // Back to one partition for the next catch-up pass (nothing wrote the others).
        for s in &streams {
            graph
                .delete_checkpoints(&name, &a.projector, s, &others)
                .await?;
        }
        build_generation(cfg, &a.projector, &name, None, a.batch_size as usize).await?;
    }
    if !promoted {
        return Err(CliError::Failed(format!(
            "generation {name} kept falling behind live; it is built but not live. Run `projector rebuild --name {name}` again at a quieter time"
        )));
    }
    // Readers of `context:{story_id}` switch with the graph: re-render every story of the new
    // live generation under the live prefix.
    let cache = CacheSink::connect(&cfg.valkey).await?;
    let ids = graph.story_ids(&name).await?;
    for chunk in ids.chunks(500) {
        let contexts = graph.story_contexts(&name, chunk).await?;
        cache
            .put_contexts(&cache.gen_prefix(&name, true), &contexts, true)
            .await?;
    }
    if !a.json {
        println!(
            "generation {name} is live (was {live}); {} story contexts re-rendered",
            ids.len()
        );
    }
    let mut dropped = None;
    if !a.keep_old {
        let n = generations::drop_generation(&graph, &cache, &live).await?;
        if !a.json {
            println!("dropped generation {live} ({n} nodes)");
        }
        dropped = Some(n);
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"generation": name, "live": true, "previous": live,
                "as_of": null, "stories": ids.len(), "dropped_nodes": dropped})
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn generations(cfg: &Config, c: GenerationsCommand) -> Result<ExitCode, CliError> {
    let graph = GraphSink::for_config(cfg)?;
    match c {
        GenerationsCommand::List { json } => {
            let list = generations::list(&graph).await?;
            if json {
                let own = generations::live(&graph).await?;
                // `live`: this config's live generation; `live_for`: every pointer's.
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|g| {
                        let mut v = serde_json::to_value(g).expect("serializable");
                        v["live"] = (g.generation == own).into();
                        v
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("serializable")
                );
            } else {
                let rows = list.iter().map(|g| {
                    vec![
                        g.generation.clone(),
                        g.nodes.to_string(),
                        g.stories.to_string(),
                        g.created_ms
                            .map(crate::fmt::timestamp_ms)
                            .unwrap_or_else(|| crate::fmt::UNKNOWN.into()),
                        crate::fmt::or_unknown(g.state.as_deref()).into(),
                        g.live_for.join(", "),
                    ]
                });
                print!(
                    "{}",
                    crate::fmt::table(
                        &[
                            "GENERATION",
                            "NODES",
                            "STORIES",
                            "CREATED",
                            "STATE",
                            "LIVE FOR"
                        ],
                        rows
                    )
                );
            }
        }
        GenerationsCommand::Drop { name, yes, json } => {
            let list = generations::list(&graph).await?;
            let Some(info) = list.iter().find(|g| g.generation == name) else {
                return Err(CliError::Usage(format!(
                    "no such generation {name:?}; `projector generations list` shows the generations"
                )));
            };
            if !info.live_for.is_empty() {
                return Err(CliError::Usage(format!(
                    "generation {name} is live (pointer {}); promote another one first (projector rebuild)",
                    info.live_for.join(", ")
                )));
            }
            if !yes && !confirm(&format!("drop generation {name} ({} nodes)?", info.nodes))? {
                return Err(CliError::Usage(format!(
                    "not dropped: confirm on a terminal, or pass --yes to drop {name}"
                )));
            }
            let cache = CacheSink::connect(&cfg.valkey).await?;
            let n = generations::drop_generation(&graph, &cache, &name).await?;
            if json {
                println!("{}", serde_json::json!({"dropped": name, "nodes": n}));
            } else {
                println!("dropped generation {name} ({n} nodes)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; false without a terminal (a script must say --yes).
fn confirm(question: &str) -> Result<bool, CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr()
        .flush()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Failed(format!("reading the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
