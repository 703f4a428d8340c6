//! The partition layout of a generation's checkpoints, checked when `run` starts.
//!
//! Every partition's worker reads the whole stream and applies its own stories' events, so
//! a partition's checkpoint says "this partition's events up to here are applied". Changing
//! `[partitions] count` moves stories between partitions; that is only safe once every
//! partition has applied the same prefix of the stream (drained: all checkpoints equal).
//! Then the new layout's checkpoints all start there. Otherwise `run` refuses to start and
//! says how to drain (docs/operations.md "Changing the number of partitions").

use crate::error::WriteError;
use crate::sink::graph::GraphSink;
use std::collections::BTreeMap;
use thiserror::Error;

/// What to do with a stream's checkpoints before the workers start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LayoutPlan {
    /// Partitions to create, all at `at`.
    pub create: Vec<u32>,
    pub at: u64,
    /// Checkpoints of partitions the layout no longer has.
    pub delete: Vec<u32>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "{stream}: the stored checkpoints are for partitions {found:?} and disagree \
         (sequences {min}..={max}), but the config asks for {count} partition(s). The old \
         layout was not drained: run it again until `projector streams status` shows every \
         partition at the same checkpoint (lag 0), stop every instance, then switch \
         (docs/operations.md, \"Changing the number of partitions\")"
    )]
    NotDrained {
        stream: String,
        found: Vec<u32>,
        min: u64,
        max: u64,
        count: u32,
    },
}

/// Decides how `existing` checkpoints (partition -> sequence) become the layout of `count`
/// partitions. Nothing stored: one partition starts lazily as always; several are created
/// together at `start` (the stream's first sequence - 1), so that an instance starting a
/// moment later finds a complete layout rather than a half-written one. The same layout:
/// nothing to do. A different layout: allowed only if drained.
///
/// ```
/// use engine::layout::{plan, LayoutPlan};
/// use std::collections::BTreeMap;
/// // A single instance's checkpoint at 900 becomes 4 partitions starting at 900.
/// let one = BTreeMap::from([(0, 900)]);
/// assert_eq!(plan("S", &one, 4, 0).unwrap(), LayoutPlan { create: vec![1, 2, 3], at: 900, delete: vec![] });
/// // Four drained partitions back to one.
/// let four = BTreeMap::from([(0, 900), (1, 900), (2, 900), (3, 900)]);
/// assert_eq!(plan("S", &four, 1, 0).unwrap(), LayoutPlan { create: vec![], at: 900, delete: vec![1, 2, 3] });
/// // Not drained: refused.
/// let behind = BTreeMap::from([(0, 900), (1, 850)]);
/// assert!(plan("S", &behind, 1, 0).is_err());
/// ```
pub fn plan(
    stream: &str,
    existing: &BTreeMap<u32, u64>,
    count: u32,
    start: u64,
) -> Result<LayoutPlan, LayoutError> {
    let wanted: Vec<u32> = (0..count).collect();
    let found: Vec<u32> = existing.keys().copied().collect();
    if found.is_empty() && count > 1 {
        return Ok(LayoutPlan {
            create: wanted,
            at: start,
            delete: vec![],
        });
    }
    if found.is_empty() || found == wanted {
        return Ok(LayoutPlan::default());
    }
    // No stored checkpoint at all: nothing was read, position 0.
    let min = existing.values().copied().min().unwrap_or(0);
    // Likewise.
    let max = existing.values().copied().max().unwrap_or(0);
    if min != max {
        return Err(LayoutError::NotDrained {
            stream: stream.to_string(),
            found,
            min,
            max,
            count,
        });
    }
    Ok(LayoutPlan {
        create: wanted
            .iter()
            .copied()
            .filter(|p| !existing.contains_key(p))
            .collect(),
        at: min,
        delete: found.into_iter().filter(|p| *p >= count).collect(),
    })
}

/// Applies `plan` to every stream of `projector` in `gen`; returns what changed, for logs.
pub async fn apply(
    graph: &GraphSink,
    gen: &str,
    projector: &str,
    streams: &[String],
    count: u32,
    js: &async_nats::jetstream::Context,
) -> Result<Vec<(String, LayoutPlan)>, LayoutApplyError> {
    let mut changed = Vec::new();
    for stream in streams {
        let existing = graph.checkpoints_of(gen, projector, stream).await?;
        let start = if existing.is_empty() && count > 1 {
            crate::source::bounds(js, stream).await?.0.saturating_sub(1)
        } else {
            0
        };
        let p = plan(stream, &existing, count, start)?;
        if p == LayoutPlan::default() {
            continue;
        }
        graph
            .set_checkpoints(gen, projector, stream, &p.create, p.at)
            .await?;
        graph
            .delete_checkpoints(gen, projector, stream, &p.delete)
            .await?;
        changed.push((stream.clone(), p));
    }
    Ok(changed)
}

#[derive(Debug, Error)]
pub enum LayoutApplyError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_layout_or_nothing_stored_is_left_alone() {
        assert_eq!(
            plan("S", &BTreeMap::new(), 1, 0).unwrap(),
            LayoutPlan::default()
        );
        let eight: BTreeMap<u32, u64> = (0..8).map(|p| (p, 100 + p as u64)).collect();
        assert_eq!(plan("S", &eight, 8, 0).unwrap(), LayoutPlan::default());
    }

    #[test]
    fn a_first_partitioned_start_creates_the_whole_layout() {
        assert_eq!(
            plan("S", &BTreeMap::new(), 3, 41).unwrap(),
            LayoutPlan {
                create: vec![0, 1, 2],
                at: 41,
                delete: vec![]
            }
        );
    }

    #[test]
    fn changing_counts_needs_a_drained_layout() {
        let four: BTreeMap<u32, u64> = (0..4).map(|p| (p, 70)).collect();
        assert_eq!(
            plan("S", &four, 2, 0).unwrap(),
            LayoutPlan {
                create: vec![],
                at: 70,
                delete: vec![2, 3]
            }
        );
        let mut uneven = four.clone();
        uneven.insert(3, 69);
        let err = plan("S", &uneven, 2, 0).unwrap_err();
        assert!(err.to_string().contains("not drained"), "{err}");
    }
}
