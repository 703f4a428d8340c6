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
    /// Run the projectors: read the streams from their checkpoints, write Neo4j and Valkey.
    ///
    /// One durable pull consumer per projector and stream, positioned at the stored
    /// checkpoint + 1. Each batch goes to Neo4j in one transaction with its checkpoint, then
    /// to Valkey with a Valkey-side checkpoint, then outbound events are published, then the
    /// messages are acked. Transient errors are retried with backoff (nothing is acked
    /// meanwhile); permanent ones park the event in the dead-letter stream. SIGTERM/SIGINT
    /// finish the batch in flight and exit 0.
    Run(RunArgs),
    /// Re-project a range of stream sequences on top of the current state (fix-forward).
    ///
    /// Reads with an ordered consumer, projects with the current projection code and writes
    /// through the same writer as `run`; writes are version-guarded, so the graph converges to
    /// what a clean pass gives. Never publishes outbound events. Ctrl-C stops after the batch
    /// in flight; the same command resumes where it stopped.
    Replay(ReplayArgs),
    /// Rebuild a projector's state from the streams into a new generation, then make it live.
    ///
    /// A full deterministic replay from each stream's first sequence runs beside the live
    /// generation (which keeps serving and writing); once caught up, the new generation
    /// becomes live in one transaction, live workers switch at their next batch, and the old
    /// generation is dropped in bounded batches. With --as-of, builds the state as it was at
    /// that point into generation --name and leaves live alone.
    Rebuild(RebuildArgs),
    /// List or drop generations.
    #[command(subcommand)]
    Generations(GenerationsCommand),
    /// Inspect, retry or discard parked (dead-lettered) events.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Ask the graph: a story's current view (more views to come, see docs/views.md).
    #[command(subcommand)]
    Query(QueryCommand),
    /// Print a canonical hash of a generation's graph (nodes, relationships, properties).
    Verify(VerifyArgs),
    /// Benchmark and sample-data tools.
    #[command(subcommand)]
    Bench(BenchCommand),
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
    /// Exit 0 once every projector's checkpoint reaches its streams' last sequence.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Where to serve /metrics, /healthz and /readyz ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
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
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Generate a deterministic fleet history (stories, phases, plans, approvals, tasks,
    /// deliberations with decisions, agent responses, milestones) and print or publish it.
    Gen(GenArgs),
    /// Publish a generated history at a steady rate (for latency under load): story ids
    /// start at --first-story so the load does not touch an existing history's stories.
    ///
    /// Example: `projector bench load --rate 200 --duration 60s --first-story 900001`
    Load(LoadArgs),
    /// The sink's ceiling: project a generated history in memory and write the same graph
    /// statements straight to Neo4j in UNWIND batches, with no NATS, checkpoint or cache.
    /// Prints JSON (events, rows, seconds, events/s, rows/s).
    ///
    /// Example: `projector bench ceiling --stories 3650 --seed 43 --generation ceiling`
    Ceiling(CeilingArgs),
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Events per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long to publish (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg)]
    pub duration: std::time::Duration,
    /// Number of the first story (ids are US-<n>).
    #[arg(long, default_value_t = 900_001)]
    pub first_story: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct CeilingArgs {
    /// Number of stories of the generated history (as `bench gen`).
    #[arg(long, default_value_t = 100)]
    pub stories: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events per transaction (per stream, as `run --batch-size`).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=20000))]
    pub batch_size: u32,
    /// Generation written (dropped first if it exists, so every run starts empty).
    #[arg(long, default_value = "bench-ceiling")]
    pub generation: String,
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    engine::config::parse_duration(s)
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of stories (about 25-45 events each).
    #[arg(long, default_value_t = 100)]
    pub stories: usize,
    /// Seed: the same seed gives the same history, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Publish to the configured NATS (pipelined); otherwise print JSON lines.
    #[arg(long)]
    pub publish: bool,
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
    Ensure(EnsureArgs),
    /// Show each stream (storage, messages, first/last sequence) and its consumers.
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
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List parked events in stream order: id, story, kind, reason.
    List {
        #[command(flatten)]
        target: DlqTarget,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one parked event with its headers and payload.
    Show {
        /// Parked event id, as `dlq list` prints it (projector:stream:seq).
        id: String,
        #[command(flatten)]
        target: DlqTarget,
    },
    /// Re-project parked events in their original order (after fixing the cause). Events
    /// that still fail stay parked, and so do the later events of their story.
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
    /// Drop parked events without projecting them (their story is unblocked when none is left).
    Discard {
        /// Parked event ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        target: DlqTarget,
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
}

#[derive(Debug, Subcommand)]
pub enum GenerationsCommand {
    /// Every generation holding nodes, with its size and created time; each one live for
    /// some deployment (any config sharing this Neo4j) is marked.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a generation and its cache entries, in bounded batches. Never a generation
    /// that any deployment's pointer in this Neo4j marks live; unknown names exit 2.
    Drop {
        /// Generation name.
        name: String,
        /// Drop without asking (scripts). Without it, a terminal is asked to confirm and
        /// anything else is refused (exit 2).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum StoryFormat {
    /// Human-readable sections.
    Table,
    /// The view as JSON (same as --json).
    Json,
    /// The story's neighbourhood as a Mermaid flowchart.
    Mermaid,
    /// The story's neighbourhood as Graphviz DOT.
    Dot,
}

#[derive(Debug, Args)]
pub struct ViewTarget {
    /// Generation to read (default: the live one).
    #[arg(long, global = true)]
    pub generation: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// A story: phase and phase history, plans and approvals, tasks, decisions with rationale
    /// and who decided, milestones. Served from the Valkey context when it carries the
    /// story's newest version, else from Neo4j (and the cache is refreshed).
    Story {
        /// Story id, e.g. US-0001.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = StoryFormat::Table)]
        format: StoryFormat,
        #[command(flatten)]
        target: ViewTarget,
    },
    /// Every projected change of a story, in stream order, with event time and sequence.
    Timeline {
        /// Story id.
        id: String,
        #[command(flatten)]
        target: ViewTarget,
    },
    /// Decisions, newest first.
    Decisions {
        /// Only this story's.
        #[arg(long)]
        story: Option<String>,
        /// Only those at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        target: ViewTarget,
    },
    /// Tasks by story.
    Tasks {
        /// Only tasks with this status (CREATED, ASSIGNED, DISPATCHED, RUNNING, COMPLETED, FAILED).
        #[arg(long)]
        status: Option<String>,
        /// Only tasks with this role (DEV, QA, ARCHITECT, ...).
        #[arg(long)]
        role: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        target: ViewTarget,
    },
    /// Plan approvals, newest first.
    Approvals {
        /// Only this story's.
        #[arg(long)]
        story: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        target: ViewTarget,
    },
}
