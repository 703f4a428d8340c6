//! The graph writes of a [`CompactBatch`], each statement's effect confirmed.

use super::{cypher, field, GraphSink};
use crate::error::WriteError;
use neo4rs::{query, BoltList, BoltMap, BoltNull, BoltType, Query, Row};
use projections::{CompactBatch, Group, NodeWrite, Prop, Rel, RelWrite};

fn prop(p: &Prop) -> BoltType {
    match p {
        Prop::Null => BoltType::Null(BoltNull),
        Prop::Str(s) => BoltType::from(s.as_str()),
        Prop::Int(i) => BoltType::from(*i),
        Prop::StrList(v) => list(v.iter().map(|s| BoltType::from(s.as_str()))),
    }
}

/// A Bolt map of these entries (a statement's row).
pub(super) fn map(entries: Vec<(&str, BoltType)>) -> BoltType {
    let mut m = BoltMap::with_capacity(entries.len());
    for (k, v) in entries {
        m.put(k.into(), v);
    }
    BoltType::Map(m)
}

/// A Bolt list of these items (a statement's rows).
pub(super) fn list(items: impl IntoIterator<Item = BoltType>) -> BoltType {
    let mut l = BoltList::new();
    for i in items {
        l.push(i);
    }
    BoltType::List(l)
}

/// A string or null.
pub(super) fn opt(s: &Option<String>) -> BoltType {
    s.as_deref()
        .map(BoltType::from)
        // Not a dropped error: an absent value is written as null.
        .unwrap_or(BoltType::Null(BoltNull))
}

fn node_row(w: &NodeWrite) -> BoltType {
    let p = map(w
        .group
        .props()
        .iter()
        .zip(&w.values)
        .map(|(k, v)| (*k, prop(v)))
        .collect());
    map(vec![
        ("id", w.id.as_str().into()),
        ("v", w.version.key().into()),
        ("seq", (w.version.seq as i64).into()),
        ("stream", w.version.stream.as_str().into()),
        ("t", w.event_time_ms.into()),
        ("p", p),
    ])
}

fn rel_row(r: &RelWrite) -> BoltType {
    map(vec![
        ("from", r.from.as_str().into()),
        ("to", r.to.as_str().into()),
        ("v", r.version.key().into()),
        ("seq", (r.version.seq as i64).into()),
        ("stream", r.version.stream.as_str().into()),
        ("t", r.event_time_ms.into()),
    ])
}

/// Stories whose nodes a batch writes: every commit that touches a story moves its
/// revision, the cache's freshness token.
fn touched_stories(batch: &CompactBatch) -> Vec<String> {
    let stories: std::collections::BTreeSet<&str> = batch
        .nodes
        .iter()
        .filter(|(g, _)| g.label() == projections::Label::Story)
        .flat_map(|(_, w)| w.keys().map(String::as_str))
        .collect();
    stories.into_iter().map(str::to_string).collect()
}

/// Checks a confirmed statement's one result row: `rows` must equal `expected`. A column
/// the statement should return and does not is a [`WriteError::Neo4jRefused`]
/// `projector.RowShape` (a bug of ours, through [`field`]), never a default that would pass
/// or blame the data.
pub(super) fn check_counts(row: &Row, what: String, expected: i64) -> Result<(), WriteError> {
    let n: i64 = field(row, "rows")?;
    if n != expected {
        return Err(WriteError::Unconfirmed {
            what,
            expected,
            confirmed: n,
        });
    }
    Ok(())
}

impl GraphSink {
    /// Has Neo4j plan the batch statement now (an empty batch, rolled back): planning it
    /// takes seconds, and the first big batch of a live run should not wait for that.
    pub async fn warm_up(&self) -> Result<(), WriteError> {
        let mut txn = self.start_txn().await?;
        let res = self
            .write_ops_one(&mut txn, "warm-up", &CompactBatch::default())
            .await;
        // Rolled back on success too: the warm-up must leave nothing behind.
        super::rollback(txn, "the warm-up transaction is never committed").await;
        res?;
        self.plan_commit_statements().await
    }

    /// Writes a batch's graph operations in one transaction and nothing else (no
    /// checkpoint, parked records or outbox): the sink's ceiling benchmark.
    pub async fn commit_bare(&self, gen: &str, batch: &CompactBatch) -> Result<(), WriteError> {
        let mut txn = self.start_txn().await?;
        let res = self.write_ops(&mut txn, gen, batch).await;
        self.finish(txn, res).await
    }

    /// Runs a statement in `txn` and checks its counts (see [`check_counts`]).
    pub(super) async fn confirmed(
        &self,
        txn: &mut neo4rs::Txn,
        q: Query,
        what: String,
        expected: i64,
    ) -> Result<(), WriteError> {
        let started = std::time::Instant::now();
        let mut rows = txn.execute(q).await.map_err(self.err())?;
        let row = rows
            .next(txn.handle())
            .await
            .map_err(self.err())?
            .ok_or_else(|| WriteError::Unconfirmed {
                what: what.clone(),
                expected,
                confirmed: 0,
            })?;
        tracing::trace!(
            what,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "statement"
        );
        check_counts(&row, what, expected)
    }

    pub(super) async fn write_ops(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        batch: &CompactBatch,
    ) -> Result<(), WriteError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write_ops_one(txn, gen, batch).await
    }

    /// Every batch, a few events or thousands, is this one statement: one round trip. Small
    /// batches used to go one statement per group (D18), up to 18 round trips, because this
    /// statement seemed to cost 43 ms even empty; that was the Nagle stall of a Bolt request
    /// over neo4rs's 8 KiB write buffer, not Neo4j's work (D77, D79).
    async fn write_ops_one(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        batch: &CompactBatch,
    ) -> Result<(), WriteError> {
        // One statement for the whole batch (cypher::batch_upsert): node groups before
        // relationships, so relationship MERGEs find filled nodes.
        let started = std::time::Instant::now();
        let mut params = BoltMap::new();
        let mut expected: Vec<(String, i64)> = Vec::new();
        let mut add = |name: String, n: usize, rows: BoltType| {
            params.put(name.as_str().into(), rows);
            expected.push((name, n as i64));
        };
        for group in Group::ALL {
            let w = batch.nodes.get(group);
            let rows = list(w.into_iter().flat_map(|w| w.values().map(node_row)));
            add(format!("n_{group:?}"), w.map_or(0, |w| w.len()), rows);
        }
        for rel in Rel::ALL {
            let w = batch.rels.get(rel);
            let rows = list(w.into_iter().flat_map(|w| w.values().map(rel_row)));
            add(format!("r_{rel:?}"), w.map_or(0, |w| w.len()), rows);
        }
        let ids = touched_stories(batch);
        let n_stories = ids.len() as i64;
        params.put("stories".into(), ids.into());
        let q = query(cypher::batch_upsert())
            .param("gen", gen)
            .param("batch", BoltType::Map(params));
        let mut rows = txn.execute(q).await.map_err(self.err())?;
        let row = rows
            .next(txn.handle())
            .await
            .map_err(self.err())?
            .ok_or_else(|| WriteError::Unconfirmed {
                what: "batch".into(),
                expected: 1,
                confirmed: 0,
            })?;
        for (name, want) in expected {
            let n: i64 = field(&row, &format!("rows_{name}"))?;
            let ok: i64 = field(&row, &format!("confirmed_{name}"))?;
            if n != want || ok != want {
                return Err(WriteError::Unconfirmed {
                    what: name,
                    expected: want,
                    confirmed: ok.min(n),
                });
            }
        }
        let n: i64 = field(&row, "rows_stories")?;
        if n != n_stories {
            return Err(WriteError::Unconfirmed {
                what: "story revisions".into(),
                expected: n_stories,
                confirmed: n,
            });
        }
        tracing::trace!(
            nodes = batch.nodes.values().map(|w| w.len()).sum::<usize>(),
            rels = batch.rels.values().map(|w| w.len()).sum::<usize>(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "batch statement"
        );
        Ok(())
    }

    /// Plans the rest of a commit's statements now, in a transaction that is rolled back:
    /// a plan took 0.1-0.8 s to make on the bench machine, and the first small batches of a
    /// live run should not pay that.
    pub(super) async fn plan_commit_statements(&self) -> Result<(), WriteError> {
        let mut txn = self.start_txn().await?;
        let res = async {
            // The rest of a commit and the cache step's read: the story context read alone
            // took 0.5 s on its first call.
            let none = || list([]);
            let rest = [
                query(cypher::CHECKPOINTS_ADVANCE).param("moves", none()),
                query(cypher::PARK)
                    .param("projector", "warm-up")
                    .param("rows", none()),
                query(cypher::OUTBOX_ADD)
                    .param("projector", "warm-up")
                    .param("rows", none()),
                query(cypher::OUTBOX_DONE).param("ids", none()),
                query(cypher::STORY_REV_BUMP).param("ids", none()),
                query(cypher::STORY_CONTEXT).param("ids", none()),
            ];
            for q in rest {
                let mut rows = txn
                    .execute(q.param("gen", "warm-up"))
                    .await
                    .map_err(self.err())?;
                while rows.next(txn.handle()).await.map_err(self.err())?.is_some() {}
            }
            Ok(())
        }
        .await;
        // Rolled back on success too: planning must leave nothing behind.
        super::rollback(txn, "the planning transaction is never committed").await;
        res
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::row;
    use super::*;

    fn shape(e: WriteError) -> String {
        match e {
            WriteError::Neo4jRefused { code, message } => format!("{code}: {message}"),
            other => panic!("expected a row-shape refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_count_column_is_a_row_shape_error_not_a_default() {
        // A row lacking `rows` used to read as -1 rows: an Unconfirmed write (park the
        // event) for what is a statement of ours returning the wrong columns.
        let r = row(vec![("n", 2i64.into())]);
        let e = check_counts(&r, "x".into(), 2).unwrap_err();
        assert!(shape(e).contains("column rows"));
    }

    #[test]
    fn counts_short_of_expected_are_unconfirmed() {
        let r = row(vec![("rows", 1i64.into())]);
        let e = check_counts(&r, "x".into(), 2).unwrap_err();
        assert!(
            matches!(e, WriteError::Unconfirmed { confirmed: 1, .. }),
            "{e:?}"
        );
        let r = row(vec![("rows", 3i64.into())]);
        assert!(check_counts(&r, "x".into(), 3).is_ok());
    }
}
