//! Checkpoints (a projector's position per stream and partition) and lost ranges.

use super::{cypher, field, GraphSink};
use crate::error::WriteError;
use neo4rs::{query, Row};
use std::collections::BTreeMap;

/// Identifies one checkpoint: a projector's position in one partition of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckpointKey {
    pub projector: String,
    pub stream: String,
    pub partition: u32,
}

impl CheckpointKey {
    pub fn new(projector: &str, stream: &str, partition: u32) -> Self {
        CheckpointKey {
            projector: projector.to_string(),
            stream: stream.to_string(),
            partition,
        }
    }

    /// `projector/stream/partition`, the checkpoint node's id.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.projector, self.stream, self.partition)
    }
}

/// One stream's checkpoint move in a commit: from `expected` (where the writer read it) to
/// `seq`, or the whole commit fails.
#[derive(Debug, Clone)]
pub struct CheckpointMove {
    pub key: CheckpointKey,
    /// Where the writer read it (0 when there was none).
    pub expected: u64,
    pub seq: u64,
    /// Stream time (ns) of the message at `seq`, 0 when unknown: a later start compares
    /// it with the stream's message at `seq` to notice a stream that was recreated.
    pub ts_ns: i64,
    /// The move may lower the checkpoint (`seq < expected`): only a stream reset the
    /// operator accepted does; anywhere else the statement refuses it.
    pub back: bool,
}

/// The recorded stream time of a [`cypher::CHECKPOINT_TS`] row: null (never recorded) is
/// `None`; a value of another type is an error, not "unknown".
fn ts_of(row: &Row) -> Result<Option<i64>, WriteError> {
    field::<Option<i64>>(row, "ts_ns")
}

impl GraphSink {
    /// The stored checkpoint, or `None` if this projector never committed on this stream.
    pub async fn checkpoint(
        &self,
        gen: &str,
        key: &CheckpointKey,
    ) -> Result<Option<u64>, WriteError> {
        let q = query(cypher::CHECKPOINT_READ)
            .param("gen", gen)
            .param("id", key.id());
        match self.first_row(q).await? {
            Some(row) => Ok(Some(field::<i64>(&row, "seq")? as u64)),
            None => Ok(None),
        }
    }

    /// The stream time (ns) recorded with a checkpoint, if any.
    pub async fn checkpoint_ts(
        &self,
        gen: &str,
        key: &CheckpointKey,
    ) -> Result<Option<i64>, WriteError> {
        let q = query(cypher::CHECKPOINT_TS)
            .param("gen", gen)
            .param("id", key.id());
        match self.first_row(q).await? {
            Some(row) => ts_of(&row),
            None => Ok(None),
        }
    }

    /// Every partition's checkpoint of one projector and stream: partition -> sequence.
    pub async fn checkpoints_of(
        &self,
        gen: &str,
        projector: &str,
        stream: &str,
    ) -> Result<BTreeMap<u32, u64>, WriteError> {
        let q = query(cypher::CHECKPOINTS_OF)
            .param("gen", gen)
            .param("projector", projector)
            .param("stream", stream);
        let mut out = BTreeMap::new();
        for row in self.rows(q).await? {
            out.insert(
                field::<i64>(&row, "p")? as u32,
                field::<i64>(&row, "seq")? as u64,
            );
        }
        Ok(out)
    }

    /// Creates the checkpoints of `partitions` at `seq` where none exists (a new layout).
    pub async fn set_checkpoints(
        &self,
        gen: &str,
        projector: &str,
        stream: &str,
        partitions: &[u32],
        seq: u64,
    ) -> Result<(), WriteError> {
        for &p in partitions {
            let key = CheckpointKey::new(projector, stream, p);
            self.run(
                query(cypher::CHECKPOINT_CREATE)
                    .param("gen", gen)
                    .param("id", key.id())
                    .param("projector", projector)
                    .param("stream", stream)
                    .param("partition", p as i64)
                    .param("seq", seq as i64),
            )
            .await?;
        }
        Ok(())
    }

    /// Removes the checkpoints of `partitions` (a layout that no longer has them).
    pub async fn delete_checkpoints(
        &self,
        gen: &str,
        projector: &str,
        stream: &str,
        partitions: &[u32],
    ) -> Result<(), WriteError> {
        for &p in partitions {
            self.delete_checkpoint(gen, &CheckpointKey::new(projector, stream, p))
                .await?;
        }
        Ok(())
    }

    /// Removes a checkpoint (a finished replay's progress).
    pub async fn delete_checkpoint(
        &self,
        gen: &str,
        key: &CheckpointKey,
    ) -> Result<(), WriteError> {
        self.run(
            query(cypher::CHECKPOINT_DELETE)
                .param("gen", gen)
                .param("id", key.id()),
        )
        .await
    }

    /// Records a hole found after a checkpoint, so `streams status` can show it.
    pub async fn record_lost_range(
        &self,
        gen: &str,
        key: &CheckpointKey,
        from: u64,
        to: u64,
        halted: bool,
        checkpoint: u64,
    ) -> Result<(), WriteError> {
        self.run(
            query(cypher::LOST_RANGE_RECORD)
                .param("gen", gen)
                .param("id", format!("{}:{from}-{to}", key.id()))
                .param("projector", key.projector.as_str())
                .param("stream", key.stream.as_str())
                .param("partition", key.partition as i64)
                .param("from", from as i64)
                .param("to", to as i64)
                .param("halted", halted)
                .param("checkpoint", checkpoint as i64),
        )
        .await
    }

    /// Lost ranges recorded in a generation: (projector, stream, from, to, halted).
    pub async fn lost_ranges(
        &self,
        gen: &str,
    ) -> Result<Vec<(String, String, u64, u64, bool)>, WriteError> {
        let q = query(cypher::LOST_RANGES).param("gen", gen);
        let mut out = Vec::new();
        for row in self.rows(q).await? {
            out.push((
                field(&row, "p")?,
                field(&row, "s")?,
                field::<i64>(&row, "f")? as u64,
                field::<i64>(&row, "t")? as u64,
                field(&row, "h")?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::row;
    use super::*;
    use neo4rs::{BoltNull, BoltType};

    #[test]
    fn a_checkpoint_time_of_the_wrong_type_is_an_error_not_unknown() {
        let r = row(vec![("ts_ns", BoltType::Null(BoltNull))]);
        assert_eq!(ts_of(&r).unwrap(), None);
        let r = row(vec![("ts_ns", 17i64.into())]);
        assert_eq!(ts_of(&r).unwrap(), Some(17));
        // Used to read as None ("unknown, nothing to check"): a recreated stream would
        // then go unnoticed.
        let r = row(vec![("ts_ns", BoltType::from("17"))]);
        assert!(ts_of(&r).is_err());
    }
}
