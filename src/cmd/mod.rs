//! One module per subcommand; each returns an exit code or a [`CliError`].

mod bench;
mod bench_feed;
mod dlq;
mod query;
mod rebuild;
mod replay;
mod run;
mod streams;
mod surface;
mod verify;
mod watch;

use crate::cli::{Cli, Command};
use std::process::ExitCode;
use thiserror::Error;

/// Errors that end a command, with the exit code they map to.
#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] engine::config::ConfigError),
    #[error(transparent)]
    Connect(#[from] engine::nats::ConnectError),
    #[error(transparent)]
    Streams(#[from] engine::streams::StreamError),
    #[error(transparent)]
    Run(#[from] engine::runner::RunError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Write(#[from] engine::error::WriteError),
    #[error(transparent)]
    Replay(#[from] ::replay::replay::ReplayError),
    #[error(transparent)]
    Rebuild(#[from] ::replay::generation::RebuildError),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Connect(engine::nats::ConnectError::BadUrl { .. }) => 2,
            CliError::Run(e) if e.needs_operator() => 2,
            CliError::Replay(e) if e.is_bad_input() => 2,
            CliError::Rebuild(e) if e.is_bad_input() => 2,
            _ => 1,
        }
    }
}

/// Refuses a `--generation` that names no generation (exit 2): a typo must not read as an
/// empty graph or write into a generation nobody sees. `None` (the live one) always passes.
pub(crate) async fn known_generation(
    graph: &engine::sink::graph::GraphSink,
    name: Option<&str>,
) -> Result<(), CliError> {
    match name {
        Some(g) if !engine::generations::exists(graph, g).await? => Err(CliError::Usage(format!(
            "no such generation {g:?}; `projector generations list` shows the generations"
        ))),
        _ => Ok(()),
    }
}

/// Commands that need Neo4j and end by themselves: they fail after `[neo4j]
/// connect_timeout` when it does not answer. The daemon (`run` without --until-caught-up)
/// retries instead; `streams status` bounds its Neo4j part itself (its streams part stands).
fn one_shot_on_neo4j(c: &Command) -> bool {
    match c {
        Command::Run(a) => a.until_caught_up,
        Command::Streams(_)
        | Command::Bench(_)
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Watch(_)
        | Command::Config(_) => false,
        Command::Verify(_)
        | Command::Dlq(_)
        | Command::Replay(_)
        | Command::Query(_)
        | Command::Rebuild(_)
        | Command::Generations(_) => true,
    }
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    let path = cli.config.as_deref();
    // Commands about the CLI itself need no config (or read it their own way).
    let command = match cli.command {
        Command::Completions { shell } => return Ok(surface::completions(shell)),
        Command::Man { out_dir } => return surface::man(out_dir.as_deref()),
        Command::Config(c) => return surface::config(path, c),
        // The feed's URL is all it needs.
        Command::Watch(a) => return watch::run(a).await,
        other => other,
    };
    let cfg = engine::config::Config::load(path)?;
    if one_shot_on_neo4j(&command) {
        let graph = engine::sink::graph::GraphSink::for_config(&cfg)?;
        engine::sink::ready::wait_ready(&graph, cfg.neo4j.connect_timeout).await?;
    }
    match command {
        Command::Streams(c) => streams::run(&cfg, c).await,
        Command::Run(a) => run::run(&cfg, a).await,
        Command::Bench(c) => bench::run(&cfg, c).await,
        Command::Verify(a) => verify::run(&cfg, a).await,
        Command::Dlq(c) => dlq::run(&cfg, c).await,
        Command::Replay(a) => replay::run(&cfg, a).await,
        Command::Query(q) => query::run(&cfg, q).await,
        Command::Rebuild(a) => rebuild::run(&cfg, a).await,
        Command::Generations(c) => rebuild::generations(&cfg, c).await,
        Command::Completions { .. }
        | Command::Man { .. }
        | Command::Config(_)
        | Command::Watch(_) => {
            unreachable!("answered above without a config")
        }
    }
}
