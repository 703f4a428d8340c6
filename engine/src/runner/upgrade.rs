//! What `run` does when the live generation was created by another projection version
//! (`run --on-projection-change rebuild|warn|refuse`, docs/decisions.md D71-D72).
//!
//! A newer version than this binary's is always refused: an old instance restarted during
//! a rolling upgrade must not rebuild the old code's generation and switch back. An older
//! (or unrecorded) version is refused, projected with a warning, or rebuilt in the
//! background by the hook `replay::upgrade` gives, while the old generation stays live.

use super::RunError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::sink::graph::GraphSink;
use std::future::Future;
use std::pin::Pin;

/// What the rebuild hook is given: the live generation and what serves the process.
pub struct UpgradeContext {
    pub live: String,
    pub live_version: Option<i64>,
    pub metrics: Metrics,
    pub health: Health,
}

/// Builds a generation with this binary's projections and switches live to it; `Ok(false)`
/// when shutdown stopped it before the switch (the old generation stays live).
pub type RebuildHook = Box<
    dyn FnOnce(UpgradeContext) -> Pin<Box<dyn Future<Output = Result<bool, RunError>> + Send>>
        + Send,
>;

/// `run --on-projection-change`.
pub enum OnProjectionChange {
    /// Keep the old generation live, build the new one in the background, switch.
    Rebuild(RebuildHook),
    /// Project into the old generation anyway, logging and counting it.
    Warn,
    /// Exit 2 without writing.
    Refuse,
}

impl std::fmt::Debug for OnProjectionChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnProjectionChange::Rebuild(_) => "Rebuild",
            OnProjectionChange::Warn => "Warn",
            OnProjectionChange::Refuse => "Refuse",
        })
    }
}

/// Applies `policy` to the live generation; returns whether the process may go on to
/// project (false: stopped during a background rebuild).
pub(super) async fn apply(
    graph: &GraphSink,
    policy: OnProjectionChange,
    metrics: &Metrics,
    health: &Health,
) -> Result<bool, RunError> {
    let ours = projections::PROJECTION_VERSION;
    let live = crate::generations::live(graph).await?;
    let found = crate::generations::list(graph).await?;
    let info = found.iter().find(|g| g.generation == live);
    let version = info.and_then(|g| g.projection_version);
    let holds_nodes = info.is_some_and(|g| g.nodes > 0);
    health.set_generation(&live, version, info.and_then(|g| g.binary_version.clone()));
    // An empty live generation (a first start) is this version's from its first write.
    if version == Some(i64::from(ours)) || !holds_nodes {
        return Ok(true);
    }
    let step = |s: &str| metrics.upgrade_steps.with_label_values(&[&live, s]).inc();
    if let Some(newer) = version.filter(|v| *v > i64::from(ours)) {
        step("refused");
        return Err(RunError::NewerProjection {
            generation: live,
            live_version: newer,
            ours,
        });
    }
    match policy {
        OnProjectionChange::Refuse => {
            step("refused");
            Err(RunError::ProjectionChanged {
                generation: live,
                live_version: version,
                ours,
            })
        }
        OnProjectionChange::Warn => {
            step("warned");
            tracing::warn!(generation = %live, live_version = ?version, ours, "the live generation was created by another projection version; projecting into it anyway (--on-projection-change warn): it now mixes two versions' output, rebuild it to make it deterministic again");
            Ok(true)
        }
        OnProjectionChange::Rebuild(hook) => {
            tracing::info!(generation = %live, live_version = ?version, ours, "the live generation was created by another projection version; it stays live while a new generation is built in the background");
            hook(UpgradeContext {
                live,
                live_version: version,
                metrics: metrics.clone(),
                health: health.clone(),
            })
            .await
        }
    }
}
