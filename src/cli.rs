//! Every flag of the CLI, defined once with its documentation; `--help` comes from here.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

mod bench;
pub use bench::{BenchCommand, CeilingArgs, FeedArgs, LoadArgs};

/// The heading global flags appear under in every subcommand's `--help`, so they are listed
/// once and apart from the command's own flags.
const GLOBAL: &str = "Global options";

/// projector: projects NATS JetStream event streams into a Neo4j graph and Valkey caches.
///
/// Reads the persistent streams from stored checkpoints, writes graph state (stories, plans,
/// approvals, tasks, decisions, milestones) and story contexts, and never acknowledges a
/// message before its effects are committed.
///
/// Connections come from config/projector.toml (built in), with a --config file merged over
/// it, overridden by env: NATS_URL, NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD, VALKEY_URL (or
/// REDIS_HOST/REDIS_PORT). `projector config show` prints the result and where each value
/// came from.
///
/// Exit codes: 0 success, 1 runtime error (a server unreachable, a write failed),
/// 2 bad input or a state that needs an operator (config drift, invalid arguments).
#[derive(Debug, Parser)]
#[command(
    name = "projector",
    version,
    propagate_version = true,
    after_help = "Example:\n  projector streams ensure && projector run --until-caught-up\n\nShell completions: `projector completions bash`; man page: `projector man`."
)]
pub struct Cli {
    /// Config file (TOML), merged over the built-in config/projector.toml: it needs only the
    /// keys it changes.
    #[arg(long, global = true, env = "PROJECTOR_CONFIG", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, help_heading = GLOBAL)]
    pub log_format: LogFormat,

    /// Log level; PROJECTOR_LOG takes a full filter (e.g. `info,engine::worker=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Info, help_heading = GLOBAL)]
    pub log_level: LogLevel,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// A tracing level; anything else is refused at parse time (exit 2), never read as "off".
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, check, migrate and inspect the persistent JetStream streams.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Run the projectors: read the streams from their checkpoints, write Neo4j and Valkey.
    ///
    /// One durable pull consumer per projector and stream, positioned at the stored
    /// checkpoint + 1. Each batch goes to Neo4j in one transaction with its checkpoint, then
    /// to Valkey with a Valkey-side checkpoint, then outbound events are published, then the
    /// messages are acked. Transient errors are retried with backoff (nothing is acked
    /// meanwhile); permanent ones park the event in the dead-letter stream. SIGTERM/SIGINT
    /// finish the batch in flight and exit 0.
    #[command(
        after_help = "Examples:\n  projector run\n  projector run --until-caught-up --metrics-addr off"
    )]
    Run(RunArgs),
    /// Re-project a range of stream sequences on top of the current state (fix-forward).
    ///
    /// Reads with an ordered consumer, projects with the current projection code and writes
    /// through the same writer as `run`; writes are version-guarded, so the graph converges to
    /// what a clean pass gives. Never publishes outbound events. Ctrl-C stops after the batch
    /// in flight; the same command resumes where it stopped.
    #[command(
        after_help = "Example:\n  projector replay --from-seq 1200 --to-seq 1500 --stream PLANNING_EVENTS"
    )]
    Replay(ReplayArgs),
    /// Rebuild a projector's state from the streams into a new generation, then make it live.
    ///
    /// A full deterministic replay from each stream's first sequence runs beside the live
    /// generation (which keeps serving and writing); once caught up, the new generation
    /// becomes live in one transaction, live workers switch at their next batch, and the old
    /// generation is dropped in bounded batches. With --as-of, builds the state as it was at
    /// that point into generation --name and leaves live alone.
    #[command(
        after_help = "Examples:\n  projector rebuild\n  projector rebuild --name jan31 --as-of 2026-01-31T23:59:59Z"
    )]
    Rebuild(RebuildArgs),
    /// List or drop generations.
    #[command(subcommand)]
    Generations(GenerationsCommand),
    /// Inspect, retry or discard parked (dead-lettered) events.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Ask the graph: a story, its timeline, decisions, tasks, approvals (docs/views.md).
    #[command(subcommand)]
    Query(QueryCommand),
    /// Tail the change feed of a running projector (GET /v1/changes) in the terminal.
    ///
    /// One line per committed change of a story view (revision, what changed), a line when
    /// the feed is caught up, and notices for a generation switch or a reset. Reconnects by
    /// itself, resuming after the last event seen. Ctrl-C stops.
    #[command(
        after_help = "Examples:\n  projector watch\n  projector watch --story US-0001 --what decisions,tasks --json"
    )]
    Watch(WatchArgs),
    /// Print a canonical hash of a generation's graph (nodes, relationships, properties).
    #[command(
        after_help = "Examples:\n  projector verify --json\n  projector verify --against-rebuild"
    )]
    Verify(VerifyArgs),
    /// Benchmark and sample-data tools.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script for projector.
    #[command(
        after_help = "Examples:\n  source <(projector completions bash)\n  projector completions zsh > ~/.zfunc/_projector"
    )]
    Completions {
        /// Shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print projector's man page (roff), generated from the same flag definitions as --help;
    /// with --out-dir, write it and one page per subcommand (projector-query-tasks.1, ...).
    #[command(
        after_help = "Examples:\n  projector man > projector.1 && man -l projector.1\n  projector man --out-dir /usr/local/share/man/man1"
    )]
    Man {
        /// Write every page into this directory instead of printing the top one.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The configuration in effect: the built-in defaults, the --config file merged over
    /// them, then env overrides; each value with where it came from (default, file, env).
    /// Secrets are redacted.
    #[command(
        after_help = "Examples:\n  projector config show\n  NATS_URL=nats://nats:4222 projector --config prod.toml config show --json"
    )]
    Show {
        /// Print one JSON object: {"key": {"value": ..., "source": "default|file|env"}}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OnErrorArg {
    /// Park the event (and later events of its story) in the dead-letter stream; go on.
    Park,
    /// Stop the projector; nothing is acked.
    Halt,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OnGapArg {
    /// Stop: messages after the checkpoint were removed before they were projected.
    Halt,
    /// Record the lost range (shown by `streams status`) and go on after it.
    Continue,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OnProjectionChangeArg {
    /// Keep the old generation live and served, build one with this binary's projections in
    /// the background, check it, switch, drop the old one after --drop-grace.
    Rebuild,
    /// Project into the old generation anyway (it then mixes two versions' output).
    Warn,
    /// Exit 2 without writing.
    Refuse,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TransactionPerArg {
    /// One worker per stream of a partition, each committing its own batches (the fastest
    /// measured on a 2-core Neo4j, docs/benchmarks.md).
    Stream,
    /// One worker per partition: what all its streams hold commits in one transaction.
    Partition,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Projector(s) to run (repeatable); all configured projectors by default.
    #[arg(long = "projector", short = 'p')]
    pub projectors: Vec<String>,
    /// Messages fetched and committed per batch (one Neo4j transaction).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=20000))]
    pub batch_size: u32,
    /// What to do with an event whose write fails permanently.
    #[arg(long, value_enum, default_value_t = OnErrorArg::Park)]
    pub on_error: OnErrorArg,
    /// What to do when messages after the checkpoint are gone from the stream.
    #[arg(long, value_enum, default_value_t = OnGapArg::Halt)]
    pub on_gap: OnGapArg,
    /// A stored checkpoint is past its stream's last sequence (the stream was deleted and
    /// recreated, or restored from an older backup): project the stream from its first
    /// sequence into this generation instead of halting. A rebuild is the clean alternative.
    #[arg(long)]
    pub accept_stream_reset: bool,
    /// What one Neo4j transaction holds: a stream's batch, or a partition's group of every
    /// stream's pending events (docs/architecture.md, the pipeline).
    #[arg(long, value_enum, default_value = "stream")]
    pub transaction_per: TransactionPerArg,
    /// Exit 0 once every projector's checkpoint reaches its streams' last sequence.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Where to serve /metrics, /healthz and /readyz ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Write this generation instead of the live one (the default follows the live
    /// generation, including promotions by `projector rebuild`).
    #[arg(long)]
    pub generation: Option<String>,
    /// Seconds to finish the batches in flight after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Publish outbound events (e.g. context.updated) even when --generation names a
    /// generation that is not live. Off by default there: only the live view owes them.
    #[arg(long)]
    pub outbound: bool,
    /// This instance's name in the partition leases (with `[partitions] count` > 1); the
    /// default is `<hostname>-<pid>`, unique per process. `streams status` shows it.
    #[arg(long, env = "PROJECTOR_INSTANCE")]
    pub instance: Option<String>,
    /// /readyz reports ready only while every worker's lag is at most this.
    #[arg(long, default_value_t = 10_000)]
    pub ready_lag: u64,
    /// When the live generation was created by another (older) projection version: rebuild
    /// it in the background and switch, project into it with a warning, or refuse (exit 2).
    /// A newer version than this binary's is always refused (docs/operations.md, "Upgrades").
    #[arg(long, value_enum, default_value_t = OnProjectionChangeArg::Rebuild)]
    pub on_projection_change: OnProjectionChangeArg,
    /// Seconds the old generation is kept after a background rebuild's switch (readers
    /// holding it finish; a quick rollback stays possible) before it is dropped.
    #[arg(long, default_value_t = 300)]
    pub drop_grace: u64,
}

pub(crate) fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    engine::config::parse_duration(s)
}

/// `--metrics-addr`: an address to listen on, or none ("off").
#[derive(Debug, Clone, Copy)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    match s {
        "off" => Ok(MetricsAddr(None)),
        s => s
            .parse()
            .map(|a| MetricsAddr(Some(a)))
            .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:9464 (or \"off\")")),
    }
}

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Create missing streams (file storage) and report any drift from the config (exit 2).
    ///
    /// An existing stream is compared field by field; each differing field is printed with
    /// the wanted and the found value (a mirror's duplicate window is not compared: the
    /// server does not keep one). A memory stream is drift: --migrate moves it to file
    /// storage keeping every message and sequence number (stored checkpoints stay valid).
    /// An interrupted migration is reported (exit 2) and never "repaired" by creating an
    /// empty stream; --migrate continues it. Work-queue and interest streams are drift.
    #[command(
        after_help = "Examples:\n  projector streams ensure\n  projector streams ensure --migrate --json"
    )]
    Ensure(EnsureArgs),
    /// Show each stream (storage, messages, first/last sequence) and its consumers.
    #[command(after_help = "Example:\n  projector streams status --json")]
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct EnsureArgs {
    /// Move memory-storage streams to file storage (mirror, then promote), or continue an
    /// interrupted move from where it stopped. Publishers to the stream's subjects get
    /// errors for the few seconds the move takes.
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
    /// Generation whose checkpoints and lost ranges to show (default: the live one).
    #[arg(long)]
    pub generation: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The projector's HTTP address (`run --metrics-addr`).
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    pub url: String,
    /// Only this story's changes (repeatable).
    #[arg(long)]
    pub story: Vec<String>,
    /// Only changes touching these parts: story, phase, plans, approvals, tasks, decisions,
    /// milestones (comma-separated).
    #[arg(long)]
    pub what: Option<String>,
    /// Start right after this position (an event id printed earlier) instead of now.
    #[arg(long)]
    pub after: Option<String>,
    /// Print each event as one JSON object per line: {"event", "id", "data"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Generation to hash (default: the live one).
    #[arg(long)]
    pub generation: Option<String>,
    /// Build a fresh generation from the streams and compare it with this one; exit 1 with a
    /// per-label summary when they differ. The temporary generation is dropped afterwards.
    #[arg(long)]
    pub against_rebuild: bool,
    /// Print one JSON object: generation, hash, nodes, relationships.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DlqTarget {
    /// Projector whose parked events to act on.
    #[arg(long, short = 'p', default_value = "graph")]
    pub projector: String,
    /// Generation the parked records belong to (default: the live one).
    #[arg(long)]
    pub generation: Option<String>,
    /// Who decides a retry or discard, recorded with the decision (default: $USER).
    #[arg(long, env = "PROJECTOR_OPERATOR")]
    pub by: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List parked events in stream order: id, story, kind, reason.
    #[command(after_help = "Example:\n  projector dlq list --json")]
    List {
        #[command(flatten)]
        target: DlqTarget,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one parked event with its headers and payload.
    #[command(after_help = "Example:\n  projector dlq show graph:PLANNING_EVENTS:42 --json")]
    Show {
        /// Parked event id, as `dlq list` prints it (projector:stream:seq).
        id: String,
        #[command(flatten)]
        target: DlqTarget,
        /// Print one JSON object: {"parked": ..., "headers": {name: [values]}, "payload": text
        /// or null, "payload_base64": base64 or null}.
        #[arg(long)]
        json: bool,
    },
    /// Re-project parked events in their original order (after fixing the cause), recording
    /// who and when (rebuilds honour it). Events that still fail stay parked, and so do the
    /// later events of their story on their stream; an event behind an earlier parked event
    /// of its story on its stream that this retry does not take is held back.
    #[command(
        after_help = "Examples:\n  projector dlq retry --story US-0042\n  projector dlq retry --all --json"
    )]
    Retry {
        /// Parked event ids; or use --story / --all.
        ids: Vec<String>,
        /// Every parked event of this story.
        #[arg(long, conflicts_with = "all")]
        story: Option<String>,
        /// Every parked event of the projector.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: DlqTarget,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop parked events without projecting them, recording who and when (rebuilds honour
    /// it); their story is unblocked on a stream when none of its events there is left.
    #[command(after_help = "Example:\n  projector dlq discard graph:PLANNING_EVENTS:42")]
    Discard {
        /// Parked event ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        target: DlqTarget,
        /// Print one JSON object: {"discarded": n, "asked": n}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// First stream sequence to re-project (1-based).
    #[arg(long)]
    pub from_seq: u64,
    /// Last stream sequence (default: the stream's last sequence when the replay starts).
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Stream to replay (repeatable); default: every stream the projector reads.
    #[arg(long = "stream", short = 's')]
    pub streams: Vec<String>,
    /// Projector whose projections to apply.
    #[arg(long, short = 'p', default_value = "graph")]
    pub projector: String,
    /// Generation to write (default: the live one).
    #[arg(long)]
    pub generation: Option<String>,
    /// Messages per transaction.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=20000))]
    pub batch_size: u32,
    /// Print one JSON object per stream replayed instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Projector to rebuild.
    #[arg(long, short = 'p', default_value = "graph")]
    pub projector: String,
    /// Name of the new generation (default: rebuild-<unix seconds>).
    #[arg(long)]
    pub name: Option<String>,
    /// Build the state as of `seq:N` (every stream up to sequence N) or an RFC 3339 time
    /// (messages whose stream time is at or before it). Needs --name; live is not touched.
    #[arg(long, requires = "name")]
    pub as_of: Option<String>,
    /// Keep the previous live generation instead of dropping it after the switch.
    #[arg(long)]
    pub keep_old: bool,
    /// If --name exists already (and is not live), drop it first and build it anew. Without
    /// it, an existing name is refused (exit 2), except a build that was interrupted, which
    /// is resumed.
    #[arg(long)]
    pub replace: bool,
    /// Messages per transaction.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=20000))]
    pub batch_size: u32,
    /// Print one JSON object: {"generation", "live", "previous", "as_of", "stories",
    /// "dropped_nodes"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GenerationsCommand {
    /// Every generation holding nodes, with its size and created time; each one live for
    /// some deployment (any config sharing this Neo4j) is marked.
    #[command(after_help = "Example:\n  projector generations list --json")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a generation and its cache entries, in bounded batches. Never a generation
    /// that any deployment's pointer in this Neo4j marks live; unknown names exit 2.
    #[command(after_help = "Example:\n  projector generations drop rebuild-1767225600 --yes")]
    Drop {
        /// Generation name.
        name: String,
        /// Drop without asking (scripts). Without it, a terminal is asked to confirm and
        /// anything else is refused (exit 2).
        #[arg(long)]
        yes: bool,
        /// Print one JSON object: {"dropped": name, "nodes": n}.
        #[arg(long)]
        json: bool,
    },
}

mod query;
pub use query::{Page, QueryCommand, StoryFormat, ViewTarget};

#[cfg(test)]
mod tests;
