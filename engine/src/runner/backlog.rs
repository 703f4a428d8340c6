//! The parked backlog as a gauge (`projector_parked_events{projector,stream,kind}`), read
//! from the generation's parked records every few seconds rather than counted by the
//! workers: a `projector dlq retry` or `discard` run by another process shows too.

use crate::worker::Shared;
use std::time::Duration;
use tokio::sync::watch;

/// How often the gauge is read again from Neo4j (one indexed count per round).
const EVERY: Duration = Duration::from_secs(5);

/// Sets the gauge from `generation` (or the live one when `follow_live`) until `stop`.
pub(super) async fn watch(
    sh: Shared,
    generation: String,
    follow_live: bool,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = refresh(&sh, &generation, follow_live).await {
            // The gauge keeps its last values; the next round reads again.
            tracing::warn!(error = %e, "cannot read the parked backlog for projector_parked_events");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn refresh(
    sh: &Shared,
    generation: &str,
    follow_live: bool,
) -> Result<(), crate::error::WriteError> {
    let gen = if follow_live {
        crate::generations::live(&sh.graph).await?
    } else {
        generation.to_string()
    };
    let counts = sh.graph.parked_counts(&gen).await?;
    // Reset first: a kind whose last parked event was retried or discarded goes away.
    sh.metrics.parked_events.reset();
    for (projector, stream, kind, n) in counts {
        sh.metrics
            .parked_events
            .with_label_values(&[&projector, &stream, &kind])
            .set(n);
    }
    Ok(())
}
