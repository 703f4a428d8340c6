//! `projector query ...`: read the views (`docs/views.md`).

use super::CliError;
use crate::cli::{Page, QueryCommand, StoryFormat, ViewTarget};
use crate::fmt::{count, or_unknown as u, table, when};
use engine::config::Config;
use engine::sink::{cache::CacheSink, graph::GraphSink};
use engine::views::{self, story_view, ApprovalRow, DecisionRow, Source, TaskRow, TimelineEntry};
use projections::context::StoryContext;
use serde_json::Value;
use std::process::ExitCode;

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn opt(v: Option<String>) -> Value {
    Value::from(v)
}

fn paged(mut params: views::Params, page: &Page) -> views::Params {
    params.push(("limit", page.limit.into()));
    params.push(("offset", page.offset.into()));
    params
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

/// A generation as the CLI names it: by name, marked when it is the live one.
fn label(gen: &str, live: bool) -> String {
    if live {
        format!("{gen} (live)")
    } else {
        gen.to_string()
    }
}

fn no_story(id: &str, gen: &str, live: bool) -> ExitCode {
    eprintln!("error: no story {id} in generation {}", label(gen, live));
    ExitCode::from(1)
}

pub async fn run(cfg: &Config, q: QueryCommand) -> Result<ExitCode, CliError> {
    match q {
        QueryCommand::Story { id, format, target } => {
            let (graph, gen, live) = connect(cfg, &target).await?;
            if matches!(format, StoryFormat::Mermaid | StoryFormat::Dot) {
                // The neighbourhood query answers one row even for an unknown story.
                if graph.story_version(&gen, &id).await?.is_none() {
                    return Ok(no_story(&id, &gen, live));
                }
                let edges = views::run(
                    &graph,
                    views::NEIGHBOURHOOD,
                    &gen,
                    vec![("id", id.clone().into())],
                )
                .await?
                // No row: no neighbourhood, an empty diagram.
                .unwrap_or(Value::Array(Vec::new()));
                print!(
                    "{}",
                    if format == StoryFormat::Mermaid {
                        views::mermaid(&id, &edges)
                    } else {
                        views::dot(&id, &edges)
                    }
                );
                return Ok(ExitCode::SUCCESS);
            }
            // Without Valkey the view still comes from Neo4j; say why it is slower.
            let cache = match CacheSink::connect(&cfg.valkey).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "Valkey unavailable; reading the story from Neo4j");
                    None
                }
            };
            let Some((ctx, source)) =
                story_view(&graph, cache.as_ref(), None, &gen, live, &id).await?
            else {
                return Ok(no_story(&id, &gen, live));
            };
            let source = match source {
                Source::Cache => "cache",
                Source::Neo4j(_) => "neo4j",
            };
            if target.json || format == StoryFormat::Json {
                let mut v = serde_json::to_value(&ctx).expect("serializable");
                v["generation"] = gen.clone().into();
                // As `GET /v1/stories/{id}` answers: the revision the feed speaks of.
                v["revision"] = ctx.rev.into();
                v["source"] = source.into();
                print_json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", render_story(&ctx, &label(&gen, live), source));
            Ok(ExitCode::SUCCESS)
        }
        QueryCommand::Timeline { id, target } => {
            let (graph, gen, live) = connect(cfg, &target).await?;
            if graph.story_version(&gen, &id).await?.is_none() {
                return Ok(no_story(&id, &gen, live));
            }
            let v: Vec<TimelineEntry> =
                views::rows(&graph, views::TIMELINE, &gen, vec![("id", id.into())]).await?;
            if target.json {
                print_json(&v);
            } else {
                print!(
                    "{}",
                    table(
                        &["TIME", "STREAM", "SEQ", "SUBJECT", "SUMMARY"],
                        v.iter().map(|e| vec![
                            when(e.event_time_ms),
                            u(e.stream.as_deref()).into(),
                            e.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                            u(e.subject.as_deref()).into(),
                            u(e.summary.as_deref()).into(),
                        ])
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        QueryCommand::Decisions {
            story,
            since,
            page,
            target,
        } => {
            let since_ms = Value::from(since);
            let (graph, gen, _) = connect(cfg, &target).await?;
            let params = paged(vec![("story", opt(story)), ("since", since_ms)], &page);
            let rows: Vec<DecisionRow> =
                views::rows(&graph, views::DECISIONS, &gen, params).await?;
            if target.json {
                print_json(&rows);
            } else {
                print!(
                    "{}",
                    table(
                        &[
                            "DECIDED AT",
                            "DECISION",
                            "STORY",
                            "BY",
                            "TITLE",
                            "RATIONALE"
                        ],
                        rows.iter().map(|d| vec![
                            when(d.decided_at_ms),
                            d.decision_id.clone(),
                            u(d.story_id.as_deref()).into(),
                            u(d.decided_by.as_deref()).into(),
                            u(d.title.as_deref()).into(),
                            u(d.rationale.as_deref()).into(),
                        ])
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        QueryCommand::Tasks {
            status,
            role,
            page,
            target,
        } => {
            let (graph, gen, _) = connect(cfg, &target).await?;
            let params = paged(
                vec![
                    ("status", opt(status.map(|s| s.as_str().to_string()))),
                    ("role", opt(role)),
                ],
                &page,
            );
            let rows: Vec<TaskRow> = views::rows(&graph, views::TASKS, &gen, params).await?;
            if target.json {
                print_json(&rows);
            } else {
                print!(
                    "{}",
                    table(
                        &["STORY", "TASK", "ROLE", "STATUS", "AGENT", "TITLE"],
                        rows.iter().map(|t| vec![
                            u(t.story_id.as_deref()).into(),
                            t.task_id.clone(),
                            u(t.role.as_deref()).into(),
                            u(t.status.as_deref()).into(),
                            u(t.agent_id.as_deref()).into(),
                            u(t.title.as_deref()).into(),
                        ])
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        QueryCommand::Approvals {
            story,
            page,
            target,
        } => {
            let (graph, gen, _) = connect(cfg, &target).await?;
            let params = paged(vec![("story", opt(story))], &page);
            let rows: Vec<ApprovalRow> =
                views::rows(&graph, views::APPROVALS, &gen, params).await?;
            if target.json {
                print_json(&rows);
            } else {
                print!(
                    "{}",
                    table(
                        &["APPROVED AT", "STORY", "PLAN", "APPROVED BY"],
                        rows.iter().map(|a| vec![
                            when(a.approved_at_ms),
                            u(a.story_id.as_deref()).into(),
                            u(a.plan_id.as_deref()).into(),
                            u(a.approved_by.as_deref()).into(),
                        ])
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The story as sections of text: `gen` is the generation's name (marked when live).
pub fn render_story(ctx: &StoryContext, gen: &str, source: &str) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let indent = |t: String| -> String { t.lines().map(|l| format!("  {l}\n")).collect() };
    // Writing into a String cannot fail.
    writeln!(
        o,
        "Story {}  {:?}  phase {}   (generation {gen}, from {source})",
        ctx.story_id,
        u(ctx.title.as_deref()),
        u(ctx.phase.as_deref())
    )
    .expect("a String takes every write");
    if let Some(b) = &ctx.blocked {
        writeln!(
            o,
            "BLOCKED by parked event {} ({}: {}); {} parked behind it. See `projector dlq list`.",
            b.by,
            b.kind,
            b.reason,
            count(b.behind as usize, "later event", "later events")
        )
        .expect("a String takes every write");
    }
    writeln!(
        o,
        "Phase history ({}):",
        count(ctx.phase_history.len(), "change", "changes")
    )
    .expect("a String takes every write");
    if !ctx.phase_history.is_empty() {
        o.push_str(&indent(table(
            &["AT", "FROM", "TO", "BY"],
            ctx.phase_history.iter().map(|p| {
                vec![
                    when(p.at_ms),
                    u(p.from.as_deref()).into(),
                    u(p.to.as_deref()).into(),
                    u(p.by.as_deref()).into(),
                ]
            }),
        )));
    }
    let current = ctx.current_plan().map(|p| p.plan_id.clone());
    writeln!(o, "Plans ({}):", count(ctx.plans.len(), "plan", "plans"))
        .expect("a String takes every write");
    if !ctx.plans.is_empty() {
        o.push_str(&indent(table(
            &["", "PLAN", "VERSION", "APPROVALS"],
            ctx.plans.iter().map(|p| {
                let approvals: Vec<String> = p
                    .approvals
                    .iter()
                    .map(|a| {
                        format!(
                            "approved by {} at {}",
                            u(a.approved_by.as_deref()),
                            when(a.approved_at_ms)
                        )
                    })
                    .collect();
                vec![
                    if Some(&p.plan_id) == current.as_ref() {
                        "*".into()
                    } else {
                        String::new()
                    },
                    p.plan_id.clone(),
                    p.version
                        .map(|v| format!("v{v}"))
                        .unwrap_or_else(|| "-".into()),
                    if approvals.is_empty() {
                        "not approved".to_string()
                    } else {
                        approvals.join("; ")
                    },
                ]
            }),
        )));
        o.push_str(if current.is_some() {
            "  * = the plan in effect (the one most recently approved)\n"
        } else {
            "  no plan is approved yet\n"
        });
    }
    writeln!(
        o,
        "Tasks ({}: {} open, {} failed):",
        count(ctx.tasks.len(), "task", "tasks"),
        ctx.open_tasks().count(),
        ctx.failed_tasks().count()
    )
    .expect("a String takes every write");
    if !ctx.tasks.is_empty() {
        o.push_str(&indent(table(
            &["TASK", "ROLE", "STATUS", "AGENT", "TITLE"],
            ctx.tasks.iter().map(|t| {
                vec![
                    t.task_id.clone(),
                    u(t.role.as_deref()).into(),
                    u(t.status.as_deref()).into(),
                    u(t.agent_id.as_deref()).into(),
                    u(t.title.as_deref()).into(),
                ]
            }),
        )));
    }
    writeln!(
        o,
        "Decisions ({}):",
        count(ctx.decisions.len(), "decision", "decisions")
    )
    .expect("a String takes every write");
    if !ctx.decisions.is_empty() {
        o.push_str(&indent(table(
            &["DECIDED AT", "DECISION", "BY", "TITLE", "RATIONALE"],
            ctx.decisions.iter().map(|d| {
                vec![
                    when(d.decided_at_ms),
                    d.decision_id.clone(),
                    u(d.decided_by.as_deref()).into(),
                    u(d.title.as_deref()).into(),
                    u(d.rationale.as_deref()).into(),
                ]
            }),
        )));
    }
    writeln!(
        o,
        "Milestones ({}):",
        count(ctx.milestones.len(), "milestone", "milestones")
    )
    .expect("a String takes every write");
    if !ctx.milestones.is_empty() {
        o.push_str(&indent(table(
            &["REACHED AT", "MILESTONE"],
            ctx.milestones
                .iter()
                .map(|m| vec![when(m.reached_at_ms), m.name.clone()]),
        )));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use projections::context::{ApprovalView, PhaseView, PlanView, TaskView};

    fn task(id: &str, status: &str) -> TaskView {
        TaskView {
            task_id: id.into(),
            title: None,
            role: Some("DEV".into()),
            status: Some(status.into()),
            agent_id: None,
        }
    }

    fn story() -> StoryContext {
        StoryContext {
            story_id: "US-1".into(),
            title: Some("t".into()),
            description: None,
            phase: Some("BUILD".into()),
            created_by: None,
            phase_history: vec![PhaseView {
                from: Some("DRAFT".into()),
                to: Some("BUILD".into()),
                by: None,
                at_ms: Some(1_769_940_087_150),
                seq: Some(2),
            }],
            plans: vec![
                PlanView {
                    plan_id: "plan-old".into(),
                    version: Some(1),
                    summary: None,
                    created_at_ms: Some(1),
                    approvals: vec![ApprovalView {
                        approved_by: None,
                        approved_at_ms: Some(2),
                    }],
                },
                PlanView {
                    plan_id: "plan-new".into(),
                    version: Some(2),
                    summary: None,
                    created_at_ms: Some(3),
                    approvals: vec![],
                },
            ],
            tasks: vec![
                task("T-1", "COMPLETED"),
                task("T-2", "FAILED"),
                task("T-3", "RUNNING"),
            ],
            decisions: vec![],
            milestones: vec![],
            last_v: String::new(),
            blocked: None,
            rev: 0,
            event_time_ms: 0,
        }
    }

    #[test]
    fn story_text_names_the_generation_and_counts_right() {
        let out = render_story(&story(), &label("rebuild-7", true), "cache");
        assert!(
            out.contains("(generation rebuild-7 (live), from cache)"),
            "{out}"
        );
        assert!(!out.contains("generation live,"), "{out}");
        // FAILED is not open.
        assert!(out.contains("Tasks (3 tasks: 1 open, 1 failed):"), "{out}");
        assert!(out.contains("Phase history (1 change):"), "{out}");
        assert!(out.contains("Decisions (0 decisions):"), "{out}");
        // One spelling of unknown: the phase change's missing author is "-", never "?".
        assert!(!out.contains('?'), "{out}");
        // Fixed-width timestamps.
        assert!(out.contains("2026-02-01T10:01:27.150Z"), "{out}");
    }

    #[test]
    fn the_plan_marker_is_explained_and_marks_the_approved_plan() {
        let out = render_story(&story(), "main", "neo4j");
        let marked: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with('*'))
            .collect();
        assert_eq!(marked.len(), 2, "{out}"); // the plan row and the legend
        assert!(marked[0].contains("plan-old"), "{out}");
        assert!(out.contains("* = the plan in effect"), "{out}");
        let mut none = story();
        none.plans[0].approvals.clear();
        let out = render_story(&none, "main", "neo4j");
        assert!(out.contains("no plan is approved yet"), "{out}");
        assert!(
            !out.lines().any(|l| l.trim_start().starts_with('*')),
            "{out}"
        );
    }
}
