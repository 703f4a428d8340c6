//! The one transaction of a commit: every stream's pending graph writes, parked records,
//! outbox entries and checkpoint moves, all or nothing.

use super::{cypher, field, CheckpointMove, GraphSink, OutboxEntry, ParkedRecord};
use crate::error::WriteError;
use neo4rs::query;
use projections::{CompactBatch, Outbound};
use std::collections::BTreeSet;

/// One transaction: the graph writes of every stream's pending events, their parked
/// records and outbox entries, and each stream's checkpoint move.
pub struct Commit<'a> {
    pub batch: &'a CompactBatch,
    pub parked: &'a [ParkedRecord],
    pub outbox: &'a [OutboxEntry],
    /// One per stream of the transaction (at least one); all advance or none.
    pub moves: &'a [CheckpointMove],
    /// Live writers: fail with GenerationMoved if `gen` is no longer the live one.
    pub fence_live: bool,
}

impl Commit<'_> {
    /// The projector the commit writes for, once its moves are checked: at least one, all
    /// of one projector (parked records and outbox entries are recorded under it), no key
    /// twice. Anything else is a bug of the caller's, refused before Neo4j is asked.
    fn projector(&self) -> Result<&str, WriteError> {
        let bad = |message: String| WriteError::Neo4jRefused {
            code: "projector.CommitShape".into(),
            message,
        };
        let first = self
            .moves
            .first()
            .ok_or_else(|| bad("a commit without a checkpoint move".into()))?;
        let mut ids = BTreeSet::new();
        for m in self.moves {
            if m.key.projector != first.key.projector {
                return Err(bad(format!(
                    "a commit of projectors {} and {}",
                    first.key.projector, m.key.projector
                )));
            }
            if !ids.insert(m.key.id()) {
                return Err(bad(format!("checkpoint {} moved twice", m.key.id())));
            }
        }
        Ok(&first.key.projector)
    }
}

impl GraphSink {
    /// Writes a commit in one transaction: the live fence (with `fence_live`), every
    /// checkpoint move (one statement, in key id order), the batch, the parked records and
    /// the outbox entries.
    ///
    /// Every statement's effect is confirmed (rows processed and rows holding the new
    /// version); anything short of that rolls the transaction back and is an error.
    ///
    /// # Errors
    /// [`WriteError::CheckpointMoved`] names the first checkpoint (in key id order) that
    /// another writer moved; [`WriteError::GenerationMoved`] a promotion seen by the fence;
    /// [`WriteError::Neo4jUnavailable`] / [`WriteError::Neo4jTransient`] are worth
    /// retrying; [`WriteError::Neo4jRefused`] and [`WriteError::Unconfirmed`] name a write
    /// that will not succeed as it is (`projector.CommitShape` / `projector.RowShape`:
    /// a bug of ours). Nothing is written on any error.
    pub async fn commit(&self, gen: &str, c: &Commit<'_>) -> Result<(), WriteError> {
        let projector = c.projector()?;
        let t0 = std::time::Instant::now();
        let mut txn = self.start_txn().await?;
        let begin_ms = t0.elapsed().as_secs_f64() * 1e3;
        let res = async {
            if c.fence_live {
                self.fence_live(&mut txn, gen).await?;
            }
            // Checkpoints first: a concurrent writer is detected before any work is sent.
            self.advance(&mut txn, gen, c.moves).await?;
            self.write_ops(&mut txn, gen, c.batch).await?;
            self.park(&mut txn, gen, projector, c.parked).await?;
            self.outbox_add(&mut txn, gen, projector, c.outbox).await
        }
        .await;
        let write_ms = t0.elapsed().as_secs_f64() * 1e3 - begin_ms;
        self.finish(txn, res).await?;
        let total_ms = t0.elapsed().as_secs_f64() * 1e3;
        tracing::trace!(begin_ms, write_ms, total_ms, "graph transaction");
        Ok(())
    }

    /// [`GraphSink::commit`] of one stream's batch, its outbound events all of `ckpt`'s stream.
    pub async fn commit_batch(
        &self,
        gen: &str,
        batch: &CompactBatch,
        parked: &[ParkedRecord],
        outbox: &[Outbound],
        ckpt: &CheckpointMove,
        fence_live: bool,
    ) -> Result<(), WriteError> {
        let outbox: Vec<OutboxEntry> = outbox
            .iter()
            .map(|event| OutboxEntry {
                stream: ckpt.key.stream.clone(),
                event: event.clone(),
            })
            .collect();
        let c = Commit {
            batch,
            parked,
            outbox: &outbox,
            moves: std::slice::from_ref(ckpt),
            fence_live,
        };
        self.commit(gen, &c).await
    }

    /// Fails with [`WriteError::GenerationMoved`] unless `gen` is the live generation.
    async fn fence_live(&self, txn: &mut neo4rs::Txn, gen: &str) -> Result<(), WriteError> {
        let q = query(cypher::LIVE_GENERATION)
            .param("pointer", self.pointer.as_str())
            .param("default", self.default_gen.as_str());
        let mut rows = txn.execute(q).await.map_err(self.err())?;
        // OPTIONAL MATCH with coalesce: always exactly one row.
        let live: String = match rows.next(txn.handle()).await.map_err(self.err())? {
            Some(r) => field(&r, "name")?,
            None => self.default_gen.clone(),
        };
        if live != gen {
            return Err(WriteError::GenerationMoved {
                from: gen.to_string(),
                to: live,
            });
        }
        Ok(())
    }

    /// Advances every checkpoint of `moves` from where its writer read it, in one statement
    /// and in key id order (two committers sharing checkpoints lock them in the same order).
    async fn advance(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        moves: &[CheckpointMove],
    ) -> Result<(), WriteError> {
        let mut sorted: Vec<&CheckpointMove> = moves.iter().collect();
        sorted.sort_by_key(|m| m.key.id());
        let rows = super::batch::list(sorted.iter().map(|m| {
            super::batch::map(vec![
                ("id", m.key.id().into()),
                ("projector", m.key.projector.as_str().into()),
                ("stream", m.key.stream.as_str().into()),
                ("partition", (m.key.partition as i64).into()),
                ("expected", (m.expected as i64).into()),
                ("seq", (m.seq as i64).into()),
                ("ts_ns", m.ts_ns.into()),
                ("back", m.back.into()),
            ])
        }));
        let q = query(cypher::CHECKPOINTS_ADVANCE)
            .param("gen", gen)
            .param("moves", rows);
        let mut stream = txn.execute(q).await.map_err(self.err())?;
        let mut advanced = BTreeSet::new();
        while let Some(row) = stream.next(txn.handle()).await.map_err(self.err())? {
            advanced.insert(field::<String>(&row, "id")?);
        }
        match sorted.iter().find(|m| !advanced.contains(&m.key.id())) {
            // Refused by the statement's guard: a bug of the caller's, not another writer.
            Some(m) if m.seq < m.expected && !m.back => Err(WriteError::Neo4jRefused {
                code: "projector.CheckpointBackwards".into(),
                message: format!(
                    "checkpoint {} would move back from {} to {}",
                    m.key.id(),
                    m.expected,
                    m.seq
                ),
            }),
            Some(m) => Err(WriteError::CheckpointMoved {
                id: m.key.id(),
                expected: m.expected,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckpointKey;
    use super::*;

    fn mv(projector: &str, stream: &str) -> CheckpointMove {
        CheckpointMove {
            key: CheckpointKey::new(projector, stream, 0),
            expected: 0,
            seq: 1,
            ts_ns: 0,
            back: false,
        }
    }

    fn shape(moves: &[CheckpointMove]) -> Result<String, WriteError> {
        let batch = CompactBatch::default();
        let c = Commit {
            batch: &batch,
            parked: &[],
            outbox: &[],
            moves,
            fence_live: false,
        };
        c.projector().map(str::to_string)
    }

    #[test]
    fn a_commit_moves_at_least_one_checkpoint_of_one_projector_each_once() {
        assert_eq!(shape(&[mv("p", "A"), mv("p", "B")]).unwrap(), "p");
        for bad in [
            vec![],
            vec![mv("p", "A"), mv("q", "B")],
            vec![mv("p", "A"); 2],
        ] {
            match shape(&bad) {
                Err(WriteError::Neo4jRefused { code, .. }) => {
                    assert_eq!(code, "projector.CommitShape")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
