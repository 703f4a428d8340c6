//! Generations: the live graph and others built beside it, in Community's one database.
//!
//! Every node carries `gen`; uniqueness is `(gen, id)` per label. The live generation is
//! named by `(:GenerationPointer {id: 'live'}).name` (`live:<prefix>` with a subject prefix) (`main` when absent). Live workers check
//! the pointer in every batch transaction, so a promotion takes effect at their next batch.

use crate::error::WriteError;
use crate::sink::cache::CacheSink;
use crate::sink::graph::{field, CheckpointKey, GraphSink};
use neo4rs::query;

/// The live generation's name.
pub async fn live(graph: &GraphSink) -> Result<String, WriteError> {
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    let mut rows = graph
        .graph()
        .execute(query(
            "OPTIONAL MATCH (p:GenerationPointer {id: $pointer}) RETURN coalesce(p.name, $default) AS name",
        ).param("pointer", graph.pointer()).param("default", graph.default_generation()))
        .await
        .map_err(err)?;
    Ok(match rows.next().await.map_err(err)? {
        Some(r) => field(&r, "name")?,
        None => graph.default_generation().to_string(),
    })
}

/// Creates this config's pointer (at its default generation) if it has none, so that other
/// deployments sharing the Neo4j see which generation is live here before any promotion.
pub async fn register_pointer(graph: &GraphSink) -> Result<(), WriteError> {
    graph
        .graph()
        .run(
            query("MERGE (p:GenerationPointer {id: $pointer}) ON CREATE SET p.name = $default")
                .param("pointer", graph.pointer())
                .param("default", graph.default_generation()),
        )
        .await
        .map_err(|e| WriteError::from_neo4j(graph.uri(), e))
}

/// Makes `name` live in one transaction, only if its checkpoint is at or past the live
/// generation's on every given checkpoint key. Returns false (nothing changed) otherwise.
pub async fn promote(
    graph: &GraphSink,
    name: &str,
    keys: &[CheckpointKey],
) -> Result<bool, WriteError> {
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    let ids: Vec<String> = keys.iter().map(CheckpointKey::id).collect();
    let mut txn = graph.graph().start_txn().await.map_err(err)?;
    let q = query(
        "MERGE (p:GenerationPointer {id: $pointer}) ON CREATE SET p.name = $default \
         SET p._lock = true \
         WITH p \
         UNWIND $ids AS cid \
         OPTIONAL MATCH (old:Checkpoint {gen: p.name, id: cid}) \
         OPTIONAL MATCH (new:Checkpoint {gen: $name, id: cid}) \
         WITH p, sum(CASE WHEN coalesce(new.seq, 0) >= coalesce(old.seq, 0) THEN 0 ELSE 1 END) AS behind, \
              collect(DISTINCT p.name)[0] AS previous \
         FOREACH (_ IN CASE WHEN behind = 0 THEN [1] ELSE [] END | SET p.name = $name, p.previous = previous) \
         REMOVE p._lock \
         RETURN behind, previous",
    )
    .param("default", graph.default_generation())
    .param("pointer", graph.pointer())
    .param("ids", ids)
    .param("name", name);
    let mut rows = txn.execute(q).await.map_err(err)?;
    let row = rows.next(txn.handle()).await.map_err(err)?;
    let behind: i64 = match &row {
        Some(r) => field(r, "behind")?,
        // No row: nothing was compared, so nothing may be switched.
        None => 1,
    };
    txn.commit().await.map_err(err)?;
    Ok(behind == 0)
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
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    let mut rows = graph
        .graph()
        .execute(query(
            "MATCH (n) WHERE n.gen IS NOT NULL \
             RETURN n.gen AS gen, count(n) AS nodes, sum(CASE WHEN n:Story THEN 1 ELSE 0 END) AS stories \
             ORDER BY gen",
        ))
        .await
        .map_err(err)?;
    let mut found: Vec<(String, u64, u64)> = Vec::new();
    while let Some(r) = rows.next().await.map_err(err)? {
        let gen: String = field(&r, "gen")?;
        found.push((
            gen,
            field::<i64>(&r, "nodes")? as u64,
            field::<i64>(&r, "stories")? as u64,
        ));
    }
    let pointers = live_everywhere(graph).await?;
    let mut marks = markers(graph).await?;
    let mut out: Vec<GenerationInfo> = found
        .into_iter()
        .map(|(generation, nodes, stories)| {
            // Unmarked (built before markers existed): creation time and state unknown.
            let (created_ms, state) = marks.remove(&generation).unwrap_or((None, None));
            GenerationInfo {
                // No pointer names it: live for nobody.
                live_for: pointers.get(&generation).cloned().unwrap_or_default(),
                generation,
                nodes,
                stories,
                created_ms,
                state,
            }
        })
        .collect();
    for (g, live_for) in pointers {
        if !out.iter().any(|i| i.generation == g) {
            out.push(GenerationInfo {
                generation: g,
                nodes: 0,
                stories: 0,
                created_ms: None,
                state: None,
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
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    let mut rows = graph
        .graph()
        .execute(query(
            "MATCH (p:GenerationPointer) RETURN p.id AS id, p.name AS name",
        ))
        .await
        .map_err(err)?;
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    while let Some(r) = rows.next().await.map_err(err)? {
        out.entry(field(&r, "name")?)
            .or_default()
            .push(field(&r, "id")?);
    }
    let own = live(graph).await?;
    let pointer = graph.pointer().to_string();
    let entry = out.entry(own).or_default();
    if !entry.contains(&pointer) {
        entry.push(pointer);
    }
    Ok(out)
}

type Marks = std::collections::BTreeMap<String, (Option<i64>, Option<String>)>;

async fn markers(graph: &GraphSink) -> Result<Marks, WriteError> {
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    let mut rows = graph
        .graph()
        .execute(query(
            "MATCH (g:Generation) RETURN g.gen AS gen, g.created_ms AS created, g.state AS state",
        ))
        .await
        .map_err(err)?;
    let mut out = Marks::new();
    while let Some(r) = rows.next().await.map_err(err)? {
        out.insert(
            field(&r, "gen")?,
            // Null reads as an error from `get`: a marker without a time or a state.
            (r.get::<i64>("created").ok(), r.get::<String>("state").ok()),
        );
    }
    Ok(out)
}

/// Records that projector writes into `name` (its created time, once), and with `state` its
/// build state (`building`, `built`).
pub async fn mark(graph: &GraphSink, name: &str, state: Option<&str>) -> Result<(), WriteError> {
    graph
        .graph()
        .run(
            query(
                "MERGE (g:Generation {gen: $gen, id: $gen}) \
                 ON CREATE SET g.created_ms = timestamp() \
                 FOREACH (_ IN CASE WHEN $state IS NULL THEN [] ELSE [1] END | SET g.state = $state)",
            )
            .param("gen", name)
            .param("state", state),
        )
        .await
        .map_err(|e| WriteError::from_neo4j(graph.uri(), e))
}

/// Removes the marker of `name` when nothing else carries its `gen`: a build refused
/// before it wrote anything leaves no generation behind.
pub async fn unmark_if_empty(graph: &GraphSink, name: &str) -> Result<(), WriteError> {
    graph
        .graph()
        .run(
            query(
                "MATCH (g:Generation {gen: $gen}) \
                 WHERE NOT EXISTS { MATCH (n) WHERE n.gen = $gen AND NOT n:Generation } \
                 DELETE g",
            )
            .param("gen", name),
        )
        .await
        .map_err(|e| WriteError::from_neo4j(graph.uri(), e))
}

/// The build state recorded for `name` (`building`, `built`), if any.
pub async fn state(graph: &GraphSink, name: &str) -> Result<Option<String>, WriteError> {
    Ok(markers(graph).await?.remove(name).and_then(|(_, s)| s))
}

/// Whether `name` is a generation: live for some deployment, or holding any node.
pub async fn exists(graph: &GraphSink, name: &str) -> Result<bool, WriteError> {
    if live_everywhere(graph).await?.contains_key(name) {
        return Ok(true);
    }
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    let mut rows = graph
        .graph()
        .execute(query("MATCH (n) WHERE n.gen = $gen RETURN 1 AS one LIMIT 1").param("gen", name))
        .await
        .map_err(err)?;
    Ok(rows.next().await.map_err(err)?.is_some())
}

/// Deletes a generation in bounded batches (never the live one), and its cache entries.
/// Returns the number of nodes deleted.
pub async fn drop_generation(
    graph: &GraphSink,
    cache: &CacheSink,
    name: &str,
) -> Result<u64, WriteError> {
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
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
            // Bounded: one transaction per 5,000 nodes keeps memory and lock time flat.
            let q = format!("MATCH (n:{label} {{gen: $gen}}) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*) AS n");
            let mut rows = graph
                .graph()
                .execute(query(&q).param("gen", name))
                .await
                .map_err(err)?;
            let n: i64 = match rows.next().await.map_err(err)? {
                Some(r) => field(&r, "n")?,
                None => 0,
            };
            total += n as u64;
            if n == 0 {
                break;
            }
        }
    }
    cache.delete_prefix(&cache.gen_prefix(name, false)).await?;
    Ok(total)
}
