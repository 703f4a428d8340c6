//! `projector streams ensure|status`.

use super::CliError;
use crate::cli::StreamsCommand;
use engine::config::Config;
use engine::streams::{self, Ensured};
use std::process::ExitCode;

pub async fn run(cfg: &Config, cmd: StreamsCommand) -> Result<ExitCode, CliError> {
    let client = engine::nats::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(client);
    let specs = streams::specs(cfg);
    match cmd {
        StreamsCommand::Ensure(args) => {
            let report = streams::ensure(&js, &specs, args.migrate).await?;
            // Several instances share partitions through this bucket; made here with the
            // streams, so the instances' NATS user needs no right to create it.
            if cfg.partitions.count > 1 {
                engine::leases::bucket(&js, &cfg.partitions, cfg.stream_defaults.replicas).await?;
                if !args.json {
                    println!(
                        "{}: lease bucket for {} partitions (TTL {}s)",
                        cfg.partitions.lease_bucket,
                        cfg.partitions.count,
                        cfg.partitions.lease_ttl.as_secs()
                    );
                }
            }
            let drifted = report.iter().any(|(_, o)| {
                matches!(
                    o,
                    Ensured::Drifted { .. } | Ensured::MigrationInterrupted { .. }
                )
            });
            let retention = report.iter().any(|(_, o)| {
                matches!(o, Ensured::Drifted { drift } if drift.iter().any(|d| d.field == "retention"))
            });
            if args.json {
                let obj: serde_json::Map<String, serde_json::Value> = report
                    .iter()
                    .map(|(n, o)| (n.clone(), serde_json::to_value(o).expect("serializable")))
                    .collect();
                println!("{}", serde_json::Value::Object(obj));
            } else {
                for (name, outcome) in &report {
                    match outcome {
                        Ensured::Created => println!("{name}: created (file storage)"),
                        Ensured::UpToDate => println!("{name}: ok"),
                        Ensured::Migrated { messages, first_seq, last_seq } => println!(
                            "{name}: migrated to file storage ({messages} messages, sequences {first_seq}..{last_seq} kept)"
                        ),
                        Ensured::MigrationInterrupted { stage } => println!(
                            "{name}: MIGRATION INTERRUPTED ({stage}); `projector streams ensure --migrate` finishes it. Do not delete {name}_MIGRATING: it may hold the only copy"
                        ),
                        Ensured::Drifted { drift } => {
                            println!("{name}: DRIFT");
                            for d in drift {
                                println!("  {:<17} wanted {:<24} found {}", d.field, d.wanted, d.found);
                            }
                        }
                    }
                }
                if retention {
                    eprintln!("error: a stream with work-queue or interest retention loses a message once any consumer acks it, so projector must not read it; project a file mirror of it with limits retention instead (docs/operations.md, \"Work-queue streams\")");
                }
                if drifted {
                    eprintln!("error: stream config differs from the config file (see above); memory storage can be fixed with `projector streams ensure --migrate`, other fields with `nats stream edit` or by changing the config");
                }
            }
            Ok(if drifted {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        StreamsCommand::Status(args) => {
            if args.generation.is_some() {
                let g = engine::sink::graph::GraphSink::for_config(cfg)?;
                // Unreachable: the checkpoints part below says so (unknown, exit 1).
                if engine::sink::ready::wait_ready(&g, cfg.neo4j.connect_timeout)
                    .await
                    .is_ok()
                {
                    super::known_generation(&g, args.generation.as_deref()).await?;
                }
            }
            let st = streams::status(&js, &specs).await?;
            let progress = projector_progress(cfg, &js, args.generation.as_deref(), &st).await;
            if args.json {
                // Unknown is null, not empty: an empty list would say "nothing was lost".
                let (projectors, lost, generation, lease_error, neo4j_error) = match &progress {
                    Ok(p) => (
                        Some(p.projectors.clone()),
                        Some(p.lost.clone()),
                        Some(p.generation.clone()),
                        p.lease_error.clone(),
                        None,
                    ),
                    Err(e) => (None, None, None, None, Some(e.to_string())),
                };
                if let Some(e) = &lease_error {
                    eprintln!("warning: partition holders unknown ({e}); every holder is null");
                }
                let v = serde_json::json!({
                    "streams": st,
                    "generation": generation,
                    "projectors": projectors,
                    "lost_ranges": lost,
                    "neo4j_error": neo4j_error,
                    // Set when the holders could not be read: a null holder then means unknown.
                    "lease_error": lease_error,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("serializable")
                );
                return Ok(status_exit(&progress));
            }
            println!(
                "{:<22} {:<8} {:>10} {:>12} {:>10} {:>10}",
                "STREAM", "STORAGE", "MESSAGES", "BYTES", "FIRST", "LAST"
            );
            for s in &st {
                if !s.exists {
                    println!("{:<22} missing (run `projector streams ensure`)", s.name);
                    continue;
                }
                println!(
                    "{:<22} {:<8} {:>10} {:>12} {:>10} {:>10}{}",
                    s.name,
                    s.storage.as_deref().unwrap_or("?"),
                    s.messages,
                    s.bytes,
                    s.first_seq,
                    s.last_seq,
                    if s.drift.is_empty() { "" } else { "  DRIFT" }
                );
                if let Some(origin) = &s.mirror_of {
                    println!(
                        "  archive of {origin}: mirror lag {}, reaches back to sequence {}",
                        s.mirror_lag
                            .map(|l| l.to_string())
                            .unwrap_or_else(|| "?".into()),
                        s.first_seq
                    );
                }
                for c in &s.consumers {
                    println!(
                        "  consumer {:<30} pending {:>8}  ack pending {:>6}  ack floor {:>10}  redelivered {:>6}",
                        c.name, c.pending, c.ack_pending, c.ack_floor, c.redelivered
                    );
                }
            }
            match &progress {
                Ok(Progress {
                    projectors,
                    lost,
                    generation,
                    lease_error,
                }) => {
                    println!("\nPROJECTOR CHECKPOINTS (generation {generation})");
                    if let Some(e) = lease_error {
                        eprintln!(
                            "warning: partition holders unknown ({e}); shown as \"holder unknown\""
                        );
                    }
                    for p in projectors {
                        let owner = match &p["holder"] {
                            serde_json::Value::String(h) => format!("  held by {h}"),
                            serde_json::Value::Null if lease_error.is_some() => {
                                "  holder unknown".into()
                            }
                            serde_json::Value::Null if cfg.partitions.count > 1 => {
                                "  no holder".into()
                            }
                            _ => String::new(),
                        };
                        println!(
                            "  {:<10} {:<22} p{:<3} checkpoint {:>10}  lag {:>8}{owner}",
                            p["projector"].as_str().unwrap_or(""),
                            p["stream"].as_str().unwrap_or(""),
                            p["partition"].as_u64().unwrap_or(0),
                            p["checkpoint"]
                                .as_u64()
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| "none".into()),
                            p["lag"].to_string()
                        );
                        if p["stream_reset"].as_bool() == Some(true) {
                            println!(
                                "  STREAM RESET {} {}: checkpoint {} is past the stream's last sequence {} (deleted and recreated?); the worker halts. Rebuild, or run with --accept-stream-reset",
                                p["projector"].as_str().unwrap_or(""),
                                p["stream"].as_str().unwrap_or(""),
                                p["checkpoint"],
                                p["stream_last"]
                            );
                        }
                    }
                    if lost.is_empty() {
                        println!("  no lost ranges");
                    }
                    for l in lost {
                        println!(
                            "  LOST RANGE {} {} seq {}..={} ({})",
                            l["projector"].as_str().unwrap_or(""),
                            l["stream"].as_str().unwrap_or(""),
                            l["from"],
                            l["to"],
                            if l["halted"].as_bool() == Some(true) {
                                "projector halted"
                            } else {
                                "skipped"
                            }
                        );
                    }
                }
                Err(e) => println!("\ncheckpoints and lost ranges unknown: {e}"),
            }
            Ok(status_exit(&progress))
        }
    }
}

/// Status exits 1 when it could not read the checkpoints: a monitor must not take
/// "unknown" for "nothing lost". Everything else it shows is information, exit 0.
fn status_exit(progress: &Result<Progress, engine::error::WriteError>) -> ExitCode {
    match progress {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: checkpoints and lost ranges are unknown: {e}");
            ExitCode::from(1)
        }
    }
}

/// What `streams status` knows of the projectors' progress.
struct Progress {
    projectors: Vec<serde_json::Value>,
    lost: Vec<serde_json::Value>,
    generation: String,
    /// Why the partition holders are unknown, if they are.
    lease_error: Option<String>,
}

/// Checkpoints (with lag) per partition, the instance holding each partition's lease, and
/// lost ranges of a generation.
async fn projector_progress(
    cfg: &Config,
    js: &async_nats::jetstream::Context,
    generation: Option<&str>,
    st: &[streams::StreamStatus],
) -> Result<Progress, engine::error::WriteError> {
    use engine::sink::graph::{CheckpointKey, GraphSink};
    let g = GraphSink::for_config(cfg)?;
    engine::sink::ready::wait_ready(&g, cfg.neo4j.connect_timeout).await?;
    let generation = match generation {
        Some(x) => x.to_string(),
        None => engine::generations::live(&g).await?,
    };
    let generation = generation.as_str();
    // An unreadable lease bucket leaves the holders unknown, which is not "no holder": it is
    // said once (stderr, and `lease_error` in --json) and every partition shows "holder
    // unknown"; the checkpoints are still worth showing.
    let kv = if cfg.partitions.count > 1 {
        match js.get_key_value(&cfg.partitions.lease_bucket).await {
            Ok(kv) => Some(Ok(kv)),
            Err(e) => Some(Err(format!(
                "lease bucket {}: {e}",
                cfg.partitions.lease_bucket
            ))),
        }
    } else {
        None
    };
    let mut lease_error = match &kv {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    };
    let mut projectors = Vec::new();
    for p in &cfg.projectors {
        let holders: Option<std::collections::BTreeMap<u32, String>> = match &kv {
            Some(Ok(kv)) => match engine::leases::holders(kv, &p.name).await {
                Ok(h) => Some(h.into_iter().collect()),
                Err(e) => {
                    lease_error.get_or_insert_with(|| format!("lease holders: {e}"));
                    None
                }
            },
            Some(Err(_)) => None,
            None => Some(Default::default()),
        };
        for s in &p.streams {
            let found = st.iter().find(|x| &x.name == s && x.exists);
            let last = found.map(|x| x.last_seq).unwrap_or(0);
            for part in 0..cfg.partitions.count {
                let ckpt = g
                    .checkpoint(generation, &CheckpointKey::new(&p.name, s, part))
                    .await?;
                projectors.push(serde_json::json!({
                    "projector": p.name, "stream": s, "partition": part,
                    "holder": holders.as_ref().and_then(|h| h.get(&part)),
                    "checkpoint": ckpt, "lag": last.saturating_sub(ckpt.unwrap_or(0)),
                    "stream_last": last,
                    // The worker halts on this (WorkerError::StreamReset).
                    "stream_reset": found.is_some() && ckpt.is_some_and(|c| c > last),
                }));
            }
        }
    }
    let lost = g
        .lost_ranges(generation)
        .await?
        .into_iter()
        .map(|(p, s, f, t, h)| serde_json::json!({"projector": p, "stream": s, "from": f, "to": t, "halted": h}))
        .collect();
    Ok(Progress {
        projectors,
        lost,
        generation: generation.to_string(),
        lease_error,
    })
}
