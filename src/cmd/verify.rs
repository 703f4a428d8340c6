//! `projector verify`.

use super::CliError;
use crate::cli::VerifyArgs;
use engine::config::Config;
use engine::sink::graph::GraphSink;
use std::process::ExitCode;

pub async fn run(cfg: &Config, a: VerifyArgs) -> Result<ExitCode, CliError> {
    let sink = GraphSink::connect(&cfg.neo4j)?;
    let d = replay::hash::graph_digest(&sink, &a.generation).await?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"generation": a.generation, "hash": d.hash, "nodes": d.nodes, "relationships": d.relationships})
        );
    } else {
        println!(
            "generation {}: {} nodes, {} relationships, hash {}",
            a.generation, d.nodes, d.relationships, d.hash
        );
    }
    Ok(ExitCode::SUCCESS)
}
