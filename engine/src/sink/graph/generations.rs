//! The graph side of generations: the live-generation pointer, generation markers, sizes
//! and bounded deletes. `crate::generations` composes these into the operator's commands.

use super::{cypher, field, GraphSink};
use crate::error::WriteError;
use neo4rs::query;

/// A generation's size as the graph holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationSize {
    pub generation: String,
    /// Every node carrying this generation (graph, checkpoints, parked events, ...).
    pub nodes: u64,
    pub stories: u64,
}

/// A generation's marker; every field may be unknown (a marker written before projector
/// recorded it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerationMarker {
    /// When projector first wrote into it (epoch ms).
    pub created_ms: Option<i64>,
    /// `building`, `built`.
    pub state: Option<String>,
    /// The projection version (`projections::PROJECTION_VERSION`) that created it.
    pub projection_version: Option<i64>,
    /// The projector binary version that created it.
    pub binary_version: Option<String>,
}

impl GraphSink {
    /// The live generation's name: this config's pointer, or its default without one.
    pub async fn live_generation(&self) -> Result<String, WriteError> {
        let q = query(cypher::LIVE_GENERATION)
            .param("pointer", self.pointer.as_str())
            .param("default", self.default_gen.as_str());
        Ok(match self.first_row(q).await? {
            Some(r) => field(&r, "name")?,
            None => self.default_gen.clone(),
        })
    }

    /// Creates this config's pointer (at its default generation) if it has none.
    pub async fn register_pointer(&self) -> Result<(), WriteError> {
        self.run(
            query(cypher::POINTER_REGISTER)
                .param("pointer", self.pointer.as_str())
                .param("default", self.default_gen.as_str()),
        )
        .await
    }

    /// Points this config's pointer at `name` in one transaction, only if `name`'s
    /// checkpoints of `checkpoint_ids` are at or past the live generation's. Returns false
    /// (nothing changed) otherwise.
    pub async fn promote_generation(
        &self,
        name: &str,
        checkpoint_ids: &[String],
    ) -> Result<bool, WriteError> {
        let mut txn = self.start_txn().await?;
        let q = query(cypher::PROMOTE)
            .param("default", self.default_gen.as_str())
            .param("pointer", self.pointer.as_str())
            .param("ids", checkpoint_ids.to_vec())
            .param("name", name);
        let res = async {
            let mut rows = txn.execute(q).await.map_err(self.err())?;
            let row = rows.next(txn.handle()).await.map_err(self.err())?;
            Ok(match &row {
                Some(r) => field::<i64>(r, "behind")?,
                // No row: nothing was compared, so nothing may be switched.
                None => 1,
            })
        }
        .await;
        let behind = self.finish(txn, res).await?;
        Ok(behind == 0)
    }

    /// Every generation holding a node, with its size, by name (scans every node once).
    pub async fn generation_sizes(&self) -> Result<Vec<GenerationSize>, WriteError> {
        let mut out = Vec::new();
        for r in self.rows(query(cypher::GENERATION_SIZES)).await? {
            out.push(GenerationSize {
                generation: field(&r, "gen")?,
                nodes: field::<i64>(&r, "nodes")? as u64,
                stories: field::<i64>(&r, "stories")? as u64,
            });
        }
        Ok(out)
    }

    /// Every deployment's live-generation pointer in this Neo4j: (pointer id, generation).
    pub async fn pointers(&self) -> Result<Vec<(String, String)>, WriteError> {
        self.rows(query(cypher::POINTERS))
            .await?
            .iter()
            .map(|r| Ok((field(r, "id")?, field(r, "name")?)))
            .collect()
    }

    /// Every generation marker: generation -> (created ms, state).
    pub async fn generation_markers(
        &self,
    ) -> Result<std::collections::BTreeMap<String, GenerationMarker>, WriteError> {
        self.rows(query(cypher::GENERATION_MARKERS))
            .await?
            .iter()
            .map(|r| {
                // A marker may lack a time, versions (written before projector recorded
                // them) or a state: null is None, another type an error.
                Ok((
                    field(r, "gen")?,
                    GenerationMarker {
                        created_ms: field(r, "created")?,
                        state: field(r, "state")?,
                        projection_version: field(r, "projection_version")?,
                        binary_version: field(r, "binary_version")?,
                    },
                ))
            })
            .collect()
    }

    /// Records that projector writes into `name` (its created time and this binary's
    /// projection and binary versions, once), and with `state` its build state.
    pub async fn mark_generation(&self, name: &str, state: Option<&str>) -> Result<(), WriteError> {
        self.run(
            query(cypher::GENERATION_MARK)
                .param("gen", name)
                .param("state", state)
                .param("pv", i64::from(projections::PROJECTION_VERSION))
                .param("bv", crate::generations::BINARY_VERSION),
        )
        .await
    }

    /// Removes the marker of `name` when nothing else carries its `gen`.
    pub async fn unmark_generation_if_empty(&self, name: &str) -> Result<(), WriteError> {
        self.run(query(cypher::GENERATION_UNMARK_IF_EMPTY).param("gen", name))
            .await
    }

    /// Whether any node carries generation `name`.
    pub async fn generation_has_nodes(&self, name: &str) -> Result<bool, WriteError> {
        let q = query(cypher::GENERATION_ANY_NODE).param("gen", name);
        Ok(self.first_row(q).await?.is_some())
    }

    /// Deletes up to 5,000 nodes of `label` in generation `name`, in one bounded transaction
    /// (memory and lock time stay flat). `label` is code-defined: it is written into the
    /// statement. Returns how many it deleted.
    pub async fn delete_generation_batch(
        &self,
        label: &'static str,
        name: &str,
    ) -> Result<u64, WriteError> {
        let q = query(&cypher::generation_delete_batch(label)).param("gen", name);
        Ok(match self.first_row(q).await? {
            Some(r) => field::<i64>(&r, "n")? as u64,
            None => 0,
        })
    }
}
