//! Where each projector is: checkpoints (with lag) per stream and partition, the instance
//! holding each partition's lease, and the lost ranges of a generation (`streams status`).

use crate::config::Config;
use crate::error::WriteError;
use crate::sink::graph::{CheckpointKey, GraphSink};
use crate::streams::StreamStatus;
use serde::Serialize;

/// One partition of one stream of a projector.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionProgress {
    pub projector: String,
    pub stream: String,
    pub partition: u32,
    /// The lease holder; `None` with [`Progress::lease_error`] set means unknown.
    pub holder: Option<String>,
    pub checkpoint: Option<u64>,
    pub lag: u64,
    pub stream_last: u64,
    /// The checkpoint is past the stream's last sequence: the worker halts on this
    /// (`WorkerError::StreamReset`).
    pub stream_reset: bool,
}

/// A hole found after a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct LostRange {
    pub projector: String,
    pub stream: String,
    pub from: u64,
    pub to: u64,
    pub halted: bool,
}

/// What is known of the projectors' progress in one generation.
#[derive(Debug, Clone)]
pub struct Progress {
    pub partitions: Vec<PartitionProgress>,
    pub lost: Vec<LostRange>,
    pub generation: String,
    /// Why the partition holders are unknown, if they are (a missing or unreadable lease
    /// bucket): then a `None` holder is unknown, not "no holder".
    pub lease_error: Option<String>,
    /// The projection and binary versions that created the generation (`None`: unrecorded).
    pub projection_version: Option<i64>,
    pub binary_version: Option<String>,
}

/// Reads the progress of every configured projector in `generation` (default: the live
/// one), against the streams' state `st`. Neo4j's wait is bounded by `[neo4j]
/// connect_timeout`.
pub async fn progress(
    cfg: &Config,
    js: &async_nats::jetstream::Context,
    generation: Option<&str>,
    st: &[StreamStatus],
) -> Result<Progress, WriteError> {
    let g = GraphSink::for_config(cfg)?;
    crate::sink::ready::wait_ready(&g, cfg.neo4j.connect_timeout).await?;
    let generation = match generation {
        Some(x) => x.to_string(),
        None => crate::generations::live(&g).await?,
    };
    // An unreadable lease bucket leaves the holders unknown, which is not "no holder": the
    // caller says so; the checkpoints are still worth showing.
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
    let mut partitions = Vec::new();
    for p in &cfg.projectors {
        let holders: Option<std::collections::BTreeMap<u32, String>> = match &kv {
            Some(Ok(kv)) => match crate::leases::holders(kv, &p.name).await {
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
            // A missing stream holds nothing: last sequence 0.
            let last = found.map(|x| x.last_seq).unwrap_or(0);
            for part in 0..cfg.partitions.count {
                let checkpoint = g
                    .checkpoint(&generation, &CheckpointKey::new(&p.name, s, part))
                    .await?;
                partitions.push(PartitionProgress {
                    projector: p.name.clone(),
                    stream: s.clone(),
                    partition: part,
                    holder: holders.as_ref().and_then(|h| h.get(&part).cloned()),
                    checkpoint,
                    // No checkpoint: nothing read yet, the whole stream is lag.
                    lag: last.saturating_sub(checkpoint.unwrap_or(0)),
                    stream_last: last,
                    stream_reset: found.is_some() && checkpoint.is_some_and(|c| c > last),
                });
            }
        }
    }
    let lost = g
        .lost_ranges(&generation)
        .await?
        .into_iter()
        .map(|(projector, stream, from, to, halted)| LostRange {
            projector,
            stream,
            from,
            to,
            halted,
        })
        .collect();
    let marker = g
        .generation_markers()
        .await?
        .remove(&generation)
        // No marker: a generation written before projector recorded markers.
        .unwrap_or_default();
    Ok(Progress {
        partitions,
        lost,
        generation,
        lease_error,
        projection_version: marker.projection_version,
        binary_version: marker.binary_version,
    })
}
