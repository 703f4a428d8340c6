//! Parked (dead-lettered) events as recorded in the graph: the operator's view, the
//! per-story block list, and retries that re-project them.

use super::batch::{list, map, opt, Returns};
use super::{cypher, field, GraphSink};
use crate::error::WriteError;
use neo4rs::{query, BoltType, Row};
use projections::CompactBatch;

/// A parked (dead-lettered) message as recorded in the graph next to the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedRecord {
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    pub story_id: Option<String>,
    pub kind: String,
    pub reason: String,
    /// For an event parked only because an earlier event of its story is parked.
    pub blocked_by: Option<String>,
    pub dlq_seq: u64,
    /// The original message's stream time: retries project it with its original version.
    pub ts_ns: i64,
}

impl ParkedRecord {
    pub fn id(&self, projector: &str) -> String {
        format!("{projector}:{}:{}", self.stream, self.seq)
    }

    /// This record as a row of [`cypher::PARK`].
    pub(super) fn row(&self, projector: &str) -> BoltType {
        map(vec![
            ("id", self.id(projector).into()),
            ("stream", self.stream.as_str().into()),
            ("seq", (self.seq as i64).into()),
            ("subject", self.subject.as_str().into()),
            ("story_id", opt(&self.story_id)),
            ("kind", self.kind.as_str().into()),
            ("reason", self.reason.as_str().into()),
            ("blocked_by", opt(&self.blocked_by)),
            ("dlq_seq", (self.dlq_seq as i64).into()),
            ("ts_ns", self.ts_ns.into()),
        ])
    }
}

/// A parked record as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedView {
    pub id: String,
    pub projector: String,
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    pub story_id: Option<String>,
    pub kind: String,
    pub reason: String,
    pub blocked_by: Option<String>,
    pub dlq_seq: u64,
    pub ts_ns: i64,
}

impl ParkedView {
    /// Reads a [`cypher::PARKED`] row. `story_id` and `blocked_by` may be null (`None`); a
    /// value of another type is an error, like any other column's.
    fn from_row(row: &Row) -> Result<ParkedView, WriteError> {
        Ok(ParkedView {
            id: field(row, "id")?,
            projector: field(row, "projector")?,
            stream: field(row, "stream")?,
            seq: field::<i64>(row, "seq")? as u64,
            subject: field(row, "subject")?,
            story_id: field(row, "story_id")?,
            kind: field(row, "kind")?,
            reason: field(row, "reason")?,
            blocked_by: field(row, "blocked_by")?,
            dlq_seq: field::<i64>(row, "dlq_seq")? as u64,
            ts_ns: field::<i64>(row, "ts_ns")?,
        })
    }
}

impl GraphSink {
    /// Parked records of a projector (all of them, or one story's), in stream order.
    pub async fn parked(
        &self,
        gen: &str,
        projector: Option<&str>,
    ) -> Result<Vec<ParkedView>, WriteError> {
        let q = query(cypher::PARKED)
            .param("gen", gen)
            .param("projector", projector.map(str::to_string));
        self.rows(q)
            .await?
            .iter()
            .map(ParkedView::from_row)
            .collect()
    }

    /// Removes parked records without re-projecting them (an operator's decision), and moves
    /// their stories' revisions in the same transaction (their cached views said "blocked").
    /// Returns how many were removed and their stories.
    pub async fn discard_parked(
        &self,
        gen: &str,
        ids: &[String],
    ) -> Result<(u64, Vec<String>), WriteError> {
        let mut txn = self.start_txn().await?;
        let res = async {
            let q = query(cypher::PARKED_DISCARD)
                .param("gen", gen)
                .param("ids", ids.to_vec());
            let mut rows = txn.execute(q).await.map_err(self.err())?;
            let (n, stories) = match rows.next(txn.handle()).await.map_err(self.err())? {
                Some(r) => (field::<i64>(&r, "n")?, field::<Vec<String>>(&r, "stories")?),
                None => (0, Vec::new()),
            };
            self.bump_stories(&mut txn, gen, &stories).await?;
            Ok((n as u64, stories))
        }
        .await;
        self.finish(txn, res).await
    }

    /// Moves the revisions of `stories` in `txn`: their cached views are stale.
    async fn bump_stories(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        stories: &[String],
    ) -> Result<(), WriteError> {
        if stories.is_empty() {
            return Ok(());
        }
        let q = query(cypher::STORY_REV_BUMP)
            .param("gen", gen)
            .param("ids", stories.to_vec());
        let (what, n) = ("story revisions".into(), stories.len() as i64);
        self.confirmed(txn, q, what, n, Returns::Rows).await
    }

    /// The parked backlog of `gen`: (projector, stream, kind, how many).
    pub async fn parked_counts(
        &self,
        gen: &str,
    ) -> Result<Vec<(String, String, String, i64)>, WriteError> {
        let q = query(cypher::PARKED_COUNTS).param("gen", gen);
        self.rows(q)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    field(r, "projector")?,
                    field(r, "stream")?,
                    field(r, "kind")?,
                    field(r, "n")?,
                ))
            })
            .collect()
    }

    /// How many stories of `gen` have parked events (are blocked).
    pub async fn blocked_story_count(&self, gen: &str) -> Result<u64, WriteError> {
        let q = query(cypher::BLOCKED_STORY_COUNT).param("gen", gen);
        Ok(match self.first_row(q).await? {
            Some(r) => field::<i64>(&r, "n")? as u64,
            None => 0,
        })
    }

    /// Which of `stories` still have parked records for `projector`.
    pub async fn still_blocked(
        &self,
        gen: &str,
        projector: &str,
        stories: &[String],
    ) -> Result<Vec<String>, WriteError> {
        let q = query(cypher::STILL_BLOCKED)
            .param("gen", gen)
            .param("projector", projector)
            .param("ids", stories.to_vec());
        self.rows(q).await?.iter().map(|r| field(r, "s")).collect()
    }

    /// Stories that have parked events for this projector (the sequenced dead-letter block
    /// list): (story, id of its first parked record).
    pub async fn blocked_stories(
        &self,
        gen: &str,
        projector: &str,
    ) -> Result<Vec<(String, String)>, WriteError> {
        let q = query(cypher::BLOCKED_STORIES)
            .param("gen", gen)
            .param("projector", projector);
        self.rows(q)
            .await?
            .iter()
            .map(|r| Ok((field(r, "story")?, field(r, "first")?)))
            .collect()
    }

    /// Writes re-projected parked events, removes their parked records, adds their
    /// outbound events to the outbox and moves the revisions of `stories` (theirs), in one
    /// transaction.
    pub async fn commit_retry(
        &self,
        gen: &str,
        projector: &str,
        batch: &CompactBatch,
        parked_ids: &[String],
        outbox: &[super::OutboxEntry],
        stories: &[String],
    ) -> Result<(), WriteError> {
        let mut txn = self.start_txn().await?;
        let res = async {
            self.write_ops(&mut txn, gen, batch).await?;
            self.outbox_add(&mut txn, gen, projector, outbox).await?;
            // The stories whose parked records go: their views no longer say "blocked".
            self.bump_stories(&mut txn, gen, stories).await?;
            let q = query(cypher::PARKED_REMOVE)
                .param("gen", gen)
                .param("projector", projector)
                .param("ids", parked_ids.to_vec());
            let (what, n) = ("parked records removed".into(), parked_ids.len() as i64);
            self.confirmed(&mut txn, q, what, n, Returns::Rows).await
        }
        .await;
        self.finish(txn, res).await
    }

    /// Adds `parked` to `txn` (the commit that skips them).
    pub(super) async fn park(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        projector: &str,
        parked: &[ParkedRecord],
    ) -> Result<(), WriteError> {
        if parked.is_empty() {
            return Ok(());
        }
        let q = query(cypher::PARK)
            .param("gen", gen)
            .param("projector", projector)
            .param("rows", list(parked.iter().map(|p| p.row(projector))));
        let (what, n) = ("parked events".into(), parked.len() as i64);
        self.confirmed(txn, q, what, n, Returns::Rows).await?;
        // Their stories' views now say "blocked": a cached one is stale.
        let stories: std::collections::BTreeSet<String> =
            parked.iter().filter_map(|p| p.story_id.clone()).collect();
        let stories: Vec<String> = stories.into_iter().collect();
        self.bump_stories(txn, gen, &stories).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::row;
    use super::*;
    use neo4rs::BoltNull;

    fn parked_row(story_id: BoltType, blocked_by: BoltType) -> Row {
        row(vec![
            ("id", "p:S:1".into()),
            ("projector", "p".into()),
            ("stream", "S".into()),
            ("seq", 1i64.into()),
            ("subject", "planning.story.created".into()),
            ("story_id", story_id),
            ("kind", "decode".into()),
            ("reason", "bad".into()),
            ("blocked_by", blocked_by),
            ("dlq_seq", 4i64.into()),
            ("ts_ns", 9i64.into()),
        ])
    }

    #[test]
    fn a_parked_story_id_may_be_null_but_not_of_another_type() {
        let null = || BoltType::Null(BoltNull);
        let v = ParkedView::from_row(&parked_row(null(), null())).unwrap();
        assert_eq!((v.story_id, v.blocked_by), (None, None));
        let v = ParkedView::from_row(&parked_row("US-1".into(), "p:S:0".into())).unwrap();
        assert_eq!(v.story_id.as_deref(), Some("US-1"));
        assert_eq!(v.blocked_by.as_deref(), Some("p:S:0"));
        // Used to read as None: the operator would see a parked event blocking no story.
        assert!(ParkedView::from_row(&parked_row(7i64.into(), null())).is_err());
        assert!(ParkedView::from_row(&parked_row(null(), 7i64.into())).is_err());
    }
}
