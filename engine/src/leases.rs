//! Partition leases in a JetStream KV bucket: each partition has at most one writing
//! instance, and a dead instance's partitions are taken over once its leases expire.
//!
//! Keys (bucket `[partitions] lease_bucket`, `max_age` = `lease_ttl`, so an entry nobody
//! refreshes disappears):
//! - `<projector>.p<N>` = the holding instance's id; taken with `create` (fails while held),
//!   refreshed with `update` at the revision last seen (fails once someone else holds it);
//! - `<projector>.instance.<id>` = heartbeat of every running instance, to share fairly.
//!
//! Each instance aims at `ceil(partitions / live instances)` partitions: it releases extras
//! (after its workers on them stopped) and takes free ones up to that. A lease is only a
//! scheduling hint for safety purposes: two writers on one partition are still fenced by the
//! checkpoint's optimistic move in Neo4j (the second commit fails with `CheckpointMoved`).

use crate::config::PartitionConfig;
use crate::error::WriteError;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// The share of partitions one of `live` instances should hold.
///
/// ```
/// use engine::leases::fair_share;
/// assert_eq!(fair_share(16, 1), 16);
/// assert_eq!(fair_share(16, 3), 6);
/// assert_eq!(fair_share(16, 0), 16);
/// ```
pub fn fair_share(partitions: u32, live: usize) -> usize {
    (partitions as usize).div_ceil(live.max(1))
}

/// What one round of lease upkeep changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Newly held: start their workers.
    pub acquired: Vec<u32>,
    /// Held by someone else now (our refresh came too late): stop their workers at once.
    pub lost: Vec<u32>,
    /// More than our share: stop their workers, then `release` them.
    pub surplus: Vec<u32>,
    /// Acquired partitions this instance had seen held by another instance.
    pub taken_over: Vec<Takeover>,
}

/// A partition acquired after another instance held it.
#[derive(Debug, PartialEq)]
pub struct Takeover {
    pub partition: u32,
    /// The instance that held it.
    pub from: String,
    /// Seconds since that instance last refreshed the lease. When the lease expired (the
    /// holder died or hung) this is how long the partition went without a writer, within one
    /// upkeep interval.
    pub seconds_since_refresh: f64,
    /// The holder gave it back (fair share, shutdown) rather than letting it expire.
    pub handed_over: bool,
}

impl Takeover {
    /// The `how` label of `projector_partition_takeovers_total`.
    pub fn how(&self) -> &'static str {
        if self.handed_over {
            "handed_over"
        } else {
            "expired"
        }
    }
}

/// The last sighting of a partition held by another instance.
struct Sighting {
    holder: String,
    refreshed: time::OffsetDateTime,
    released: bool,
}

pub struct Leases {
    kv: kv::Store,
    projector: String,
    instance: String,
    partitions: u32,
    /// The bucket's `max_age`: an entry cannot expire sooner after its last refresh.
    ttl: Duration,
    held: BTreeMap<u32, u64>,
    /// Partitions seen held by others: holder, its last refresh, whether it released them.
    seen: BTreeMap<u32, Sighting>,
}

fn nats_err(what: &str) -> impl Fn(String) -> WriteError + '_ {
    move |e| WriteError::Nats {
        message: format!("lease bucket: {what}: {e}"),
    }
}

/// The lease key of a partition.
pub fn lease_key(projector: &str, partition: u32) -> String {
    format!("{projector}.p{partition}")
}

fn instance_key(projector: &str, instance: &str) -> String {
    format!("{projector}.instance.{instance}")
}

/// Opens (creating if missing) the lease bucket.
pub async fn bucket(
    js: &jetstream::Context,
    cfg: &PartitionConfig,
    replicas: usize,
) -> Result<kv::Store, WriteError> {
    if let Ok(kv) = js.get_key_value(&cfg.lease_bucket).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: cfg.lease_bucket.clone(),
        description: "projector partition leases (engine/src/leases.rs)".into(),
        history: 1,
        max_age: cfg.lease_ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| nats_err("create")(e.to_string()))
}

/// Who holds which partition of `projector`: `(partition, instance)`.
pub async fn holders(kv: &kv::Store, projector: &str) -> Result<Vec<(u32, String)>, WriteError> {
    let prefix = format!("{projector}.p");
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| nats_err("keys")(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| nats_err("keys")(e.to_string()))?;
        // Another projector's key, or not a partition lease: not ours to report.
        let Some(p) = k.strip_prefix(&prefix).and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(v) = kv
            .get(k.as_str())
            .await
            .map_err(|e| nats_err("get")(e.to_string()))?
        {
            out.push((p, String::from_utf8_lossy(&v).into_owned()));
        }
    }
    out.sort();
    Ok(out)
}

impl Leases {
    pub fn new(
        kv: kv::Store,
        projector: &str,
        instance: &str,
        partitions: u32,
        ttl: Duration,
    ) -> Leases {
        Leases {
            kv,
            projector: projector.to_string(),
            instance: instance.to_string(),
            partitions,
            ttl,
            held: BTreeMap::new(),
            seen: BTreeMap::new(),
        }
    }

    /// Partitions this instance holds.
    pub fn held(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    async fn live_instances(&self) -> Result<usize, WriteError> {
        let prefix = format!("{}.instance.", self.projector);
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| nats_err("keys")(e.to_string()))?;
        let mut n = 0;
        while let Some(k) = keys.next().await {
            if k.map_err(|e| nats_err("keys")(e.to_string()))?
                .starts_with(&prefix)
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// One round: heartbeat, refresh what is held, then give up surplus or take free
    /// partitions up to the fair share. Called every third of the lease TTL.
    pub async fn tick(&mut self) -> Result<Changes, WriteError> {
        let mut ch = Changes::default();
        self.kv
            .put(
                instance_key(&self.projector, &self.instance),
                self.instance.clone().into(),
            )
            .await
            .map_err(|e| nats_err("heartbeat")(e.to_string()))?;
        ch.lost = self.refresh().await?;
        // Who holds the others, and when they last refreshed: if one of them stops, this
        // is what says how long its partition went without a writer once we take it.
        for p in (0..self.partitions).filter(|p| !self.held.contains_key(p)) {
            let key = lease_key(&self.projector, p);
            match self.kv.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    let holder = String::from_utf8_lossy(&entry.value).into_owned();
                    self.seen.insert(
                        p,
                        Sighting {
                            holder,
                            refreshed: entry.created,
                            released: false,
                        },
                    );
                }
                // Released: the delete marker stays until it ages out.
                Ok(Some(_)) => {
                    if let Some(s) = self.seen.get_mut(&p) {
                        s.released = true;
                    }
                }
                // Expired (an unrefreshed entry ages out): keep the last sighting.
                Ok(None) => {}
                Err(e) => return Err(nats_err("read holder")(e.to_string())),
            }
        }
        let share = fair_share(self.partitions, self.live_instances().await?);
        if self.held.len() > share {
            ch.surplus = self
                .held
                .keys()
                .rev()
                .take(self.held.len() - share)
                .copied()
                .collect();
            return Ok(ch);
        }
        for p in 0..self.partitions {
            if self.held.len() >= share {
                break;
            }
            if self.held.contains_key(&p) {
                continue;
            }
            let key = lease_key(&self.projector, p);
            match self.kv.create(&key, self.instance.clone().into()).await {
                Ok(rev) => {
                    self.held.insert(p, rev);
                    ch.acquired.push(p);
                    if let Some(s) = self.seen.remove(&p) {
                        let since =
                            (time::OffsetDateTime::now_utc() - s.refreshed).as_seconds_f64();
                        ch.taken_over.push(Takeover {
                            partition: p,
                            from: s.holder,
                            seconds_since_refresh: since,
                            handed_over: handed_over(s.released, since, self.ttl),
                        });
                    }
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(nats_err("take")(e.to_string())),
            }
        }
        Ok(ch)
    }

    /// Refreshes every lease held; returns the partitions found taken by another instance
    /// (no longer held). Also called alone while shutting down, so the leases of partitions
    /// still finishing their batch do not expire under them.
    pub async fn refresh(&mut self) -> Result<Vec<u32>, WriteError> {
        let mut lost = Vec::new();
        for (p, rev) in self.held.clone() {
            let key = lease_key(&self.projector, p);
            match self
                .kv
                .update(&key, self.instance.clone().into(), rev)
                .await
            {
                Ok(r) => {
                    self.held.insert(p, r);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.held.remove(&p);
                    lost.push(p);
                }
                Err(e) => return Err(nats_err("refresh")(e.to_string())),
            }
        }
        Ok(lost)
    }

    /// Gives a partition back (its workers have stopped), so another instance can take it
    /// at once instead of after the TTL. Only deletes the lease if it is still ours.
    pub async fn release(&mut self, partition: u32) -> Result<(), WriteError> {
        if let Some(rev) = self.held.remove(&partition) {
            self.kv
                .delete_expect_revision(lease_key(&self.projector, partition), Some(rev))
                .await
                .map_err(|e| nats_err("release")(e.to_string()))?;
        }
        Ok(())
    }

    /// Removes this instance's heartbeat, so the others stop counting it in the fair share
    /// and take each partition as soon as it is released (shutdown starts). Its leases are
    /// kept and refreshed until their workers stop.
    pub async fn leave(&mut self) -> Result<(), WriteError> {
        self.kv
            .delete(instance_key(&self.projector, &self.instance))
            .await
            .map_err(|e| nats_err("heartbeat delete")(e.to_string()))
    }

    /// Releases everything and removes the heartbeat (graceful shutdown).
    pub async fn release_all(&mut self) -> Result<(), WriteError> {
        for p in self.held() {
            self.release(p).await?;
        }
        self.kv
            .delete(instance_key(&self.projector, &self.instance))
            .await
            .map_err(|e| nats_err("heartbeat delete")(e.to_string()))
    }
}

/// Whether a partition taken `since` seconds after its holder's last refresh was given
/// back rather than left to expire. The release may fall between this round's read of the
/// key and its `create` (seen in CI: a hand-over logged as an expiry), so a seen delete
/// marker is not the only evidence: an entry with `max_age = ttl` cannot have aged out
/// sooner than `ttl` after its last write, so a free key before then was deleted. The
/// age compares the server's timestamp with this clock; skew only moves the boundary.
///
/// ```
/// use engine::leases::handed_over;
/// use std::time::Duration;
/// let ttl = Duration::from_secs(10);
/// assert!(handed_over(true, 30.0, ttl));
/// assert!(handed_over(false, 3.2, ttl));
/// assert!(!handed_over(false, 10.4, ttl));
/// ```
pub fn handed_over(release_seen: bool, since_refresh_s: f64, ttl: Duration) -> bool {
    release_seen || since_refresh_s < ttl.as_secs_f64()
}

/// How often leases are refreshed: a third of the TTL, so two missed rounds still keep them.
pub fn tick_interval(ttl: Duration) -> Duration {
    ttl / 3
}
