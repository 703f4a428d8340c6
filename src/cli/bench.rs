//! The arguments of `projector bench ...` (the generator, the load, the ceiling, the feed
//! clients).

use super::parse_duration_arg;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Generate a deterministic fleet history (stories, phases, plans, approvals, tasks,
    /// deliberations with decisions, agent responses, milestones) and print or publish it.
    #[command(after_help = "Example:\n  projector bench gen --stories 100 --seed 7 --publish")]
    Gen(GenArgs),
    /// Publish a generated history at a steady rate (for latency under load): story ids
    /// start at --first-story so the load does not touch an existing history's stories.
    ///
    #[command(
        after_help = "Example:\n  projector bench load --rate 200 --duration 60s --first-story 900001"
    )]
    Load(LoadArgs),
    /// The sink's ceiling: project a generated history in memory and write the same graph
    /// statements straight to Neo4j in UNWIND batches, with no NATS, checkpoint or cache.
    /// Prints JSON (events, rows, seconds, events/s, rows/s).
    #[command(
        after_help = "Example:\n  projector bench ceiling --stories 3650 --seed 43 --generation ceiling"
    )]
    Ceiling(CeilingArgs),
    /// Many change-feed clients at once (`GET /v1/changes`): each follows the feed for
    /// --duration and measures, per `story.changed`, the time from its changelog entry (the
    /// position's milliseconds, written right after the commit) to its arrival. Prints JSON
    /// (clients, events, dropped, latency p50/p99/max in ms).
    #[command(
        after_help = "Example:\n  projector bench feed --clients 1000 --duration 40s --url http://127.0.0.1:9464"
    )]
    Feed(FeedArgs),
}

#[derive(Debug, Args)]
pub struct FeedArgs {
    /// The projector's HTTP address (`run --metrics-addr`).
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    pub url: String,
    /// Concurrent feed connections.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub clients: u32,
    /// How long every client follows the feed (e.g. 40s).
    #[arg(long, default_value = "40s", value_parser = parse_duration_arg)]
    pub duration: std::time::Duration,
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
