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

/// Names of generations that hold checkpoints or nodes, with the live one marked.
pub async fn list(graph: &GraphSink) -> Result<Vec<(String, u64)>, WriteError> {
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    let mut rows = graph
        .graph()
        .execute(query(
            "MATCH (c:Checkpoint) WITH DISTINCT c.gen AS gen \
             CALL (gen) { MATCH (s:Story {gen: gen}) RETURN count(s) AS stories } \
             RETURN gen, stories ORDER BY gen",
        ))
        .await
        .map_err(err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().await.map_err(err)? {
        out.push((field(&r, "gen")?, field::<i64>(&r, "stories")? as u64));
    }
    Ok(out)
}

/// Deletes a generation in bounded batches (never the live one), and its cache entries.
/// Returns the number of nodes deleted.
pub async fn drop_generation(
    graph: &GraphSink,
    cache: &CacheSink,
    name: &str,
) -> Result<u64, WriteError> {
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    if live(graph).await? == name {
        return Err(WriteError::Neo4jRefused {
            code: "projector.LiveGeneration".into(),
            message: format!("generation {name} is live; promote another one first"),
        });
    }
    let mut labels: Vec<&str> = projections::Label::ALL.iter().map(|l| l.as_str()).collect();
    labels.extend([
        "Checkpoint",
        "ParkedEvent",
        "LostRange",
        "Outbox",
        "StoryRev",
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
