//! The background rebuild of `run --on-projection-change rebuild`: the live generation was
//! created by an older projection version, so it stays live and served while a generation
//! of this binary's version is built beside it, caught up, checked, switched to, and the old
//! one dropped after a grace period (docs/decisions.md D71-D72, docs/operations.md
//! "Upgrades").
//!
//! Several instances of the new version (a rolling upgrade) build it once: the first claims
//! `upgrade.<generation>` in the lease bucket and refreshes it while it builds; the others
//! wait for the switch (or take the claim over when it expires and resume the build, which
//! continues from the new generation's checkpoints).

use crate::generation::{build_generation, switch_live, RebuildError};
use crate::hash::GraphDigest;
use crate::progress::Watch;
use crate::settled::{self, OldGeneration, Settled};
use engine::config::Config;
use engine::error::WriteError;
use engine::generations;
use engine::runner::{RebuildHook, RunError, UpgradeContext};
use engine::sink::cache::CacheSink;
use engine::sink::graph::GraphSink;
use std::time::Duration;

/// The hook `engine::runner::run_with` calls when the live generation is of an older version.
pub fn hook(cfg: Config, batch_size: usize, grace: Duration) -> RebuildHook {
    Box::new(move |ctx| {
        Box::pin(async move {
            // The build's future is not `Send` (the replay holds a `watch` borrow across an
            // await), so it runs to completion on a blocking thread of the same runtime.
            let handle = tokio::runtime::Handle::current();
            let res = tokio::task::spawn_blocking(move || {
                let res = handle.block_on(upgrade(&cfg, batch_size, grace, &ctx));
                ctx.health.set_upgrade(None);
                res
            })
            .await
            .map_err(|e| RunError::Upgrade(format!("the background rebuild panicked: {e}")))?;
            res.map_err(|e| RunError::Upgrade(e.to_string()))
        })
    })
}

/// The new generation's name: the live one's without an earlier `-pvN` suffix, then this
/// version's (`main` -> `main-pv2` -> `main-pv3`). The same for every instance of a version.
///
/// ```
/// assert_eq!(replay::upgrade::generation_name("main", 2), "main-pv2");
/// assert_eq!(replay::upgrade::generation_name("main-pv2", 3), "main-pv3");
/// assert_eq!(replay::upgrade::generation_name("rebuild-17", 3), "rebuild-17-pv3");
/// ```
pub fn generation_name(live: &str, version: u32) -> String {
    let base = match live.rsplit_once("-pv") {
        Some((b, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => b,
        _ => live,
    };
    format!("{base}-pv{version}")
}

async fn upgrade(
    cfg: &Config,
    batch_size: usize,
    grace: Duration,
    ctx: &UpgradeContext,
) -> Result<bool, RebuildError> {
    let ours = projections::PROJECTION_VERSION;
    let name = generation_name(&ctx.live, ours);
    let step = |s: &str| {
        ctx.metrics
            .upgrade_steps
            .with_label_values(&[&name, s])
            .inc();
        tracing::info!(generation = %name, old = %ctx.live, step = s, "projection upgrade");
    };
    let graph = GraphSink::for_config(cfg)?;
    let client = engine::nats::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(client);
    let Some(claim) = claim(cfg, &js, &graph, &name, ctx).await? else {
        // Another instance switched live to this version: go on projecting it.
        return Ok(true);
    };
    // A signal during the build stops the upgrade before the switch (the build listens for
    // it too; the catch-up's workers only stop, so the flag is what tells this sequence).
    let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let flag = stopping.clone();
        tokio::spawn(async move {
            engine::runner::shutdown_signal().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let res = build_and_switch(cfg, &graph, &js, &name, batch_size, ctx, &step, &stopping).await;
    watcher.abort();
    claim.release().await;
    let Some(stories) = res? else {
        return Ok(false);
    };
    step("switched");
    tracing::info!(generation = %name, old = %ctx.live, stories, "live switched to the new projection version; the old generation is dropped after the grace period");
    let (cfg, old, grace, metrics) = (cfg.clone(), ctx.live.clone(), grace, ctx.metrics.clone());
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        match drop_old(&cfg, &old).await {
            Ok(nodes) => {
                metrics
                    .upgrade_steps
                    .with_label_values(&[&old, "dropped_old"])
                    .inc();
                tracing::info!(generation = %old, nodes, "dropped the previous projection version's generation");
            }
            Err(e) => {
                tracing::error!(generation = %old, error = %e, "could not drop the previous projection version's generation; drop it with `projector generations drop {old} --yes`")
            }
        }
    });
    Ok(true)
}

async fn drop_old(cfg: &Config, old: &str) -> Result<u64, WriteError> {
    let graph = GraphSink::for_config(cfg)?;
    let cache = CacheSink::connect(&cfg.valkey).await?;
    generations::drop_generation(&graph, &cache, old).await
}

/// Builds, checks and switches; `None` when a shutdown interrupted it before the switch.
#[allow(clippy::too_many_arguments)]
async fn build_and_switch(
    cfg: &Config,
    graph: &GraphSink,
    js: &async_nats::jetstream::Context,
    name: &str,
    batch_size: usize,
    ctx: &UpgradeContext,
    step: &impl Fn(&str),
    stopping: &std::sync::atomic::AtomicBool,
) -> Result<Option<usize>, RebuildError> {
    let stopped = || stopping.load(std::sync::atomic::Ordering::SeqCst);
    step("started");
    let old_before = settled_old(cfg, graph, &ctx.live).await?;
    generations::mark(graph, name, Some("building")).await?;
    let mut keys = Vec::new();
    let projectors: Vec<String> = cfg.projectors.iter().map(|p| p.name.clone()).collect();
    for p in &cfg.projectors {
        let watch = Watch {
            graph: graph.clone(),
            js: js.clone(),
            projector: p.name.clone(),
            streams: p.streams.clone(),
            generation: name.to_string(),
        };
        let (metrics, health, gen) = (ctx.metrics.clone(), ctx.health.clone(), name.to_string());
        let mut counted = watch.done().await?;
        let shown = watch.spawn(Duration::from_secs(1), move |r| {
            metrics
                .rebuild_events
                .with_label_values(&[&gen])
                .inc_by(r.done.saturating_sub(counted));
            counted = counted.max(r.done);
            metrics
                .rebuild_expected
                .with_label_values(&[&gen])
                .set(r.expected as i64);
            metrics
                .rebuild_eta
                .with_label_values(&[&gen])
                // Unknown until something was read.
                .set(r.eta_secs.map(|s| s.ceil() as i64).unwrap_or(-1));
            health.set_upgrade(Some(format!("rebuilding {}", crate::progress::summary(&r))));
        });
        let built = build_generation(cfg, &p.name, name, None, batch_size).await;
        shown.abort();
        match built {
            Ok(k) => keys.extend(k),
            // The build's own SIGINT/SIGTERM stop (`build_generation` says "interrupted").
            Err(RebuildError::Failed(msg)) if msg.contains("interrupted") => {
                tracing::info!(generation = %name, "background rebuild stopped by shutdown; the old generation stays live and the next start resumes it");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        if stopped() {
            tracing::info!(generation = %name, "background rebuild stopped by shutdown; the old generation stays live and the next start resumes it");
            return Ok(None);
        }
    }
    generations::mark(graph, name, Some("built")).await?;
    step("built");
    ctx.health.set_upgrade(Some(format!("checking {name}")));
    // The new generation reads back the same twice (nothing else writes it), and the build
    // did not touch the old one: its hash moved only if its own writers moved its checkpoints.
    let first = crate::hash::graph_digest(graph, name).await?;
    let second = crate::hash::graph_digest(graph, name).await?;
    if first != second {
        return Err(RebuildError::Failed(format!(
            "generation {name} hashed {} then {}: something else writes it; not switching",
            first.hash, second.hash
        )));
    }
    let old_after = settled_old(cfg, graph, &ctx.live).await?;
    match settled::compare(old_before.as_ref(), old_after.as_ref()) {
        OldGeneration::Unchanged => {}
        OldGeneration::Moved => {
            tracing::info!(generation = %ctx.live, "the old generation's writers committed during the rebuild; its digest is not compared")
        }
        OldGeneration::ChangedBehindCheckpoints => {
            return Err(RebuildError::Failed(format!(
                "the old generation {} changed during the rebuild without its checkpoints moving; not switching",
                ctx.live
            )));
        }
    }
    step("verified");
    if stopped() {
        return Ok(None);
    }
    ctx.health.set_upgrade(Some(format!("switching to {name}")));
    Ok(Some(
        switch_live(cfg, &projectors, name, &keys, batch_size).await?,
    ))
}

/// The old generation's digest read while its checkpoints stood still (`settled`); `None`
/// when its writers committed during each of the tries.
async fn settled_old(
    cfg: &Config,
    graph: &GraphSink,
    gen: &str,
) -> Result<Option<Settled<GraphDigest>>, WriteError> {
    let read = settled::read(
        || checkpoint_sum(cfg, graph, gen),
        || crate::hash::graph_digest(graph, gen),
        SETTLE_TRIES,
    )
    .await?;
    if read.is_none() {
        tracing::info!(generation = %gen, tries = SETTLE_TRIES, "the old generation's writers committed during every digest read");
    }
    Ok(read)
}

/// Digest reads tried before giving up on a settled one: each try is one digest of the old
/// generation, and a writer busy through all of them will have moved its checkpoints anyway.
const SETTLE_TRIES: usize = 5;

/// Every checkpoint of generation `gen`, summed: it moves whenever a writer commits there.
async fn checkpoint_sum(cfg: &Config, graph: &GraphSink, gen: &str) -> Result<u64, WriteError> {
    let mut total = 0;
    for p in &cfg.projectors {
        for s in &p.streams {
            total += graph
                .checkpoints_of(gen, &p.name, s)
                .await?
                .values()
                .sum::<u64>();
        }
    }
    Ok(total)
}

/// The claim on building `name`, refreshed while held.
struct Claim {
    refresh: tokio::task::JoinHandle<()>,
    kv: async_nats::jetstream::kv::Store,
    key: String,
}

impl Claim {
    async fn release(self) {
        self.refresh.abort();
        if let Err(e) = self.kv.delete(&self.key).await {
            // It expires with the bucket's max age anyway; the next builder only waits longer.
            tracing::warn!(key = %self.key, error = %e, "could not release the upgrade claim");
        }
    }
}

/// Claims the build of `name`, or waits while another instance holds the claim; `None` when
/// live became a generation of this version meanwhile.
async fn claim(
    cfg: &Config,
    js: &async_nats::jetstream::Context,
    graph: &GraphSink,
    name: &str,
    ctx: &UpgradeContext,
) -> Result<Option<Claim>, RebuildError> {
    let pc = &cfg.partitions;
    let kv = engine::leases::bucket(js, pc, cfg.stream_defaults.replicas).await?;
    let key = format!("upgrade.{name}");
    let me = format!("{}-{}", name, std::process::id());
    let mut waited = false;
    loop {
        let live = generations::live(graph).await?;
        if generations::projection_version(graph, &live).await?
            == Some(i64::from(projections::PROJECTION_VERSION))
        {
            return Ok(None);
        }
        match kv.create(&key, me.clone().into()).await {
            Ok(mut revision) => {
                let (kv2, key2, me2, every) =
                    (kv.clone(), key.clone(), me.clone(), pc.lease_ttl / 3);
                let refresh = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        match kv2.update(&key2, me2.clone().into(), revision).await {
                            Ok(r) => revision = r,
                            Err(e) => {
                                tracing::warn!(key = %key2, error = %e, "could not refresh the upgrade claim")
                            }
                        }
                    }
                });
                return Ok(Some(Claim { refresh, kv, key }));
            }
            Err(e) if e.kind() != async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                return Err(WriteError::Nats {
                    message: format!("upgrade claim {key}: {e}"),
                }
                .into());
            }
            Err(_) => {
                // Held by another instance: wait for its switch, or for the claim to expire.
                if !waited {
                    waited = true;
                    tracing::info!(generation = %name, "another instance is building the new generation; waiting for its switch");
                    ctx.health.set_upgrade(Some(format!(
                        "waiting for another instance to build {name}"
                    )));
                }
                tokio::time::sleep(pc.lease_ttl / 3).await;
            }
        }
    }
}
