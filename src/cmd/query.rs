//! `projector query ...`: read the views (`docs/views.md`).

use super::CliError;
use crate::cli::{QueryCommand, StoryFormat, ViewTarget};
use engine::config::Config;
use engine::sink::{cache::CacheSink, graph::GraphSink};
use engine::views::{self, story_view, Source};
use projections::context::StoryContext;
use serde_json::{json, Value};
use std::process::ExitCode;

fn when(ms: Option<i64>) -> String {
    ms.and_then(|ms| time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Runs a list view and prints it as JSON or one line per row.
async fn list_view(
    graph: &GraphSink,
    statement: &str,
    gen: &str,
    params: views::Params,
    json_out: bool,
    line: impl Fn(&Value) -> String,
) -> Result<ExitCode, CliError> {
    let v = views::run(graph, statement, gen, params)
        .await?
        .unwrap_or(json!([]));
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serializable")
        );
    } else {
        for row in v.as_array().into_iter().flatten() {
            println!("{}", line(row));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn opt(v: Option<String>) -> Value {
    v.map(Value::from).unwrap_or(Value::Null)
}

async fn connect(cfg: &Config, target: &ViewTarget) -> Result<(GraphSink, String, bool), CliError> {
    let unreachable = |e: engine::error::WriteError| {
        CliError::Failed(format!("cannot read from Neo4j at {}: {e}", cfg.neo4j.uri))
    };
    let graph = GraphSink::for_config(cfg).map_err(unreachable)?;
    let live = engine::generations::live(&graph)
        .await
        .map_err(unreachable)?;
    super::known_generation(&graph, target.generation.as_deref()).await?;
    let gen = target.generation.clone().unwrap_or_else(|| live.clone());
    let is_live = gen == live;
    Ok((graph, gen, is_live))
}

fn label(gen: &str, live: bool) -> String {
    if live {
        "live".into()
    } else {
        gen.to_string()
    }
}

pub async fn run(cfg: &Config, q: QueryCommand) -> Result<ExitCode, CliError> {
    match q {
        QueryCommand::Story { id, format, target } => {
            let (graph, gen, live) = connect(cfg, &target).await?;
            if matches!(format, StoryFormat::Mermaid | StoryFormat::Dot) {
                let edges = views::run(
                    &graph,
                    views::NEIGHBOURHOOD,
                    &gen,
                    vec![("id", id.clone().into())],
                )
                .await?;
                let Some(edges) = edges else {
                    eprintln!("error: no story {id} in generation {}", label(&gen, live));
                    return Ok(ExitCode::from(1));
                };
                print!(
                    "{}",
                    if format == StoryFormat::Mermaid {
                        views::mermaid(&edges)
                    } else {
                        views::dot(&edges)
                    }
                );
                return Ok(ExitCode::SUCCESS);
            }
            let cache = CacheSink::connect(&cfg.valkey).await.ok();
            let Some((ctx, source)) = story_view(&graph, cache.as_ref(), &gen, live, &id).await?
            else {
                eprintln!("error: no story {id} in generation {}", label(&gen, live));
                return Ok(ExitCode::from(1));
            };
            let source = match source {
                Source::Cache => "cache",
                Source::Neo4j => "neo4j",
            };
            if target.json || format == StoryFormat::Json {
                let mut v = serde_json::to_value(&ctx).expect("serializable");
                v["generation"] = gen.clone().into();
                v["source"] = source.into();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("serializable")
                );
                return Ok(ExitCode::SUCCESS);
            }
            print_story(&ctx, &label(&gen, live), source);
            Ok(ExitCode::SUCCESS)
        }
        QueryCommand::Timeline { id, target } => {
            let (graph, gen, live) = connect(cfg, &target).await?;
            if graph.story_version(&gen, &id).await?.is_none() {
                eprintln!("error: no story {id} in generation {}", label(&gen, live));
                return Ok(ExitCode::from(1));
            }
            let v = views::run(&graph, views::TIMELINE, &gen, vec![("id", id.into())])
                .await?
                .unwrap_or(json!([]));
            if target.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("serializable")
                );
            } else {
                for e in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<24} {:>6}  {:<40} {}",
                        when(e["event_time_ms"].as_i64()),
                        s(&e["stream"]),
                        e["seq"],
                        s(&e["subject"]),
                        s(&e["summary"])
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        QueryCommand::Decisions {
            story,
            since,
            limit,
            target,
        } => {
            let since_ms = match since {
                None => Value::Null,
                Some(t) => {
                    let t = time::OffsetDateTime::parse(
                        &t,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map_err(|_| {
                        CliError::Usage(format!(
                            "--since {t:?} is not an RFC 3339 time (2026-01-31T12:00:00Z)"
                        ))
                    })?;
                    ((t.unix_timestamp_nanos() / 1_000_000) as i64).into()
                }
            };
            let (graph, gen, _) = connect(cfg, &target).await?;
            let params = vec![
                ("story", opt(story)),
                ("since", since_ms),
                ("limit", limit.into()),
            ];
            list_view(&graph, views::DECISIONS, &gen, params, target.json, |d| {
                format!(
                    "{}  {:<16} {:<12} by {:<10} {} — {}",
                    when(d["decided_at_ms"].as_i64()),
                    s(&d["decision_id"]),
                    s(&d["story_id"]),
                    s(&d["decided_by"]),
                    s(&d["title"]),
                    s(&d["rationale"])
                )
            })
            .await
        }
        QueryCommand::Tasks {
            status,
            role,
            limit,
            target,
        } => {
            let (graph, gen, _) = connect(cfg, &target).await?;
            let params = vec![
                ("status", opt(status)),
                ("role", opt(role)),
                ("limit", limit.into()),
            ];
            list_view(&graph, views::TASKS, &gen, params, target.json, |t| {
                format!(
                    "{:<12} {:<14} {:<10} {:<11} {:<10} {}",
                    s(&t["story_id"]),
                    s(&t["task_id"]),
                    s(&t["role"]),
                    s(&t["status"]),
                    s(&t["agent_id"]),
                    s(&t["title"])
                )
            })
            .await
        }
        QueryCommand::Approvals {
            story,
            limit,
            target,
        } => {
            let (graph, gen, _) = connect(cfg, &target).await?;
            let params = vec![("story", opt(story)), ("limit", limit.into())];
            list_view(&graph, views::APPROVALS, &gen, params, target.json, |a| {
                format!(
                    "{}  {:<12} {:<16} approved by {}",
                    when(a["approved_at_ms"].as_i64()),
                    s(&a["story_id"]),
                    s(&a["plan_id"]),
                    s(&a["approved_by"])
                )
            })
            .await
        }
    }
}

fn print_story(ctx: &StoryContext, gen: &str, source: &str) {
    println!(
        "Story {}  {:?}  phase {}   (generation {gen}, from {source})",
        ctx.story_id,
        ctx.title.as_deref().unwrap_or("-"),
        ctx.phase.as_deref().unwrap_or("-")
    );
    println!("Phase history ({}):", ctx.phase_history.len());
    for p in &ctx.phase_history {
        println!(
            "  {}  {} -> {}  by {}",
            when(p.at_ms),
            p.from.as_deref().unwrap_or("?"),
            p.to.as_deref().unwrap_or("?"),
            p.by.as_deref().unwrap_or("?")
        );
    }
    let current = ctx.current_plan().map(|p| p.plan_id.clone());
    println!("Plans ({}):", ctx.plans.len());
    for p in &ctx.plans {
        let approvals: Vec<String> = p
            .approvals
            .iter()
            .map(|a| {
                format!(
                    "approved by {} at {}",
                    a.approved_by.as_deref().unwrap_or("?"),
                    when(a.approved_at_ms)
                )
            })
            .collect();
        println!(
            "  {}{:<16} v{:<3} {}",
            if Some(&p.plan_id) == current.as_ref() {
                "* "
            } else {
                "  "
            },
            p.plan_id,
            p.version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            if approvals.is_empty() {
                "not approved".to_string()
            } else {
                approvals.join("; ")
            }
        );
    }
    println!(
        "Tasks ({}, {} open):",
        ctx.tasks.len(),
        ctx.open_tasks().count()
    );
    for t in &ctx.tasks {
        println!(
            "  {:<14} {:<10} {:<11} {:<10} {}",
            t.task_id,
            t.role.as_deref().unwrap_or("-"),
            t.status.as_deref().unwrap_or("-"),
            t.agent_id.as_deref().unwrap_or("-"),
            t.title.as_deref().unwrap_or("")
        );
    }
    println!("Decisions ({}):", ctx.decisions.len());
    for d in &ctx.decisions {
        println!(
            "  {}  {:<14} by {:<10} {} — {}",
            when(d.decided_at_ms),
            d.decision_id,
            d.decided_by.as_deref().unwrap_or("?"),
            d.title.as_deref().unwrap_or(""),
            d.rationale.as_deref().unwrap_or("")
        );
    }
    println!("Milestones ({}):", ctx.milestones.len());
    for m in &ctx.milestones {
        println!("  {}  {}", when(m.reached_at_ms), m.name);
    }
}
