//! `projector streams ensure|status`.

use super::CliError;
use crate::cli::StreamsCommand;
use engine::config::Config;
use engine::progress::Progress;
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
            let progress =
                engine::progress::progress(cfg, &js, args.generation.as_deref(), &st).await;
            if args.json {
                // Unknown is null, not empty: an empty list would say "nothing was lost".
                let (projectors, lost, generation, lease_error, neo4j_error, versions) =
                    match &progress {
                        Ok(p) => (
                            Some(p.partitions.clone()),
                            Some(p.lost.clone()),
                            Some(p.generation.clone()),
                            p.lease_error.clone(),
                            None,
                            Some(serde_json::json!({
                                "projection_version": p.projection_version,
                                "binary_version": p.binary_version,
                            })),
                        ),
                        Err(e) => (None, None, None, None, Some(e.to_string()), None),
                    };
                if let Some(e) = &lease_error {
                    eprintln!("warning: partition holders unknown ({e}); every holder is null");
                }
                let v = serde_json::json!({
                    "streams": st,
                    "generation": generation,
                    // What created the generation (null: unknown), and what this binary is.
                    "generation_versions": versions,
                    "binary": {
                        "projection_version": projections::PROJECTION_VERSION,
                        "binary_version": engine::generations::BINARY_VERSION,
                    },
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
                    // Storage the server did not report: unknown, shown as before.
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
                    partitions,
                    lost,
                    generation,
                    lease_error,
                    projection_version,
                    binary_version,
                }) => {
                    println!("\nPROJECTOR CHECKPOINTS (generation {generation})");
                    println!(
                        "  built by projection version {}, binary {}; this binary: projection version {}, binary {}",
                        projection_version
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "unknown".into()),
                        // Unrecorded: created before versions were recorded.
                        binary_version.as_deref().unwrap_or("unknown"),
                        projections::PROJECTION_VERSION,
                        engine::generations::BINARY_VERSION
                    );
                    if let Some(e) = lease_error {
                        eprintln!(
                            "warning: partition holders unknown ({e}); shown as \"holder unknown\""
                        );
                    }
                    for p in partitions {
                        let owner = match &p.holder {
                            Some(h) => format!("  held by {h}"),
                            None if lease_error.is_some() => "  holder unknown".into(),
                            None if cfg.partitions.count > 1 => "  no holder".into(),
                            None => String::new(),
                        };
                        let checkpoint = match p.checkpoint {
                            Some(c) => c.to_string(),
                            None => "none".into(),
                        };
                        println!(
                            "  {:<10} {:<22} p{:<3} checkpoint {:>10}  lag {:>8}{owner}",
                            p.projector, p.stream, p.partition, checkpoint, p.lag
                        );
                        if p.stream_reset {
                            println!(
                                "  STREAM RESET {} {}: checkpoint {checkpoint} is past the stream's last sequence {} (deleted and recreated?); the worker halts. Rebuild, or run with --accept-stream-reset",
                                p.projector, p.stream, p.stream_last
                            );
                        }
                    }
                    if lost.is_empty() {
                        println!("  no lost ranges");
                    }
                    for l in lost {
                        println!(
                            "  LOST RANGE {} {} seq {}..={} ({})",
                            l.projector,
                            l.stream,
                            l.from,
                            l.to,
                            if l.halted {
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
