//! Every flag of the CLI, defined once with its documentation; `--help` comes from here.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// projector: projects NATS JetStream event streams into a Neo4j graph and Valkey caches.
///
/// Reads the persistent streams from stored checkpoints, writes graph state (stories, plans,
/// approvals, tasks, decisions, milestones) and story contexts, and never acknowledges a
/// message before its effects are committed.
///
/// Connections come from config/projector.toml (built in) or --config, overridden by env:
/// NATS_URL, NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD, VALKEY_URL (or REDIS_HOST/REDIS_PORT).
///
/// Exit codes: 0 success, 1 runtime error (a server unreachable, a write failed),
/// 2 bad input or a state that needs an operator (config drift, invalid arguments).
#[derive(Debug, Parser)]
#[command(name = "projector", version, propagate_version = true)]
pub struct Cli {
    /// Config file (TOML). Defaults to the built-in config/projector.toml.
    #[arg(long, global = true, env = "PROJECTOR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace); PROJECTOR_LOG takes a full filter.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, check, migrate and inspect the persistent JetStream streams.
    #[command(subcommand)]
    Streams(StreamsCommand),
}

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Create missing streams (file storage) and report any drift from the config (exit 2).
    ///
    /// An existing stream is compared field by field; each differing field is printed with
    /// the wanted and the found value. A memory stream is drift: --migrate moves it to file
    /// storage keeping every message and sequence number (stored checkpoints stay valid).
    Ensure(EnsureArgs),
    /// Show each stream (storage, messages, first/last sequence) and its consumers.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct EnsureArgs {
    /// Move memory-storage streams to file storage (mirror, then promote). Publishers to
    /// the stream's subjects get errors for the few seconds the move takes.
    #[arg(long)]
    pub migrate: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
