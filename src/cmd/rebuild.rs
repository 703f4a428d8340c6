//! `projector rebuild`, `projector generations`, and the rebuild behind `verify --against-rebuild`.

use super::CliError;
use crate::cli::{GenerationsCommand, RebuildArgs};
use engine::config::Config;
use engine::generations;
use engine::sink::{cache::CacheSink, graph::GraphSink};
use replay::generation::{rebuild, RebuildRequest, Step};
use replay::rebuild::AsOf;
use std::process::ExitCode;

pub async fn run(cfg: &Config, a: RebuildArgs) -> Result<ExitCode, CliError> {
    let as_of = a
        .as_of
        .as_deref()
        .map(AsOf::parse)
        .transpose()
        .map_err(CliError::Usage)?;
    let name = a.name.clone().unwrap_or_else(|| {
        // A name, not projected state: the wall clock is fine here.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            // A clock before 1970 only makes the name `rebuild-0`.
            .unwrap_or(0);
        format!("rebuild-{secs}")
    });
    let req = RebuildRequest {
        projector: a.projector.clone(),
        name,
        as_of,
        replace: a.replace,
        keep_old: a.keep_old,
        batch_size: a.batch_size as usize,
    };
    let shown = crate::progress::show(cfg, &req.projector, &req.name, a.json).await?;
    let done = rebuild(cfg, &req, |step| match step {
        // Said with --json too: it happens before the build, which may still fail.
        Step::Replaced { nodes } => {
            println!(
                "replacing generation {}: dropped its {nodes} nodes",
                req.name
            )
        }
        Step::Live { previous, stories } if !a.json => println!(
            "generation {} is live (was {previous}); {stories} story contexts re-rendered",
            req.name
        ),
        Step::DroppedOld { generation, nodes } if !a.json => {
            println!("dropped generation {generation} ({nodes} nodes)")
        }
        Step::Live { .. } | Step::DroppedOld { .. } => {}
    })
    .await;
    shown.finish();
    let done = done?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"generation": done.generation, "live": done.live,
                "previous": done.previous, "as_of": if done.live { None } else { a.as_of.as_deref() },
                "stories": done.stories, "dropped_nodes": done.dropped_nodes})
        );
    } else if !done.live {
        println!(
            "temporal generation {} built as of {}; live ({}) untouched",
            done.generation,
            // Temporal means --as-of was given.
            a.as_of.as_deref().unwrap_or_default(),
            done.previous
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
                        g.projection_version
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| crate::fmt::UNKNOWN.into()),
                        crate::fmt::or_unknown(g.binary_version.as_deref()).into(),
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
                            "PROJECTION",
                            "BINARY",
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
