//! `projector bench ...`: the generator, the steady load and the sink's ceiling (the feed
//! clients are in `bench_feed`).

use super::bench_feed;
use super::CliError;
use crate::cli::{BenchCommand, CeilingArgs, LoadArgs};
use engine::config::Config;
use engine::history::Sample;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub async fn run(cfg: &Config, cmd: BenchCommand) -> Result<ExitCode, CliError> {
    match cmd {
        BenchCommand::Gen(a) => {
            let samples = engine::history::generate(a.stories, a.seed);
            if a.publish {
                let js = jetstream(cfg).await?;
                let started = Instant::now();
                let n = engine::history::publish(&js, &cfg.subject_prefix, &samples, a.seed)
                    .await
                    .map_err(CliError::Failed)?;
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "published {n} events for {} stories (seed {}) in {secs:.2}s ({:.0} events/s)",
                    a.stories,
                    a.seed,
                    n as f64 / secs
                );
            } else {
                let mut out = std::io::stdout().lock();
                for s in &samples {
                    writeln!(out, "{} {}", s.subject, s.payload)
                        .map_err(|e| CliError::Failed(format!("writing the samples: {e}")))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Load(a) => load(cfg, a).await,
        BenchCommand::Ceiling(a) => ceiling(cfg, a).await,
        BenchCommand::Feed(a) => bench_feed::run(a).await,
    }
}

async fn jetstream(cfg: &Config) -> Result<async_nats::jetstream::Context, CliError> {
    let client = engine::nats::connect(&cfg.nats).await?;
    Ok(async_nats::jetstream::new(client))
}

/// Publishes on a fixed schedule (event `i` at `i / rate` seconds), not "as fast as acks
/// come back": a slow ack must not slow the offered load, or latency would hide in it.
async fn load(cfg: &Config, a: LoadArgs) -> Result<ExitCode, CliError> {
    if !(a.rate > 0.0 && a.rate <= 100_000.0) {
        return Err(CliError::Usage(format!(
            "--rate {} is out of range (0 < rate <= 100000 events/s)",
            a.rate
        )));
    }
    let want = (a.rate * a.duration.as_secs_f64()).ceil() as usize;
    // About 30 events per story: generate enough stories, keep the first `want` events.
    let mut samples: Vec<Sample> = Vec::new();
    let mut stories = want / 20 + 1;
    while samples.len() < want {
        samples = engine::history::generate_from(a.first_story, stories, a.seed);
        stories *= 2;
    }
    samples.truncate(want);
    let js = jetstream(cfg).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acks = tokio::spawn(async move {
        let mut waits = Vec::new();
        let mut failed = 0usize;
        while let Some((sent, fut)) = rx.recv().await {
            let fut: async_nats::jetstream::context::PublishAckFuture = fut;
            match fut.await {
                Ok(_) => waits.push(Instant::now().duration_since(sent)),
                Err(e) => {
                    failed += 1;
                    // The first few say why; the count says how many.
                    if failed <= 3 {
                        eprintln!("publish not confirmed: {e}");
                    }
                }
            }
        }
        (waits, failed)
    });
    let started = Instant::now();
    for (i, s) in samples.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / a.rate);
        tokio::time::sleep_until(due.into()).await;
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            "Nats-Msg-Id",
            format!("load:{}:{}:{i}", a.seed, a.first_story).as_str(),
        );
        let sent = Instant::now();
        let fut = js
            .publish_with_headers(
                format!("{}{}", cfg.subject_prefix, s.subject),
                h,
                s.payload.clone().into(),
            )
            .await
            .map_err(|e| CliError::Failed(format!("publish {}: {e}", s.subject)))?;
        // The collector stops early only by panicking, which `acks.await` reports below.
        let _ = tx.send((sent, fut));
    }
    drop(tx);
    let (mut waits, failed) = acks
        .await
        .map_err(|e| CliError::Failed(format!("ack collector: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    waits.sort();
    let pct = |p: f64| {
        waits
            .get(((waits.len() as f64 * p) as usize).min(waits.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            // No confirmed publish at all: the failures count says so.
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "published": samples.len() - failed,
            "failed": failed,
            "seconds": secs,
            "rate": (samples.len() - failed) as f64 / secs,
            "puback_p50_ms": pct(0.50),
            "puback_p99_ms": pct(0.99),
        })
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The stream a subject lands in, by the configured stream subjects (`x.>` and `x.*` forms).
fn stream_of<'a>(cfg: &'a Config, subject: &str) -> Option<&'a str> {
    cfg.streams
        .iter()
        .find(|s| {
            s.subjects.iter().any(|pat| {
                if let Some(p) = pat.strip_suffix('>') {
                    subject.starts_with(p)
                } else {
                    pat == subject
                }
            })
        })
        .map(|s| s.name.as_str())
}

async fn ceiling(cfg: &Config, a: CeilingArgs) -> Result<ExitCode, CliError> {
    let projector = cfg
        .projector("graph")
        .or(cfg.projectors.first())
        .ok_or_else(|| CliError::Usage("no projector configured".into()))?;
    let samples = engine::history::generate(a.stories, a.seed);
    // The positions the messages would get in their streams, and per-stream batches as a
    // worker would commit them.
    let mut per_stream: std::collections::BTreeMap<&str, Vec<projections::Projection>> =
        Default::default();
    let mut events = 0usize;
    let base_ns: i64 = 1_767_225_600_000_000_000;
    for (i, s) in samples.iter().enumerate() {
        let full = format!("{}{}", cfg.subject_prefix, s.subject);
        let Some(stream) = stream_of(cfg, &full) else {
            continue;
        };
        if !projector.streams.iter().any(|p| p == stream) {
            continue;
        }
        let list = per_stream.entry(stream).or_default();
        let seq = list.len() as u64 + 1;
        let stored = projections::ingest::Stored {
            stream,
            seq,
            ts_ns: base_ns + i as i64 * 1_000,
            subject: &full,
            content_type: None,
            payload: s.payload.as_bytes(),
        };
        match projections::ingest::ingest(&cfg.subject_prefix, &stored) {
            projections::ingest::Ingested::Projected { projection, .. } => list.push(projection),
            projections::ingest::Ingested::Rejected { error, .. } => {
                return Err(CliError::Failed(format!(
                    "generated event does not decode: {error}"
                )))
            }
        }
        events += 1;
    }
    let graph = engine::sink::graph::GraphSink::for_config(cfg)?;
    let cache = engine::sink::cache::CacheSink::connect(&cfg.valkey).await?;
    graph.ensure_schema().await?;
    engine::generations::drop_generation(&graph, &cache, &a.generation).await?;
    let mut batches = Vec::new();
    for list in per_stream.values() {
        for chunk in list.chunks(a.batch_size as usize) {
            let mut b = projections::CompactBatch::default();
            for p in chunk {
                b.extend(&p.graph);
            }
            batches.push((chunk.len(), b));
        }
    }
    let rows: usize = batches.iter().map(|(_, b)| b.rows()).sum();
    let started = Instant::now();
    for (_, b) in &batches {
        graph.commit_bare(&a.generation, b).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "rows": rows,
            "transactions": batches.len(),
            "seconds": secs,
            "events_per_s": events as f64 / secs,
            "rows_per_s": rows as f64 / secs,
        })
    );
    Ok(ExitCode::SUCCESS)
}
