//! `projector dlq list|show|retry|discard`.

use super::CliError;
use crate::cli::DlqCommand;
use engine::config::Config;
use engine::dlq::{RetryTarget, Selection};
use engine::sink::{cache::CacheSink, graph::GraphSink};
use std::process::ExitCode;

pub async fn run(cfg: &Config, cmd: DlqCommand) -> Result<ExitCode, CliError> {
    let graph = GraphSink::for_config(cfg)?;
    let live = engine::generations::live(&graph).await?;
    let target_gen =
        |t: &crate::cli::DlqTarget| t.generation.clone().unwrap_or_else(|| live.clone());
    let target = match &cmd {
        DlqCommand::List { target, .. }
        | DlqCommand::Show { target, .. }
        | DlqCommand::Retry { target, .. }
        | DlqCommand::Discard { target, .. } => target,
    };
    super::known_generation(&graph, target.generation.as_deref()).await?;
    match cmd {
        DlqCommand::List { target, json } => {
            let generation = target_gen(&target);
            let parked = graph.parked(&generation, Some(&target.projector)).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&parked).expect("serializable")
                );
            } else if parked.is_empty() {
                println!(
                    "no parked events for projector {} in generation {}",
                    target.projector, generation
                );
            } else {
                for p in &parked {
                    println!(
                        "{:<40} story {:<14} {:<18} {}",
                        p.id,
                        p.story_id.as_deref().unwrap_or("-"),
                        p.kind,
                        p.reason
                    );
                }
                println!("{} parked", parked.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, target } => {
            let generation = target_gen(&target);
            let parked = graph.parked(&generation, Some(&target.projector)).await?;
            let Some(p) = parked.into_iter().find(|p| p.id == id) else {
                return Err(CliError::Usage(format!("no parked event {id} for projector {} in generation {generation} (see `projector dlq list`)", target.projector)));
            };
            let client = engine::nats::connect(&cfg.nats).await?;
            let js = async_nats::jetstream::new(client);
            println!(
                "{}",
                serde_json::to_string_pretty(&p).expect("serializable")
            );
            let dlq = js.get_stream(&cfg.dead_letters.stream).await.map_err(|e| {
                CliError::Failed(format!(
                    "dead-letter stream {}: {e}",
                    cfg.dead_letters.stream
                ))
            })?;
            match dlq.get_raw_message(p.dlq_seq).await {
                Ok(m) => {
                    for (k, v) in m.headers.iter() {
                        for v in v {
                            println!("{k}: {}", v.as_str());
                        }
                    }
                    println!("\n{}", String::from_utf8_lossy(&m.payload));
                }
                Err(e) => println!(
                    "(payload not available in {}: {e})",
                    cfg.dead_letters.stream
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Retry {
            ids,
            story,
            all,
            target,
            json,
        } => {
            let generation = target_gen(&target);
            let sel = match (all, story, ids.is_empty()) {
                (true, _, true) => Selection::All,
                (false, Some(s), true) => Selection::Story(s),
                (false, None, false) => {
                    unknown_ids(&graph, &generation, &target.projector, &ids).await?;
                    Selection::Ids(ids)
                }
                _ => {
                    return Err(CliError::Usage(
                        "give parked event ids, or --story S, or --all".into(),
                    ))
                }
            };
            let client = engine::nats::connect(&cfg.nats).await?;
            let js = async_nats::jetstream::new(client);
            let cache = CacheSink::connect(&cfg.valkey).await?;
            let cache_prefix = cache.gen_prefix(&generation, generation == live);
            let report = engine::dlq::retry(
                &RetryTarget {
                    js: &js,
                    graph: &graph,
                    cache: &cache,
                    generation: &generation,
                    projector: &target.projector,
                    subject_prefix: &cfg.subject_prefix,
                    dlq_stream: &cfg.dead_letters.stream,
                    cache_prefix: &cache_prefix,
                },
                &sel,
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serializable")
                );
            } else {
                println!("re-projected {} event(s)", report.projected.len());
                for (id, why) in &report.still_failing {
                    println!("still failing: {id}: {why}");
                }
                for id in &report.held_back {
                    println!("held back behind an earlier failure of its story: {id}");
                }
            }
            Ok(if report.still_failing.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        DlqCommand::Discard { ids, target } => {
            let generation = target_gen(&target);
            unknown_ids(&graph, &generation, &target.projector, &ids).await?;
            let n = graph.discard_parked(&generation, &ids).await?;
            println!("discarded {n} parked event(s)");
            Ok(if n as usize == ids.len() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Refuses ids that are not parked (exit 2, naming them): a typo must not pass for
/// "re-projected 0 events".
async fn unknown_ids(
    graph: &GraphSink,
    generation: &str,
    projector: &str,
    ids: &[String],
) -> Result<(), CliError> {
    let parked = graph.parked(generation, Some(projector)).await?;
    let unknown: Vec<&str> = ids
        .iter()
        .filter(|id| !parked.iter().any(|p| &p.id == *id))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "no parked event {} for projector {projector} in generation {generation} (see `projector dlq list`)",
        unknown.join(", ")
    )))
}
