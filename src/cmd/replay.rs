//! `projector replay --from-seq N`.

use super::CliError;
use crate::cli::ReplayArgs;
use engine::config::Config;
use engine::sink::{cache::CacheSink, graph::GraphSink};
use indicatif::{ProgressBar, ProgressStyle};
use replay::replay::{plan, replay_stream, ReplayRequest, ReplayTarget};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub async fn run(cfg: &Config, a: ReplayArgs) -> Result<ExitCode, CliError> {
    let Some(projector) = cfg.projector(&a.projector) else {
        return Err(CliError::Usage(format!(
            "unknown projector {:?}; configured: {}",
            a.projector,
            cfg.projectors
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let streams = if a.streams.is_empty() {
        projector.streams.clone()
    } else {
        for s in &a.streams {
            if !projector.streams.contains(s) {
                return Err(CliError::Usage(format!(
                    "projector {} does not read stream {s}; it reads {}",
                    a.projector,
                    projector.streams.join(", ")
                )));
            }
        }
        a.streams.clone()
    };
    let client = engine::nats::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(client);
    let graph = GraphSink::for_config(cfg)?;
    let cache = CacheSink::connect(&cfg.valkey).await?;
    let live_gen = engine::generations::live(&graph).await?;
    super::known_generation(&graph, a.generation.as_deref()).await?;
    let generation = a.generation.clone().unwrap_or_else(|| live_gen.clone());
    let cache_prefix = cache.gen_prefix(&generation, generation == live_gen);
    let parking = replay::parking::Parking::on_top(&graph, &generation, &a.projector).await?;
    let target = ReplayTarget {
        js: &js,
        graph: &graph,
        cache: &cache,
        generation: &generation,
        cache_prefix: &cache_prefix,
        subject_prefix: &cfg.subject_prefix,
        parking: &parking,
    };
    let req = ReplayRequest {
        projector: a.projector.clone(),
        streams,
        from_seq: a.from_seq,
        to_seq: a.to_seq,
        batch_size: a.batch_size as usize,
        until_ts_ns: None,
        as_run_checkpoint: false,
    };
    // Every stream is checked before anything is written.
    let ranges = plan(&target, &req).await?;
    graph.ensure_schema().await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        engine::runner::shutdown_signal().await;
        // The replay may have ended and dropped the receiver: then nobody needs the stop.
        let _ = stop_tx.send(true);
    });
    // A bar on a terminal; with --json, JSON progress lines on stderr instead.
    let tty = !a.json && std::io::stderr().is_terminal();
    let mut all_done = true;
    let (mut projected, mut skipped, mut discarded) = (0u64, 0u64, 0u64);
    for r in &ranges {
        if r.start > r.from {
            tracing::info!(stream = %r.stream, resume_at = r.start, "resuming an interrupted replay");
        }
        let total = r.to + 1 - r.start.min(r.to + 1);
        let bar = if tty {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>22} [{bar:30}] {pos}/{len} events  {per_sec}  eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(r.stream.clone());
            Some(b)
        } else {
            None
        };
        let started = Instant::now();
        let mut last_log = Instant::now();
        let stream = r.stream.clone();
        let start = r.start;
        let report = replay_stream(
            &target,
            &req,
            r,
            |done| {
                let n = done + 1 - start;
                let every = Duration::from_secs(if a.json { 1 } else { 5 });
                match &bar {
                    Some(b) => b.set_position(n),
                    None if last_log.elapsed() > every => {
                        last_log = Instant::now();
                        let (rate, eta) =
                            replay::progress::estimate(n, total, 0, started.elapsed());
                        let r = replay::progress::Report {
                            generation: generation.clone(),
                            done: n,
                            expected: total,
                            events_per_sec: rate,
                            eta_secs: eta,
                        };
                        if a.json {
                            eprintln!("{}", serde_json::json!({"progress": r, "stream": stream}));
                        } else {
                            eprintln!("{} {stream}", crate::progress::line(&r));
                        }
                    }
                    None => {}
                }
            },
            &stop_rx,
        )
        .await?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let secs = started.elapsed().as_secs_f64();
        projected += report.projected;
        skipped += report.undecodable;
        discarded += report.discarded;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"stream": r.stream, "from_seq": r.start, "to_seq": report.last,
                    "projected": report.projected, "undecodable": report.undecodable,
                    "discarded": report.discarded,
                    "seconds": (secs * 1000.0).round() / 1000.0, "completed": report.completed})
            );
        } else {
            println!(
                "{}: replayed {}..={} ({} projected, {} skipped as parked or undecodable, {} discarded by an operator) in {secs:.1}s{}",
                r.stream,
                r.start,
                report.last,
                report.projected,
                report.undecodable,
                report.discarded,
                if report.completed {
                    ""
                } else {
                    " - interrupted; run the same command to resume"
                }
            );
        }
        if !report.completed {
            all_done = false;
            break;
        }
    }
    // A replay parks nothing (it re-projects on top of what live decided); the blocked
    // stories are the generation's, left by live.
    let blocked = graph.blocked_story_count(&generation).await?;
    tracing::info!(
        generation = %generation,
        projected,
        parked = 0,
        skipped,
        discarded,
        blocked_stories = blocked,
        "summary: {projected} projected, 0 parked, {skipped} skipped (parked or undecodable), {discarded} discarded by an operator; {blocked} blocked stories in generation {generation}{}",
        if blocked > 0 { " (see `projector dlq list`)" } else { "" }
    );
    Ok(if all_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(130)
    })
}
