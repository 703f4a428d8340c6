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
            let drifted = report
                .iter()
                .any(|(_, o)| matches!(o, Ensured::Drifted { .. }));
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
                        Ensured::Drifted { drift } => {
                            println!("{name}: DRIFT");
                            for d in drift {
                                println!("  {:<17} wanted {:<24} found {}", d.field, d.wanted, d.found);
                            }
                        }
                    }
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
            let st = streams::status(&js, &specs).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&st).expect("serializable")
                );
                return Ok(ExitCode::SUCCESS);
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
                for c in &s.consumers {
                    println!(
                        "  consumer {:<30} pending {:>8}  ack pending {:>6}  ack floor {:>10}  redelivered {:>6}",
                        c.name, c.pending, c.ack_pending, c.ack_floor, c.redelivered
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
