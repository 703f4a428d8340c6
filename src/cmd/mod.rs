//! One module per subcommand; each returns an exit code or a [`CliError`].

mod bench;
mod dlq;
mod query;
mod rebuild;
mod replay;
mod run;
mod streams;
mod surface;
mod verify;

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
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Connect(engine::nats::ConnectError::BadUrl { .. }) => 2,
            CliError::Run(engine::runner::RunError::UnknownProjector(..)) => 2,
            CliError::Replay(e) if e.is_bad_input() => 2,
            _ => 1,
        }
    }
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    let path = cli.config.as_deref();
    // Commands about the CLI itself need no config (or read it their own way).
    let command = match cli.command {
        Command::Completions { shell } => return Ok(surface::completions(shell)),
        Command::Man { out_dir } => return surface::man(out_dir.as_deref()),
        Command::Config(c) => return surface::config(path, c),
        other => other,
    };
    let cfg = engine::config::Config::load(path)?;
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
        Command::Completions { .. } | Command::Man { .. } | Command::Config(_) => {
            unreachable!("answered above without a config")
        }
    }
}
