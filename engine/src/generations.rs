//! Generations: the live graph and others built beside it, in Community's one database.
//!
//! Every node carries `gen`; uniqueness is `(gen, id)` per label. The live generation is
//! named by `(:GenerationPointer {id: 'live'}).name` (`live:<prefix>` with a subject prefix) (`main` when absent). Live workers check
//! the pointer in every batch transaction, so a promotion takes effect at their next batch.

use crate::error::WriteError;
use crate::sink::cache::CacheSink;
use crate::sink::graph::{CheckpointKey, GenerationMarker, GenerationSize, GraphSink};

/// This binary's version, recorded with every generation it creates.
pub const BINARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The live generation's name.
pub async fn live(graph: &GraphSink) -> Result<String, WriteError> {
    graph.live_generation().await
}

/// Creates this config's pointer (at its default generation) if it has none, so that other
/// deployments sharing the Neo4j see which generation is live here before any promotion.
pub async fn register_pointer(graph: &GraphSink) -> Result<(), WriteError> {
    graph.register_pointer().await
}

/// Makes `name` live in one transaction, only if its checkpoint is at or past the live
/// generation's on every given checkpoint key. Returns false (nothing changed) otherwise.
pub async fn promote(
    graph: &GraphSink,
    name: &str,
    keys: &[CheckpointKey],
) -> Result<bool, WriteError> {
    let ids: Vec<String> = keys.iter().map(CheckpointKey::id).collect();
    graph.promote_generation(name, &ids).await
}

/// A generation as `generations list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GenerationInfo {
    pub generation: String,
    /// Every node carrying this generation (graph, checkpoints, parked events, ...).
    pub nodes: u64,
    pub stories: u64,
    /// When projector first wrote into it (epoch ms); `None` for generations written before
    /// projector recorded it.
    pub created_ms: Option<i64>,
    /// `building` while a rebuild has not finished it, `built` after, `None` otherwise.
    pub state: Option<String>,
    /// The projection version that created it; `None` when created before projector
    /// recorded versions (then it counts as another version than any binary's).
    pub projection_version: Option<i64>,
    /// The binary version that created it, `None` likewise.
    pub binary_version: Option<String>,
    /// The live-generation pointers (one per deployment) that name it.
    pub live_for: Vec<String>,
}

/// Every generation that holds a node, with its size, created time and the pointers that
/// make it live (any deployment's, not only this config's), plus live generations that are
/// still empty.
///
/// It scans every node once (there is no index on `gen` alone): 0.15-0.30 s for the whole
/// command over 54,534 nodes on the dev stack (docs/decisions.md D33).
pub async fn list(graph: &GraphSink) -> Result<Vec<GenerationInfo>, WriteError> {
    let found = graph.generation_sizes().await?;
    let pointers = live_everywhere(graph).await?;
    let mut marks = markers(graph).await?;
    let mut out: Vec<GenerationInfo> = found
        .into_iter()
        .map(
            |GenerationSize {
                 generation,
                 nodes,
                 stories,
             }| {
                // Unmarked (built before markers existed): everything but the size unknown.
                let m = marks.remove(&generation).unwrap_or_default();
                GenerationInfo {
                    // No pointer names it: live for nobody.
                    live_for: pointers.get(&generation).cloned().unwrap_or_default(),
                    generation,
                    nodes,
                    stories,
                    created_ms: m.created_ms,
                    state: m.state,
                    projection_version: m.projection_version,
                    binary_version: m.binary_version,
                }
            },
        )
        .collect();
    for (g, live_for) in pointers {
        if !out.iter().any(|i| i.generation == g) {
            out.push(GenerationInfo {
                generation: g,
                nodes: 0,
                stories: 0,
                created_ms: None,
                state: None,
                projection_version: None,
                binary_version: None,
                live_for,
            });
        }
    }
    out.sort_by(|a, b| a.generation.cmp(&b.generation));
    Ok(out)
}

/// Live generation -> the pointers naming it: every deployment's pointer in this Neo4j,
/// and this config's own live generation (its default while it has no pointer node).
pub async fn live_everywhere(
    graph: &GraphSink,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, WriteError> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (id, name) in graph.pointers().await? {
        out.entry(name).or_default().push(id);
    }
    let own = live(graph).await?;
    let pointer = graph.pointer().to_string();
    let entry = out.entry(own).or_default();
    if !entry.contains(&pointer) {
        entry.push(pointer);
    }
    Ok(out)
}

async fn markers(graph: &GraphSink) -> Result<Marks, WriteError> {
    graph.generation_markers().await
}

type Marks = std::collections::BTreeMap<String, GenerationMarker>;

/// Records that projector writes into `name` (its created time, once), and with `state` its
/// build state (`building`, `built`).
pub async fn mark(graph: &GraphSink, name: &str, state: Option<&str>) -> Result<(), WriteError> {
    graph.mark_generation(name, state).await
}

/// Removes the marker of `name` when nothing else carries its `gen`: a build refused
/// before it wrote anything leaves no generation behind.
pub async fn unmark_if_empty(graph: &GraphSink, name: &str) -> Result<(), WriteError> {
    graph.unmark_generation_if_empty(name).await
}

/// The build state recorded for `name` (`building`, `built`), if any.
pub async fn state(graph: &GraphSink, name: &str) -> Result<Option<String>, WriteError> {
    Ok(markers(graph).await?.remove(name).and_then(|m| m.state))
}

/// The projection version recorded for `name`; `None` when it has no marker or its marker
/// predates recorded versions.
pub async fn projection_version(graph: &GraphSink, name: &str) -> Result<Option<i64>, WriteError> {
    Ok(markers(graph)
        .await?
        .remove(name)
        .and_then(|m| m.projection_version))
}

/// Whether `name` is a generation: live for some deployment, or holding any node.
pub async fn exists(graph: &GraphSink, name: &str) -> Result<bool, WriteError> {
    if live_everywhere(graph).await?.contains_key(name) {
        return Ok(true);
    }
    graph.generation_has_nodes(name).await
}

/// Deletes a generation in bounded batches (never the live one), and its cache entries.
/// Returns the number of nodes deleted.
pub async fn drop_generation(
    graph: &GraphSink,
    cache: &CacheSink,
    name: &str,
) -> Result<u64, WriteError> {
    // Any deployment's live generation, not only this config's: two deployments may share
    // one Neo4j, and dropping the other's live graph would take its queries down.
    if let Some(pointers) = live_everywhere(graph).await?.get(name) {
        return Err(WriteError::Neo4jRefused {
            code: "projector.LiveGeneration".into(),
            message: format!(
                "generation {name} is live (pointer {}); promote another one first",
                pointers.join(", ")
            ),
        });
    }
    let mut labels: Vec<&str> = projections::Label::ALL.iter().map(|l| l.as_str()).collect();
    labels.extend([
        "Checkpoint",
        "ParkedEvent",
        "LostRange",
        "Outbox",
        "StoryRev",
        "Generation",
    ]);
    let mut total = 0u64;
    for label in labels {
        loop {
            let n = graph.delete_generation_batch(label, name).await?;
            total += n;
            if n == 0 {
                break;
            }
        }
    }
    cache.delete_prefix(&cache.gen_prefix(name, false)).await?;
    Ok(total)
}
