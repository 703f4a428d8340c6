//! The one supervision loop: starts a worker per (projector, partition) this process runs,
//! stops them (shutdown, a halting worker, a partition handed over or lost), joins them and
//! collects how each ended. With `[partitions] count` > 1 the partitions come and go with
//! their leases (`crate::leases`): a lease round every third of the TTL takes free
//! partitions up to the fair share, hands surplus ones over once their worker stopped, and
//! stops at once a worker whose lease another instance took. On shutdown the leases are
//! refreshed until each partition's worker stopped, then released, so another instance
//! takes over at once rather than after the TTL.

use super::{RunError, WorkerBase};
use crate::config::ProjectorEntry;
use crate::leases::Leases;
use crate::supervisor::{Key, Supervisor};
use crate::worker::{Exit, Shared, TransactionPer, Worker};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Opens the lease bucket and one [`Leases`] per projector.
pub(super) async fn leases(
    base: &WorkerBase<'_>,
    projectors: &[ProjectorEntry],
    shared: &Shared,
) -> Result<Vec<Leases>, RunError> {
    let pc = &base.cfg.partitions;
    let kv = crate::leases::bucket(&shared.js, pc, base.cfg.stream_defaults.replicas).await?;
    for p in projectors {
        shared.metrics.init_partitioned(&p.name, pc.count);
    }
    tracing::info!(instance = %base.opts.instance, partitions = pc.count, lease_ttl_s = pc.lease_ttl.as_secs(), bucket = %pc.lease_bucket, "claiming partitions through leases");
    Ok(projectors
        .iter()
        .map(|p| {
            Leases::new(
                kv.clone(),
                &p.name,
                &base.opts.instance,
                pc.count,
                pc.lease_ttl,
            )
        })
        .collect())
}

/// What the loop keeps between rounds.
struct Loop<'a> {
    base: &'a WorkerBase<'a>,
    projectors: &'a [ProjectorEntry],
    shared: &'a Shared,
    /// Per projector: its connections with its own block list of parked stories.
    sh: Vec<Shared>,
    sup: Supervisor,
    /// Partitions whose worker was stopped to hand them over; released once it ended.
    handing_over: BTreeSet<Key>,
}

impl Loop<'_> {
    fn spawn(&mut self, i: usize, part: u32, partitions: u32) {
        let p = &self.projectors[i];
        // Registered before it starts, so `until_caught_up` waits for every stream.
        for stream in &p.streams {
            self.shared
                .health
                .update(&format!("{}/{}/{}", p.name, stream, part), |h| {
                    h.connected = false
                });
        }
        let groups: Vec<Vec<String>> = match self.base.opts.transaction_per {
            TransactionPer::Partition => vec![p.streams.clone()],
            TransactionPer::Stream => p.streams.iter().map(|s| vec![s.clone()]).collect(),
        };
        for streams in groups {
            let name = match streams.as_slice() {
                [one] => format!("{}/{one}/{part}", p.name),
                _ => format!("{}/{part}", p.name),
            };
            let wc = self.base.worker(&p.name, &streams, part, partitions);
            let sh = self.sh[i].clone();
            self.sup
                .spawn((i, part), name, move |stop| Worker::new(wc, sh, stop).run());
        }
    }

    /// One lease round of projector `i`.
    async fn upkeep(&mut self, i: usize, l: &mut Leases) {
        let p = &self.projectors[i];
        let upkeep = format!("{}/leases", p.name);
        let ch = match l.tick().await {
            Ok(ch) => {
                self.shared.health.update(&upkeep, |h| {
                    h.connected = true;
                    h.last_error = None;
                });
                ch
            }
            Err(e) => {
                self.shared.health.update(&upkeep, |h| {
                    h.connected = false;
                    h.last_error = Some(e.to_string());
                });
                self.shared
                    .metrics
                    .write_errors
                    .with_label_values(&[&p.name, "-", "lease"])
                    .inc();
                tracing::warn!(projector = %p.name, error = %e, "lease upkeep failed; retrying next round (a lease not refreshed within its TTL passes to another instance)");
                return;
            }
        };
        for part in ch.lost {
            self.sup.stop(&(i, part));
            tracing::warn!(projector = %p.name, partition = part, "lease lost to another instance (not refreshed in time); stopping this partition's worker");
        }
        for part in ch.surplus {
            if self.handing_over.insert((i, part)) {
                if !self.sup.stop(&(i, part)) {
                    self.handing_over.remove(&(i, part));
                    if let Err(e) = l.release(part).await {
                        tracing::warn!(projector = %p.name, partition = part, error = %e, "cannot release the lease; it expires by itself");
                    }
                }
                tracing::info!(projector = %p.name, partition = part, "more than a fair share of partitions; handing this one over");
            }
        }
        for part in ch.acquired {
            if self.sup.holds(&(i, part)) {
                // Its previous worker here (stopped when the lease was lost) still finishes its
                // group: give the lease back and take it in a later round, one writer at a time.
                tracing::warn!(projector = %p.name, partition = part, "partition acquired again while its previous worker still stops; giving it back for now");
                if let Err(e) = l.release(part).await {
                    tracing::warn!(projector = %p.name, partition = part, error = %e, "cannot release the lease; it expires by itself");
                }
                continue;
            }
            // Stories parked by the partition's previous holder stay blocked here: its worker
            // reads them from the generation as it starts (worker/start.rs).
            self.spawn(i, part, self.base.cfg.partitions.count);
            tracing::info!(projector = %p.name, partition = part, instance = %self.base.opts.instance, "partition acquired; its worker starts from the stored checkpoints");
        }
        let ttl = self.base.cfg.partitions.lease_ttl;
        for t in &ch.taken_over {
            let m = &self.shared.metrics;
            m.takeovers.with_label_values(&[&p.name, t.how()]).inc();
            if t.handed_over {
                tracing::info!(projector = %p.name, partition = t.partition, from = %t.from, "took over a partition from another instance (it handed the partition over)");
            } else {
                m.takeover_gap
                    .with_label_values(&[&p.name])
                    .observe(t.seconds_since_refresh);
                tracing::info!(projector = %p.name, partition = t.partition, from = %t.from, seconds_since_its_last_refresh = format!("{:.1}", t.seconds_since_refresh), lease_ttl_s = ttl.as_secs(), "took over a partition from another instance (its lease expired)");
            }
        }
        self.shared
            .metrics
            .partitions_held
            .with_label_values(&[&p.name, &self.base.opts.instance])
            .set(l.held().len() as i64);
    }
}

/// Runs the workers until every one ended (one instance: caught up, stopped or halted) or,
/// with leases, until shutdown and every held partition's worker ended.
pub(super) async fn supervise(
    base: &WorkerBase<'_>,
    projectors: &[ProjectorEntry],
    shared: &Shared,
    stop_tx: &watch::Sender<bool>,
    mut stop_seen: watch::Receiver<bool>,
    mut leases: Option<Vec<Leases>>,
) -> Result<Vec<(String, Exit)>, RunError> {
    let mut lp = Loop {
        base,
        projectors,
        shared,
        sh: projectors
            .iter()
            .map(|_| Shared {
                blocked: Arc::new(Mutex::new(Default::default())),
                ..shared.clone()
            })
            .collect(),
        sup: Supervisor::new(),
        handing_over: BTreeSet::new(),
    };
    if leases.is_none() {
        for i in 0..projectors.len() {
            lp.spawn(i, 0, 1);
        }
    }
    let every = crate::leases::tick_interval(base.cfg.partitions.lease_ttl);
    let mut tick = tokio::time::interval(every);
    let (mut exits, mut errors) = (Vec::new(), Vec::new());
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if lp.sup.is_empty() && (deadline.is_some() || leases.is_none()) {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if leases.is_some() => {
                let Some(ls) = leases.as_mut() else { continue };
                if deadline.is_some() {
                    // Shutting down: keep the leases of partitions still finishing their
                    // group (each is released as soon as its worker stops, below), so none
                    // expires and gets a second writer while the first still commits.
                    for (l, p) in ls.iter_mut().zip(projectors) {
                        match l.refresh().await {
                            Ok(lost) if lost.is_empty() => {}
                            Ok(lost) => tracing::warn!(projector = %p.name, partitions = ?lost, "leases taken by another instance while this one shuts down; their groups in flight will not commit (checkpoint moved)"),
                            Err(e) => tracing::warn!(projector = %p.name, error = %e, "lease refresh failed while shutting down; retrying next round"),
                        }
                    }
                    continue;
                }
                for (i, l) in ls.iter_mut().enumerate() {
                    lp.upkeep(i, l).await;
                }
            }
            ended = lp.sup.join_next(), if !lp.sup.is_empty() => {
                let Some(ended) = ended else { continue };
                let (i, part) = ended.key;
                let p = &projectors[i];
                // The partition is done once its last worker ended.
                let partition_done = !lp.sup.holds(&ended.key);
                if let Some(ls) = leases.as_mut().filter(|_| partition_done) {
                    if lp.handing_over.remove(&ended.key) || deadline.is_some() {
                        // Surplus, or shutting down: the partition's worker is done, so
                        // another instance may take it now rather than after the TTL.
                        if let Err(e) = ls[i].release(part).await {
                            tracing::warn!(projector = %p.name, partition = part, error = %e, "cannot release the lease; it expires by itself");
                        }
                        tracing::info!(projector = %p.name, partition = part, "partition handed over");
                    }
                    if ended.result.is_ok() && deadline.is_none() {
                        for stream in &p.streams {
                            shared.health.remove(&format!("{}/{}/{}", p.name, stream, part));
                            shared.metrics.forget_partition(&p.name, stream, part);
                        }
                    }
                }
                match ended.result {
                    Ok(exit) => exits.push((ended.name, exit)),
                    Err(e) => {
                        // One halting worker stops the others: an operator must look.
                        stop_tx.send_replace(true);
                        errors.push(e);
                    }
                }
            }
            _ = stop_seen.wait_for(|s| *s), if deadline.is_none() => {
                lp.sup.stop_all();
                // Leave the fair share now: without it the other instances still count this
                // one and take its partitions only after the lease TTL, not on release.
                for (l, p) in leases.iter_mut().flatten().zip(projectors) {
                    if let Err(e) = l.leave().await {
                        tracing::warn!(projector = %p.name, error = %e, "cannot remove this instance's heartbeat; the others take its partitions when its heartbeat ages out");
                    }
                }
                deadline = Some(tokio::time::Instant::now() + base.opts.shutdown_timeout);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                tracing::error!(secs = base.opts.shutdown_timeout.as_secs(), "shutdown deadline passed with groups in flight; they were not acked and will be redelivered");
                // Waits until the aborted workers are gone before the leases are released:
                // a commit still in flight must not land after another instance took over.
                for ended in lp.sup.abort_all().await {
                    match ended.result {
                        Ok(exit) => exits.push((ended.name, exit)),
                        // Aborted: its group was not acked (logged above), not a failure.
                        Err(_) if ended.aborted => {}
                        // One that halted just as the deadline passed is kept.
                        Err(e) => errors.push(e),
                    }
                }
                break;
            }
        }
    }
    for (l, p) in leases.iter_mut().flatten().zip(projectors) {
        match l.release_all().await {
            Ok(()) => {
                tracing::info!(projector = %p.name, "leases released for the other instances")
            }
            Err(e) => {
                tracing::warn!(projector = %p.name, error = %e, "cannot release the leases; they expire after the TTL")
            }
        }
    }
    if errors.is_empty() {
        Ok(exits)
    } else {
        Err(RunError::Workers(errors))
    }
}
