//! `projector query ...`: read the views.

use super::CliError;
use crate::cli::QueryCommand;
use engine::config::Config;
use engine::sink::{cache::CacheSink, graph::GraphSink};
use projections::context::StoryContext;
use std::process::ExitCode;

fn when(ms: Option<i64>) -> String {
    ms.and_then(|ms| time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

pub async fn run(cfg: &Config, q: QueryCommand) -> Result<ExitCode, CliError> {
    match q {
        QueryCommand::Story {
            id,
            generation,
            json,
        } => {
            let graph = GraphSink::for_config(cfg)
                .map_err(|e| CliError::Failed(format!("Neo4j at {}: {e}", cfg.neo4j.uri)))?;
            let live = engine::generations::live(&graph).await.map_err(|e| {
                CliError::Failed(format!("cannot read from Neo4j at {}: {e}", cfg.neo4j.uri))
            })?;
            let gen = generation.unwrap_or_else(|| live.clone());
            let label = if gen == live {
                "live".to_string()
            } else {
                gen.clone()
            };
            // Staleness is ruled out by version: the cache is used only if it carries the
            // story's newest version key as the graph has it.
            let Some(version) = graph.story_version(&gen, &id).await? else {
                eprintln!("error: no story {id} in generation {label}");
                return Ok(ExitCode::from(1));
            };
            let cache = CacheSink::connect(&cfg.valkey).await.ok();
            let prefix = cache
                .as_ref()
                .map(|c| c.gen_prefix(&gen, gen == live))
                .unwrap_or_default();
            let mut source = "neo4j";
            let mut ctx: Option<StoryContext> = None;
            if let Some(c) = &cache {
                if let Ok(Some(bytes)) = c.get_context(&prefix, &id).await {
                    if let Ok(cached) = serde_json::from_slice::<StoryContext>(&bytes) {
                        if cached.last_v == version {
                            ctx = Some(cached);
                            source = "cache";
                        }
                    }
                }
            }
            let ctx = match ctx {
                Some(c) => c,
                None => {
                    let mut found = graph
                        .story_contexts(&gen, std::slice::from_ref(&id))
                        .await?;
                    let c = found.pop().ok_or_else(|| {
                        CliError::Failed(format!("no story {id} in generation {label}"))
                    })?;
                    if let Some(cache) = &cache {
                        // Repopulate; a failure here only costs the next reader a graph read.
                        if let Err(e) = cache.put_contexts(&prefix, std::slice::from_ref(&c)).await
                        {
                            tracing::warn!(error = %e, "could not refresh the cached context");
                        }
                    }
                    c
                }
            };
            if json {
                let mut v = serde_json::to_value(&ctx).expect("serializable");
                v["generation"] = gen.clone().into();
                v["source"] = source.into();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("serializable")
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "Story {}  {:?}  phase {}   (generation {label}, from {source})",
                ctx.story_id,
                ctx.title.as_deref().unwrap_or("-"),
                ctx.phase.as_deref().unwrap_or("-")
            );
            match &ctx.current_plan {
                Some(p) if p.approved => println!(
                    "Current plan: {} (v{}) approved by {} at {}",
                    p.plan_id,
                    p.version
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "?".into()),
                    p.approved_by.as_deref().unwrap_or("?"),
                    when(p.approved_at_ms)
                ),
                Some(p) => println!("Current plan: {} (not approved)", p.plan_id),
                None => println!("Current plan: none"),
            }
            println!("Open tasks ({}):", ctx.open_tasks.len());
            for t in &ctx.open_tasks {
                println!(
                    "  {:<14} {:<10} {:<11} {}",
                    t.task_id,
                    t.role.as_deref().unwrap_or("-"),
                    t.status.as_deref().unwrap_or("-"),
                    t.title.as_deref().unwrap_or("")
                );
            }
            println!("Latest decisions ({}):", ctx.latest_decisions.len());
            for d in &ctx.latest_decisions {
                println!(
                    "  {:<14} {}  by {:<10} {} — {}",
                    d.decision_id,
                    when(d.decided_at_ms),
                    d.decided_by.as_deref().unwrap_or("?"),
                    d.title.as_deref().unwrap_or(""),
                    d.rationale.as_deref().unwrap_or("")
                );
            }
            println!("Milestones ({}):", ctx.milestones.len());
            for m in &ctx.milestones {
                println!("  {:<14} {}", m.name, when(m.reached_at_ms));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
