//! `projector run`.

use super::CliError;
use crate::cli::{OnErrorArg, OnGapArg, OnProjectionChangeArg, RunArgs, TransactionPerArg};
use engine::config::Config;
use engine::runner::{self, RunOptions};
use engine::worker::{Exit, OnError, OnGap, TransactionPer};
use std::process::ExitCode;
use std::time::Duration;

pub async fn run(cfg: &Config, a: RunArgs) -> Result<ExitCode, CliError> {
    let metrics_addr = a.metrics_addr.0;
    let opts = RunOptions {
        projectors: a.projectors,
        generation: a.generation.clone(),
        batch_size: a.batch_size as usize,
        on_error: match a.on_error {
            OnErrorArg::Park => OnError::Park,
            OnErrorArg::Halt => OnError::Halt,
        },
        on_gap: match a.on_gap {
            OnGapArg::Halt => OnGap::Halt,
            OnGapArg::Continue => OnGap::Continue,
        },
        accept_stream_reset: a.accept_stream_reset,
        transaction_per: match a.transaction_per {
            TransactionPerArg::Stream => TransactionPer::Stream,
            TransactionPerArg::Partition => TransactionPer::Partition,
        },
        until_caught_up: a.until_caught_up,
        metrics_addr,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        ready_lag: a.ready_lag,
        // Only the live generation owes the fleet its outbound events.
        publish_outbound: a.outbound || a.generation.is_none(),
        instance: a.instance.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        }),
    };
    let on_change = match a.on_projection_change {
        OnProjectionChangeArg::Rebuild => {
            runner::OnProjectionChange::Rebuild(replay::upgrade::hook(
                cfg.clone(),
                opts.batch_size,
                Duration::from_secs(a.drop_grace),
            ))
        }
        OnProjectionChangeArg::Warn => runner::OnProjectionChange::Warn,
        OnProjectionChangeArg::Refuse => runner::OnProjectionChange::Refuse,
    };
    let exits = runner::run_with(cfg, opts, None, on_change).await?;
    for (name, exit) in &exits {
        match exit {
            Exit::CaughtUp { checkpoints } => {
                for (stream, checkpoint) in checkpoints {
                    tracing::info!(worker = %name, %stream, checkpoint, "caught up")
                }
            }
            Exit::Stopped => tracing::info!(worker = %name, "stopped"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
