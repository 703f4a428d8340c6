//! The Neo4j writer: one transaction per commit with its checkpoints, every write confirmed.
//!
//! This module keeps the pool, the error mapping and reading of result columns ([`field`]);
//! the rest is one file per thing the graph holds for projector:
//! - `commit.rs`: [`Commit`], the one transaction of a partition's pending events (graph
//!   writes, parked records, outbox entries, every stream's checkpoint move, the live fence);
//! - `batch.rs`: the graph writes of a [`projections::CompactBatch`] and their confirmation;
//! - `checkpoints.rs`: [`CheckpointKey`], [`CheckpointMove`], checkpoint reads and layout
//!   changes, lost ranges;
//! - `parked.rs`: [`ParkedRecord`], [`ParkedView`], the per-story block list, retries;
//! - `outbox.rs`: [`OutboxEntry`], outbound events committed but not yet published;
//! - `stories.rs`: story revisions, versions and the cached-context view;
//! - `generations.rs`: the live-generation pointer and generation markers;
//! - `reads.rs`: the read views' and the canonical hash's scans.
//!
//! No raw `neo4rs::Graph` leaves this module, and no Cypher text is written here: every
//! statement is a named item of [`super::cypher`] (checked by `engine/tests/tidy_cypher.rs`).

mod batch;
mod checkpoints;
mod commit;
mod generations;
mod outbox;
mod parked;
mod reads;
mod stories;

pub use checkpoints::{CheckpointKey, CheckpointMove};
pub use commit::Commit;
pub use generations::{GenerationMarker, GenerationSize};
pub use outbox::OutboxEntry;
pub use parked::{DecisionRecord, ParkedRecord, ParkedView, RulingView};

use super::cypher;
use crate::config::Neo4jConfig;
use crate::error::WriteError;
use neo4rs::{query, Graph, Query, Row};

/// Reads a column every row of the query has. A missing or ill-typed value is an error,
/// never a default: a silently zeroed checkpoint or an empty id would be a wrong answer.
/// A column that may be null is read as `Option<T>`: null is `None`, a value of another
/// type is still an error.
pub fn field<'a, T: serde::Deserialize<'a>>(row: &'a Row, name: &str) -> Result<T, WriteError> {
    row.get(name).map_err(|e| WriteError::Neo4jRefused {
        code: "projector.RowShape".into(),
        message: format!("column {name}: {e}"),
    })
}

/// The graph sink. Cheap to clone (a connection pool inside).
#[derive(Clone)]
pub struct GraphSink {
    graph: Graph,
    uri: String,
    /// Id of this deployment's live-generation pointer (`live`, or `live:<subject prefix>`
    /// when several deployments share one Neo4j).
    pointer: String,
    /// Live generation while the pointer does not exist yet.
    default_gen: String,
}

impl GraphSink {
    /// A lazily connecting pool of `[neo4j] max_connections` connections; the first query
    /// reports an unreachable server.
    pub fn connect(cfg: &Neo4jConfig) -> Result<GraphSink, WriteError> {
        let config = neo4rs::ConfigBuilder::default()
            .uri(&cfg.uri)
            .user(&cfg.user)
            .password(&cfg.password)
            .max_connections(cfg.max_connections)
            .fetch_size(1000)
            .build()
            .map_err(|e| WriteError::from_neo4j(&cfg.uri, e))?;
        let graph = Graph::connect(config).map_err(|e| WriteError::from_neo4j(&cfg.uri, e))?;
        Ok(GraphSink {
            graph,
            uri: cfg.uri.clone(),
            pointer: "live".into(),
            default_gen: "main".into(),
        })
    }

    /// The sink for a whole configuration: its Neo4j, and its own live-generation pointer.
    pub fn for_config(cfg: &crate::config::Config) -> Result<GraphSink, WriteError> {
        let mut g = GraphSink::connect(&cfg.neo4j)?;
        if !cfg.subject_prefix.is_empty() {
            g.pointer = format!("live:{}", cfg.subject_prefix);
        }
        g.default_gen = cfg.default_generation.clone();
        Ok(g)
    }

    /// The generation that is live while no rebuild was promoted.
    pub fn default_generation(&self) -> &str {
        &self.default_gen
    }

    /// The id of the live-generation pointer node.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// The Bolt URI this sink connects to (for error messages).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn err(&self) -> impl Fn(neo4rs::Error) -> WriteError + '_ {
        move |e| WriteError::from_neo4j(&self.uri, e)
    }

    /// Runs a statement in its own auto-commit transaction, returning no rows.
    async fn run(&self, q: Query) -> Result<(), WriteError> {
        self.graph.run(q).await.map_err(self.err())
    }

    /// Runs a statement in its own transaction and reads every row it returns.
    async fn rows(&self, q: Query) -> Result<Vec<Row>, WriteError> {
        let mut stream = self.graph.execute(q).await.map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = stream.next().await.map_err(self.err())? {
            out.push(row);
        }
        Ok(out)
    }

    /// Runs a statement and calls `f` on each row as it arrives (for scans too big to hold).
    async fn each_row(
        &self,
        q: Query,
        mut f: impl FnMut(Row) -> Result<(), WriteError>,
    ) -> Result<(), WriteError> {
        let mut stream = self.graph.execute(q).await.map_err(self.err())?;
        while let Some(row) = stream.next().await.map_err(self.err())? {
            f(row)?;
        }
        Ok(())
    }

    /// Runs a statement and reads its first row, if any.
    async fn first_row(&self, q: Query) -> Result<Option<Row>, WriteError> {
        let mut stream = self.graph.execute(q).await.map_err(self.err())?;
        stream.next().await.map_err(self.err())
    }

    async fn start_txn(&self) -> Result<neo4rs::Txn, WriteError> {
        self.graph.start_txn().await.map_err(self.err())
    }

    /// Commits `txn` if `res` is Ok, else rolls it back and returns `res`'s error.
    async fn finish<T>(
        &self,
        txn: neo4rs::Txn,
        res: Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        match res {
            Ok(v) => {
                txn.commit().await.map_err(self.err())?;
                Ok(v)
            }
            Err(e) => {
                rollback(txn, &e.to_string()).await;
                Err(e)
            }
        }
    }

    /// Creates constraints and indexes (idempotent) and has the batch statement planned. Run
    /// at start.
    ///
    /// Instances started together race here: `IF NOT EXISTS` is checked before the rule is
    /// created, so the loser of a race gets `EquivalentSchemaRuleAlreadyExists`. The statement
    /// is then run again, which sees the rule and does nothing: success is confirmed by
    /// Neo4j, not assumed from the error.
    pub async fn ensure_schema(&self) -> Result<(), WriteError> {
        for stmt in cypher::schema() {
            let mut attempt = 0;
            loop {
                match self.run(query(&stmt)).await {
                    Ok(()) => break,
                    Err(WriteError::Neo4jRefused { code, .. })
                        if code == "Neo.ClientError.Schema.EquivalentSchemaRuleAlreadyExists"
                            && attempt < 3 =>
                    {
                        tracing::debug!(statement = %stmt, "created concurrently by another process; checking again");
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.warm_up().await
    }

    /// A cheap round trip, for readiness and the bounded waits of one-shot commands.
    pub async fn ping(&self) -> Result<(), WriteError> {
        self.first_row(query(cypher::PING)).await?;
        Ok(())
    }
}

/// Rolls back a transaction, `why` saying why it must not commit.
///
/// A failed rollback is logged and not returned: the error the caller needs is the one that
/// made it roll back, and Neo4j rolls back an open transaction by itself when its
/// connection closes, so nothing of it can be committed either way.
async fn rollback(txn: neo4rs::Txn, why: &str) {
    match txn.rollback().await {
        Ok(()) => {}
        // After a failed statement the server has already rolled the transaction back and
        // ignores the ROLLBACK: nothing went wrong here (it was a WARN on every deadlock).
        Err(neo4rs::Error::Neo4j(e)) if e.code() == "Neo.ServerError.Ignored" => {
            tracing::debug!(
                why,
                "rollback ignored: the server already rolled the transaction back"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, why, "rolling back a Neo4j transaction failed; the server discards it with the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo4rs::{BoltList, BoltNull, BoltType};

    /// A result row with these columns, as neo4rs builds it from a Bolt record.
    pub(super) fn row(cols: Vec<(&str, BoltType)>) -> Row {
        let mut fields = BoltList::new();
        let mut data = BoltList::new();
        for (k, v) in cols {
            fields.push(BoltType::from(k));
            data.push(v);
        }
        Row::new(fields, data)
    }

    #[test]
    fn field_reads_null_as_none_and_refuses_a_missing_or_ill_typed_column() {
        let r = row(vec![
            ("s", BoltType::from("x")),
            ("n", BoltType::Null(BoltNull)),
            ("i", BoltType::from(7i64)),
        ]);
        assert_eq!(field::<Option<String>>(&r, "s").unwrap(), Some("x".into()));
        assert_eq!(field::<Option<String>>(&r, "n").unwrap(), None);
        assert!(field::<Option<String>>(&r, "i").is_err(), "wrong type");
        assert!(field::<Option<String>>(&r, "missing").is_err(), "missing");
        assert!(
            field::<i64>(&r, "n").is_err(),
            "null where a value is required"
        );
    }
}
