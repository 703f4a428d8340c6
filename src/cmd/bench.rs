//! `projector bench ...`.

use super::CliError;
use crate::cli::BenchCommand;
use engine::config::Config;
use std::io::Write;
use std::process::ExitCode;

pub async fn run(cfg: &Config, cmd: BenchCommand) -> Result<ExitCode, CliError> {
    match cmd {
        BenchCommand::Gen(a) => {
            let samples = engine::history::generate(a.stories, a.seed);
            if a.publish {
                let client = engine::nats::connect(&cfg.nats).await?;
                let js = async_nats::jetstream::new(client);
                let started = std::time::Instant::now();
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
                    let _ = writeln!(out, "{} {}", s.subject, s.payload);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
