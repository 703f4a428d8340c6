//! The flags of `projector query`: the views, their filters and paging.

use clap::{Args, Subcommand, ValueEnum};

/// Largest page of a list view, on the CLI and over HTTP alike (`engine::api::MAX_LIMIT`).
const MAX_LIMIT: i64 = engine::api::MAX_LIMIT;

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

/// A task's status, as the orchestrator reports it.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
#[value(rename_all = "UPPER")]
pub enum TaskStatus {
    Created,
    Assigned,
    Dispatched,
    Running,
    Completed,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Created => "CREATED",
            TaskStatus::Assigned => "ASSIGNED",
            TaskStatus::Dispatched => "DISPATCHED",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
        }
    }
}

/// Paging of a list view: the same bounds as the HTTP API's `limit` and `offset`.
#[derive(Debug, Args)]
pub struct Page {
    /// At most this many rows.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=MAX_LIMIT))]
    pub limit: i64,
    /// Skip this many rows first (the next page starts at offset + limit).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..=engine::api::MAX_OFFSET))]
    pub offset: i64,
}

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// A story: phase and phase history, plans and approvals, tasks, decisions with rationale
    /// and who decided, milestones. Served from the Valkey context when it carries the
    /// story's newest version, else from Neo4j (and the cache is refreshed).
    #[command(
        after_help = "Examples:\n  projector query story US-0001\n  projector query story US-0001 --format dot | dot -Tsvg > US-0001.svg"
    )]
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
    #[command(after_help = "Example:\n  projector query timeline US-0001")]
    Timeline {
        /// Story id.
        id: String,
        #[command(flatten)]
        target: ViewTarget,
    },
    /// Decisions, newest first.
    #[command(
        after_help = "Example:\n  projector query decisions --story US-0001 --since 2026-01-01T00:00:00Z"
    )]
    Decisions {
        /// Only this story's.
        #[arg(long)]
        story: Option<String>,
        /// Only those at or after this RFC 3339 time.
        #[arg(long, value_parser = parse_rfc3339_ms)]
        since: Option<i64>,
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        target: ViewTarget,
    },
    /// Tasks by story.
    #[command(
        after_help = "Examples:\n  projector query tasks --status FAILED\n  projector query tasks --limit 1000 --offset 1000 --json"
    )]
    Tasks {
        /// Only tasks with this status.
        #[arg(long, value_enum)]
        status: Option<TaskStatus>,
        /// Only tasks with this role (DEV, QA, ARCHITECT, ...; roles are the fleet's, not a
        /// fixed list).
        #[arg(long)]
        role: Option<String>,
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        target: ViewTarget,
    },
    /// Plan approvals, newest first.
    #[command(after_help = "Example:\n  projector query approvals --story US-0001")]
    Approvals {
        /// Only this story's.
        #[arg(long)]
        story: Option<String>,
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        target: ViewTarget,
    },
}

/// An RFC 3339 time as epoch milliseconds, refused at parse time otherwise.
fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| format!("{s:?} is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)"))
}
