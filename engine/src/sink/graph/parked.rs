//! Parked (dead-lettered) events as recorded in the graph: the operator's view, the
//! per-story block list, and retries that re-project them.

use super::batch::{list, map, opt};
use super::{cypher, field, GraphSink};
use crate::error::WriteError;
use neo4rs::{query, BoltType, Row};
use projections::blocking::{seq_of_id, Blocker, Decision, Ruling};
use projections::CompactBatch;

/// The fence node of one (projector, stream, story): a worker parking behind a block and an
/// operator deciding about it take its lock, so one waits for the other.
fn fence_id(projector: &str, stream: &str, story: &str) -> String {
    format!("{projector}:{stream}:{story}")
}

/// A recorded ruling about one message of a projector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RulingView {
    pub stream: String,
    pub seq: u64,
    #[serde(skip)]
    pub ruling: Ruling,
    pub by: Option<String>,
    pub at_ms: Option<i64>,
}

/// An operator's decision about parked events, as [`GraphSink::commit_decision`] records it.
pub struct DecisionRecord<'a> {
    pub decision: Decision,
    /// Who decided (`--by`, else the user running the command).
    pub by: &'a str,
    /// The parked records decided about; they are removed.
    pub parked: &'a [ParkedView],
    /// (stream, story, stream end before the decision) of every pair the decision touches:
    /// a pair left without parked records is lifted at that position.
    pub lifts: &'a [(String, String, u64)],
    /// A retry's outbound events, added to the outbox in the same transaction.
    pub outbox: &'a [super::OutboxEntry],
}

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
    /// Parked because Neo4j refused its writes (not because of its bytes): recorded as a
    /// ruling every generation's build honours (D59).
    pub refused: bool,
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
            ("refused", self.refused.into()),
        ])
    }

    /// The sequence of the event this one was parked behind (None: it parked for itself).
    fn blocked_seq(&self) -> Option<u64> {
        self.blocked_by
            .as_deref()
            .and_then(projections::blocking::seq_of_id)
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
        self.confirmed(txn, q, what, n).await
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

    /// Every ruling of `projector`, by (stream, seq), with who decided and when.
    pub async fn rulings(&self, projector: &str) -> Result<Vec<RulingView>, WriteError> {
        let q = query(cypher::RULINGS).param("projector", projector);
        self.rows(q)
            .await?
            .iter()
            .map(|r| {
                let decision: Option<String> = field(r, "decision")?;
                let decision = match decision.as_deref() {
                    None => None,
                    Some(d) => {
                        Some(Decision::parse(d).ok_or_else(|| WriteError::Neo4jRefused {
                            code: "projector.RowShape".into(),
                            message: format!("ruling decision {d:?} is neither discard nor retry"),
                        })?)
                    }
                };
                Ok(RulingView {
                    stream: field(r, "stream")?,
                    seq: field::<i64>(r, "seq")? as u64,
                    ruling: Ruling {
                        refused: field(r, "refused")?,
                        decision,
                    },
                    by: field(r, "by")?,
                    at_ms: field(r, "at_ms")?,
                })
            })
            .collect()
    }

    /// Every lift of `projector`'s blocks: (stream, story, at).
    pub async fn lifts(&self, projector: &str) -> Result<Vec<(String, String, u64)>, WriteError> {
        let q = query(cypher::BLOCK_LIFTS).param("projector", projector);
        self.rows(q)
            .await?
            .iter()
            .map(|r| {
                let at: i64 = field(r, "at")?;
                Ok((field(r, "stream")?, field(r, "story")?, at as u64))
            })
            .collect()
    }

    /// The blocks of this projector's parked records (the sequenced dead-letter block
    /// list): per (story, stream), the event its first parked record was parked behind, or
    /// that record itself. Returns (story, stream, blocker).
    pub async fn blocked_stories(
        &self,
        gen: &str,
        projector: &str,
    ) -> Result<Vec<(String, String, Blocker)>, WriteError> {
        let q = query(cypher::BLOCKED_STORIES)
            .param("gen", gen)
            .param("projector", projector);
        self.rows(q)
            .await?
            .iter()
            .map(|r| {
                let first: String = field(r, "first")?;
                // Parked for itself (no blocker): it is the block.
                let id = field::<Option<String>>(r, "by")?.unwrap_or(first);
                let seq = seq_of_id(&id).ok_or_else(|| WriteError::Neo4jRefused {
                    code: "projector.RowShape".into(),
                    message: format!("parked event id {id} does not end in a sequence"),
                })?;
                Ok((field(r, "story")?, field(r, "stream")?, Blocker { id, seq }))
            })
            .collect()
    }

    /// An operator's decision in one transaction: locks the fences of `d.lifts`' (stream,
    /// story) pairs, writes `batch` (a retry's re-projected events) and adds their outbound
    /// events (`d.outbox`) to the outbox, removes the decided parked records and moves their
    /// stories' revisions (their views said "blocked"), records each decision with who and
    /// when, and lifts the block of each pair left without parked records (D59). Returns the
    /// lifts recorded (stream, story, at).
    pub async fn commit_decision(
        &self,
        gen: &str,
        projector: &str,
        batch: &CompactBatch,
        d: &DecisionRecord<'_>,
    ) -> Result<Vec<(String, String, u64)>, WriteError> {
        let mut txn = self.start_txn().await?;
        let res = async {
            let keys = list(d.lifts.iter().map(|(stream, story, at)| {
                map(vec![
                    ("fence", fence_id(projector, stream, story).into()),
                    ("stream", stream.as_str().into()),
                    ("story", story.as_str().into()),
                    ("at", (*at as i64).into()),
                ])
            }));
            if !d.lifts.is_empty() {
                let q = query(cypher::BLOCK_FENCE_LOCK).param("keys", keys.clone());
                let (what, n) = ("block fences".into(), d.lifts.len() as i64);
                self.confirmed(&mut txn, q, what, n).await?;
            }
            self.write_ops(&mut txn, gen, batch).await?;
            self.outbox_add(&mut txn, gen, projector, d.outbox).await?;
            let stories: Vec<String> = d
                .parked
                .iter()
                .filter_map(|p| p.story_id.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            self.bump_stories(&mut txn, gen, &stories).await?;
            let ids: Vec<String> = d.parked.iter().map(|p| p.id.clone()).collect();
            let q = query(cypher::PARKED_REMOVE)
                .param("gen", gen)
                .param("projector", projector)
                .param("ids", ids);
            let (what, n) = ("parked records removed".into(), d.parked.len() as i64);
            self.confirmed(&mut txn, q, what, n).await?;
            let rows = list(d.parked.iter().map(|p| {
                map(vec![
                    ("id", p.id.as_str().into()),
                    ("stream", p.stream.as_str().into()),
                    ("seq", (p.seq as i64).into()),
                ])
            }));
            let q = query(cypher::RULINGS_DECIDE)
                .param("projector", projector)
                .param("decision", d.decision.as_str())
                .param("by", d.by)
                .param("rows", rows);
            let (what, n) = ("operator decisions".into(), d.parked.len() as i64);
            self.confirmed(&mut txn, q, what, n).await?;
            if d.lifts.is_empty() {
                return Ok(Vec::new());
            }
            let q = query(cypher::BLOCK_LIFT)
                .param("gen", gen)
                .param("projector", projector)
                .param("by", d.by)
                .param("keys", keys);
            let mut lifted = Vec::new();
            let mut stream = txn.execute(q).await.map_err(self.err())?;
            while let Some(r) = stream.next(txn.handle()).await.map_err(self.err())? {
                let at: i64 = field(&r, "at")?;
                lifted.push((field(&r, "stream")?, field(&r, "story")?, at as u64));
            }
            Ok(lifted)
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
        let behind: Vec<BoltType> = parked
            .iter()
            .filter_map(|p| {
                let (story, blocked_seq) = (p.story_id.as_deref()?, p.blocked_seq()?);
                Some(map(vec![
                    ("id", p.id(projector).into()),
                    ("fence", fence_id(projector, &p.stream, story).into()),
                    ("stream", p.stream.as_str().into()),
                    ("story_id", story.into()),
                    ("seq", (p.seq as i64).into()),
                    ("blocked_seq", (blocked_seq as i64).into()),
                ]))
            })
            .collect();
        if !behind.is_empty() {
            // Waits for an operator's decision on the same (stream, story) in flight; a lift
            // it recorded means these events are no longer behind anything (D59).
            let q = query(cypher::BLOCK_FENCE)
                .param("projector", projector)
                .param("rows", list(behind));
            let mut rows = txn.execute(q).await.map_err(self.err())?;
            if let Some(r) = rows.next(txn.handle()).await.map_err(self.err())? {
                return Err(WriteError::BlockLifted {
                    id: field(&r, "id")?,
                });
            }
        }
        let q = query(cypher::PARK)
            .param("gen", gen)
            .param("projector", projector)
            .param("rows", list(parked.iter().map(|p| p.row(projector))));
        let (what, n) = ("parked events".into(), parked.len() as i64);
        self.confirmed(txn, q, what, n).await?;
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
