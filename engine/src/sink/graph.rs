//! The Neo4j writer: one transaction per batch with its checkpoint, every write confirmed.
//!
//! Over 600 lines on purpose, for now: it still holds the pool, error mapping, batches,
//! checkpoints, parked events, outbox and stories together. Issue #16 splits it into
//! `sink/graph/{mod,batch,checkpoints,parked,outbox,stories}.rs` together with the worker's
//! reshaping into sources and one committer per partition; splitting it alone first would
//! move the same code twice.

use super::cypher;
use crate::config::Neo4jConfig;
use crate::error::WriteError;
use neo4rs::{query, BoltList, BoltMap, BoltNull, BoltType, Graph, Query};
use projections::context::StoryContext;
use projections::{CompactBatch, Group, NodeWrite, Outbound, Prop, Rel, RelWrite};
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
}

/// Reads a column every row of the query has. A missing or ill-typed value is an error,
/// never a default: a silently zeroed checkpoint or an empty id would be a wrong answer.
pub fn field<'a, T: serde::Deserialize<'a>>(
    row: &'a neo4rs::Row,
    name: &str,
) -> Result<T, WriteError> {
    row.get(name).map_err(|e| WriteError::Neo4jRefused {
        code: "projector.RowShape".into(),
        message: format!("column {name}: {e}"),
    })
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

fn prop(p: &Prop) -> BoltType {
    match p {
        Prop::Null => BoltType::Null(BoltNull),
        Prop::Str(s) => BoltType::from(s.as_str()),
        Prop::Int(i) => BoltType::from(*i),
        Prop::StrList(v) => {
            let mut l = BoltList::with_capacity(v.len());
            for s in v {
                l.push(BoltType::from(s.as_str()));
            }
            BoltType::List(l)
        }
    }
}

fn map(entries: Vec<(&str, BoltType)>) -> BoltType {
    let mut m = BoltMap::with_capacity(entries.len());
    for (k, v) in entries {
        m.put(k.into(), v);
    }
    BoltType::Map(m)
}

fn list(items: impl IntoIterator<Item = BoltType>) -> BoltType {
    let mut l = BoltList::new();
    for i in items {
        l.push(i);
    }
    BoltType::List(l)
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

/// Below this many rows a batch is written one statement per group, above it as the one
/// batch statement. Measured on the bench stack: the batch statement costs ~43 ms even
/// empty (37 subqueries), then ~0.075 ms a row; a per-group statement ~1.5 ms plus ~0.2 ms
/// a row. Small live batches (a few events) would otherwise pay the 43 ms floor.
pub const ONE_STATEMENT_MIN_ROWS: usize = 200;

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

fn opt(s: &Option<String>) -> BoltType {
    s.as_deref()
        .map(BoltType::from)
        .unwrap_or(BoltType::Null(BoltNull))
}

/// An outbound event waiting in the outbox, with the stream whose event produced it
/// (the outbox is drained per stream at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub stream: String,
    pub event: Outbound,
}

/// One transaction: the graph writes of every stream's pending events, their parked
/// records and outbox entries, and each stream's checkpoint move.
pub struct Commit<'a> {
    pub batch: &'a CompactBatch,
    pub parked: &'a [ParkedRecord],
    pub outbox: &'a [OutboxEntry],
    /// One per stream of the transaction (at least one); all advance or none.
    pub moves: &'a [CheckpointMove],
    /// Live writers: fail with [`WriteError::GenerationMoved`] if `gen` is no longer the
    /// live one (a rebuild was promoted).
    pub fence_live: bool,
}

/// The checkpoint move a batch commits with.
#[derive(Debug, Clone)]
pub struct CheckpointMove {
    pub key: CheckpointKey,
    /// Where the writer read it (0 when there was none).
    pub expected: u64,
    pub seq: u64,
    /// Stream time (ns) of the message at `seq`, 0 when unknown: a later start compares
    /// it with the stream's message at `seq` to notice a stream that was recreated.
    pub ts_ns: i64,
}

impl GraphSink {
    /// A lazily connecting pool; the first query reports an unreachable server.
    pub fn connect(cfg: &Neo4jConfig) -> Result<GraphSink, WriteError> {
        let config = neo4rs::ConfigBuilder::default()
            .uri(&cfg.uri)
            .user(&cfg.user)
            .password(&cfg.password)
            .max_connections(8)
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

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn err(&self) -> impl Fn(neo4rs::Error) -> WriteError + '_ {
        move |e| WriteError::from_neo4j(&self.uri, e)
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
                match self.graph.run(query(&stmt)).await.map_err(self.err()) {
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

    /// Has Neo4j plan the batch statement now (an empty batch, rolled back): planning it
    /// takes seconds, and the first big batch of a live run should not wait for that.
    pub async fn warm_up(&self) -> Result<(), WriteError> {
        let mut txn = self.graph.start_txn().await.map_err(self.err())?;
        let res = self
            .write_ops_one(&mut txn, "warm-up", &CompactBatch::default())
            .await;
        let _ = txn.rollback().await;
        res
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), WriteError> {
        let mut rows = self
            .graph
            .execute(query("RETURN 1 AS one"))
            .await
            .map_err(self.err())?;
        rows.next().await.map_err(self.err())?;
        Ok(())
    }

    /// The stored checkpoint, or `None` if this projector never committed on this stream.
    pub async fn checkpoint(
        &self,
        gen: &str,
        key: &CheckpointKey,
    ) -> Result<Option<u64>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query(cypher::CHECKPOINT_READ)
                    .param("gen", gen)
                    .param("id", key.id()),
            )
            .await
            .map_err(self.err())?;
        match rows.next().await.map_err(self.err())? {
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
        let mut rows = self
            .graph
            .execute(
                query(cypher::CHECKPOINT_TS)
                    .param("gen", gen)
                    .param("id", key.id()),
            )
            .await
            .map_err(self.err())?;
        match rows.next().await.map_err(self.err())? {
            // Null (never recorded) reads as an error from `get`: unknown, nothing to check.
            Some(row) => Ok(row.get::<i64>("ts_ns").ok()),
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
        let mut rows = self
            .graph
            .execute(
                query(
                    "MATCH (c:Checkpoint {gen: $gen}) WHERE c.projector = $projector AND c.stream = $stream \
                     RETURN c.partition AS p, c.seq AS seq",
                )
                .param("gen", gen)
                .param("projector", projector)
                .param("stream", stream),
            )
            .await
            .map_err(self.err())?;
        let mut out = BTreeMap::new();
        while let Some(row) = rows.next().await.map_err(self.err())? {
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
            self.graph
                .run(
                    query(
                        "MERGE (c:Checkpoint {gen: $gen, id: $id}) \
                         ON CREATE SET c.projector = $projector, c.stream = $stream, \
                         c.partition = $partition, c.seq = $seq",
                    )
                    .param("gen", gen)
                    .param("id", key.id())
                    .param("projector", projector)
                    .param("stream", stream)
                    .param("partition", p as i64)
                    .param("seq", seq as i64),
                )
                .await
                .map_err(self.err())?;
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
        self.graph
            .run(
                query("MATCH (c:Checkpoint {gen: $gen, id: $id}) DELETE c")
                    .param("gen", gen)
                    .param("id", key.id()),
            )
            .await
            .map_err(self.err())
    }

    /// Writes a batch, its parked records and its checkpoint in one transaction.
    ///
    /// Every statement's effect is confirmed (rows processed and rows holding the new
    /// version); anything short of that rolls the transaction back and is an error.
    ///
    /// # Errors
    /// Transient ones (unavailable, deadlock, checkpoint moved) are to be retried; permanent
    /// ones ([`WriteError::Neo4jRefused`], [`WriteError::Unconfirmed`]) name a write that will
    /// not succeed as it is.
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
            .map(|o| OutboxEntry {
                stream: ckpt.key.stream.clone(),
                event: o.clone(),
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

    /// Writes one transaction: graph writes, parked records, outbox entries and every
    /// stream's checkpoint move; all of it or nothing.
    pub async fn commit(&self, gen: &str, c: &Commit<'_>) -> Result<(), WriteError> {
        let t0 = std::time::Instant::now();
        let mut txn = self.graph.start_txn().await.map_err(self.err())?;
        let begin_ms = t0.elapsed().as_secs_f64() * 1e3;
        let result = self.write_all(&mut txn, gen, c).await;
        let write_ms = t0.elapsed().as_secs_f64() * 1e3 - begin_ms;
        match result {
            Ok(()) => {
                txn.commit().await.map_err(self.err())?;
                let total_ms = t0.elapsed().as_secs_f64() * 1e3;
                tracing::trace!(begin_ms, write_ms, total_ms, "graph transaction");
                Ok(())
            }
            Err(e) => {
                // Best effort: the server also rolls back when the connection drops.
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    async fn confirmed(
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
        let n: i64 = row.get("rows").unwrap_or(-1);
        let confirmed: i64 = row.get("confirmed").unwrap_or(n);
        tracing::trace!(
            what,
            rows = n,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "statement"
        );
        if n != expected || confirmed != expected {
            return Err(WriteError::Unconfirmed {
                what,
                expected,
                confirmed: confirmed.min(n),
            });
        }
        Ok(())
    }

    async fn write_all(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        c: &Commit<'_>,
    ) -> Result<(), WriteError> {
        let (batch, parked, outbox) = (c.batch, c.parked, c.outbox);
        let projector = c.moves.first().map_or("", |m| m.key.projector.as_str());
        if c.fence_live {
            let mut rows = txn
                .execute(
                    query("OPTIONAL MATCH (p:GenerationPointer {id: $pointer}) RETURN coalesce(p.name, $default) AS live")
                        .param("pointer", self.pointer.as_str())
                        .param("default", self.default_gen.as_str()),
                )
                .await
                .map_err(self.err())?;
            // OPTIONAL MATCH with coalesce: always exactly one row.
            let row = rows.next(txn.handle()).await.map_err(self.err())?;
            let live: String = match row {
                Some(r) => field(&r, "live")?,
                None => self.default_gen.clone(),
            };
            if live != gen {
                return Err(WriteError::GenerationMoved {
                    from: gen.to_string(),
                    to: live,
                });
            }
        }
        // Checkpoints first: a concurrent writer is detected before any work is sent.
        let mut moves: Vec<&CheckpointMove> = c.moves.iter().collect();
        moves.sort_by_key(|m| m.key.id());
        for ckpt in moves {
            let mut rows = txn
                .execute(
                    query(cypher::CHECKPOINT_ADVANCE)
                        .param("gen", gen)
                        .param("id", ckpt.key.id())
                        .param("projector", ckpt.key.projector.as_str())
                        .param("stream", ckpt.key.stream.as_str())
                        .param("partition", ckpt.key.partition as i64)
                        .param("expected", ckpt.expected as i64)
                        .param("seq", ckpt.seq as i64)
                        .param("ts_ns", ckpt.ts_ns),
                )
                .await
                .map_err(self.err())?;
            if rows.next(txn.handle()).await.map_err(self.err())?.is_none() {
                return Err(WriteError::CheckpointMoved {
                    id: ckpt.key.id(),
                    expected: ckpt.expected,
                });
            }
        }
        self.write_ops(txn, gen, batch).await?;
        if !parked.is_empty() {
            let rows = list(parked.iter().map(|p| {
                map(vec![
                    ("id", p.id(projector).into()),
                    ("stream", p.stream.as_str().into()),
                    ("seq", (p.seq as i64).into()),
                    ("subject", p.subject.as_str().into()),
                    ("story_id", opt(&p.story_id)),
                    ("kind", p.kind.as_str().into()),
                    ("reason", p.reason.as_str().into()),
                    ("blocked_by", opt(&p.blocked_by)),
                    ("dlq_seq", (p.dlq_seq as i64).into()),
                    ("ts_ns", p.ts_ns.into()),
                ])
            }));
            let q = query(cypher::PARK)
                .param("gen", gen)
                .param("projector", projector)
                .param("rows", rows);
            self.confirmed(txn, q, "parked events".into(), parked.len() as i64)
                .await?;
        }
        if !outbox.is_empty() {
            let rows = list(outbox.iter().map(|o| {
                map(vec![
                    ("id", o.event.msg_id.as_str().into()),
                    ("stream", o.stream.as_str().into()),
                    ("subject", o.event.subject.as_str().into()),
                    (
                        "payload",
                        String::from_utf8_lossy(&o.event.payload).as_ref().into(),
                    ),
                ])
            }));
            let q = query(cypher::OUTBOX_ADD)
                .param("gen", gen)
                .param("projector", projector)
                .param("rows", rows);
            self.confirmed(txn, q, "outbox entries".into(), outbox.len() as i64)
                .await?;
        }
        Ok(())
    }

    async fn write_ops(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        batch: &CompactBatch,
    ) -> Result<(), WriteError> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.rows() < ONE_STATEMENT_MIN_ROWS {
            return self.write_ops_each(txn, gen, batch).await;
        }
        self.write_ops_one(txn, gen, batch).await
    }

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

    /// A small batch: one statement per group and relationship type it holds.
    async fn write_ops_each(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        batch: &CompactBatch,
    ) -> Result<(), WriteError> {
        for (group, writes) in &batch.nodes {
            let rows = list(writes.values().map(node_row));
            let q = query(&cypher::node_upsert(*group))
                .param("gen", gen)
                .param("rows", rows);
            self.confirmed(txn, q, format!("{group} nodes"), writes.len() as i64)
                .await?;
        }
        for (rel, writes) in &batch.rels {
            let rows = list(writes.values().map(rel_row));
            let q = query(&cypher::rel_upsert(*rel))
                .param("gen", gen)
                .param("rows", rows);
            let what = format!("{} relationships", rel.rel_type());
            self.confirmed(txn, q, what, writes.len() as i64).await?;
        }
        let ids = touched_stories(batch);
        if !ids.is_empty() {
            let n = ids.len() as i64;
            let q = query(cypher::STORY_REV_BUMP)
                .param("gen", gen)
                .param("ids", ids);
            self.confirmed(txn, q, "story revisions".into(), n).await?;
        }
        Ok(())
    }

    /// Writes a batch's graph operations in one transaction and nothing else (no
    /// checkpoint, parked records or outbox): the sink's ceiling benchmark.
    pub async fn commit_bare(&self, gen: &str, batch: &CompactBatch) -> Result<(), WriteError> {
        let mut txn = self.graph.start_txn().await.map_err(self.err())?;
        match self.write_ops(&mut txn, gen, batch).await {
            Ok(()) => txn.commit().await.map_err(self.err()),
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    /// Writes re-projected parked events and removes their parked records, in one transaction.
    pub async fn commit_retry(
        &self,
        gen: &str,
        projector: &str,
        batch: &CompactBatch,
        parked_ids: &[String],
    ) -> Result<(), WriteError> {
        let mut txn = self.graph.start_txn().await.map_err(self.err())?;
        let res = async {
            self.write_ops(&mut txn, gen, batch).await?;
            let q = query(
                "UNWIND $ids AS id MATCH (p:ParkedEvent {gen: $gen, id: id}) WHERE p.projector = $projector \
                 DELETE p RETURN count(*) AS rows",
            )
            .param("gen", gen)
            .param("projector", projector)
            .param("ids", parked_ids.to_vec());
            self.confirmed(&mut txn, q, "parked records removed".into(), parked_ids.len() as i64)
                .await
        }
        .await;
        match res {
            Ok(()) => txn.commit().await.map_err(self.err()),
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    /// Parked records of a projector (all of them, or one story's), in stream order.
    pub async fn parked(
        &self,
        gen: &str,
        projector: Option<&str>,
    ) -> Result<Vec<ParkedView>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query(
                    "MATCH (p:ParkedEvent {gen: $gen}) WHERE $projector IS NULL OR p.projector = $projector \
                     RETURN p.id AS id, p.projector AS projector, p.stream AS stream, p.seq AS seq, \
                            p.subject AS subject, p.story_id AS story_id, p.kind AS kind, p.reason AS reason, \
                            p.blocked_by AS blocked_by, p.dlq_seq AS dlq_seq, p.ts_ns AS ts_ns \
                     ORDER BY p.projector, p.stream, p.seq",
                )
                .param("gen", gen)
                .param("projector", projector.map(str::to_string)),
            )
            .await
            .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(self.err())? {
            out.push(ParkedView {
                id: field(&row, "id")?,
                projector: field(&row, "projector")?,
                stream: field(&row, "stream")?,
                seq: field::<i64>(&row, "seq")? as u64,
                subject: field(&row, "subject")?,
                story_id: row.get("story_id").ok(),
                kind: field(&row, "kind")?,
                reason: field(&row, "reason")?,
                blocked_by: row.get("blocked_by").ok(),
                dlq_seq: field::<i64>(&row, "dlq_seq")? as u64,
                ts_ns: field::<i64>(&row, "ts_ns")?,
            });
        }
        Ok(out)
    }

    /// Removes parked records without re-projecting them (an operator's decision).
    pub async fn discard_parked(&self, gen: &str, ids: &[String]) -> Result<u64, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query("UNWIND $ids AS id MATCH (p:ParkedEvent {gen: $gen, id: id}) DELETE p RETURN count(*) AS n")
                    .param("gen", gen)
                    .param("ids", ids.to_vec()),
            )
            .await
            .map_err(self.err())?;
        let n = match rows.next().await.map_err(self.err())? {
            Some(r) => field::<i64>(&r, "n")?,
            None => 0,
        };
        Ok(n as u64)
    }

    /// Which of `stories` still have parked records for `projector`.
    pub async fn still_blocked(
        &self,
        gen: &str,
        projector: &str,
        stories: &[String],
    ) -> Result<Vec<String>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query("MATCH (p:ParkedEvent {gen: $gen, projector: $projector}) WHERE p.story_id IN $ids RETURN DISTINCT p.story_id AS s")
                    .param("gen", gen)
                    .param("projector", projector)
                    .param("ids", stories.to_vec()),
            )
            .await
            .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(self.err())? {
            out.push(field::<String>(&row, "s")?);
        }
        Ok(out)
    }

    /// Outbound events committed but not yet confirmed as published (after a crash).
    pub async fn outbox_pending(
        &self,
        gen: &str,
        key: &CheckpointKey,
    ) -> Result<Vec<Outbound>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query(cypher::OUTBOX_PENDING)
                    .param("gen", gen)
                    .param("projector", key.projector.as_str())
                    .param("stream", key.stream.as_str()),
            )
            .await
            .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(self.err())? {
            out.push(Outbound {
                msg_id: field(&row, "id")?,
                subject: field(&row, "subject")?,
                payload: field::<String>(&row, "payload")?.into_bytes(),
            });
        }
        Ok(out)
    }

    /// Removes outbox entries once their publish is confirmed.
    pub async fn outbox_done(&self, gen: &str, ids: &[String]) -> Result<(), WriteError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.graph
            .run(
                query(cypher::OUTBOX_DONE)
                    .param("gen", gen)
                    .param("ids", ids.to_vec()),
            )
            .await
            .map_err(self.err())
    }

    /// Stories that have parked events for this projector (the sequenced dead-letter block list).
    pub async fn blocked_stories(
        &self,
        gen: &str,
        projector: &str,
    ) -> Result<Vec<(String, String)>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query(
                    "MATCH (p:ParkedEvent {gen: $gen, projector: $projector}) WHERE p.story_id IS NOT NULL \
                     WITH p.story_id AS story, p ORDER BY p.stream, p.seq \
                     RETURN story, collect(p.id)[0] AS first",
                )
                .param("gen", gen)
                .param("projector", projector),
            )
            .await
            .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(self.err())? {
            out.push((
                field::<String>(&row, "story")?,
                field::<String>(&row, "first")?,
            ));
        }
        Ok(out)
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
        self.graph
            .run(
                query(
                    "MERGE (l:LostRange {gen: $gen, id: $id}) \
                     SET l.projector = $projector, l.stream = $stream, l.partition = $partition, \
                         l.from_seq = $from, l.to_seq = $to, l.halted = $halted, l.checkpoint = $checkpoint",
                )
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
            .map_err(self.err())
    }

    /// Lost ranges recorded in a generation: (projector, stream, from, to, halted).
    pub async fn lost_ranges(
        &self,
        gen: &str,
    ) -> Result<Vec<(String, String, u64, u64, bool)>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query("MATCH (l:LostRange {gen: $gen}) RETURN l.projector AS p, l.stream AS s, l.from_seq AS f, l.to_seq AS t, l.halted AS h ORDER BY s, f")
                    .param("gen", gen),
            )
            .await
            .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(self.err())? {
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

    /// The story's revision (commits that touched it), or `None` if the story does not exist.
    pub async fn story_rev(&self, gen: &str, id: &str) -> Result<Option<i64>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query(
                    "MATCH (s:Story {gen: $gen, id: $id}) OPTIONAL MATCH (r:StoryRev {gen: $gen, id: $id}) \
                     RETURN coalesce(r.rev, 0) AS rev",
                )
                .param("gen", gen)
                .param("id", id),
            )
            .await
            .map_err(self.err())?;
        rows.next()
            .await
            .map_err(self.err())?
            .map(|r| field(&r, "rev"))
            .transpose()
    }

    /// The story's newest version key (`last_v`), or `None` if the story does not exist.
    pub async fn story_version(&self, gen: &str, id: &str) -> Result<Option<String>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query("MATCH (s:Story {gen: $gen, id: $id}) RETURN coalesce(s.last_v, '') AS v")
                    .param("gen", gen)
                    .param("id", id),
            )
            .await
            .map_err(self.err())?;
        rows.next()
            .await
            .map_err(self.err())?
            .map(|r| field(&r, "v"))
            .transpose()
    }

    /// Every story id of a generation, sorted.
    pub async fn story_ids(&self, gen: &str) -> Result<Vec<String>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query("MATCH (s:Story {gen: $gen}) RETURN s.id AS id ORDER BY id")
                    .param("gen", gen),
            )
            .await
            .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(self.err())? {
            out.push(field::<String>(&row, "id")?);
        }
        Ok(out)
    }

    /// Reads the cached-context view of stories from the committed graph.
    pub async fn story_contexts(
        &self,
        gen: &str,
        ids: &[String],
    ) -> Result<Vec<StoryContext>, WriteError> {
        let mut rows = self
            .graph
            .execute(
                query(STORY_CONTEXT)
                    .param("gen", gen)
                    .param("ids", ids.to_vec()),
            )
            .await
            .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(self.err())? {
            let mut ctx: StoryContext = row.get("ctx").map_err(|e| WriteError::Neo4jRefused {
                code: "projector.ContextShape".into(),
                message: e.to_string(),
            })?;
            ctx.rev = field(&row, "rev")?;
            out.push(ctx);
        }
        Ok(out)
    }
}

/// The story view as stored in Valkey, read in one query per batch of stories.
const STORY_CONTEXT: &str = "UNWIND $ids AS sid \
    MATCH (s:Story {gen: $gen, id: sid}) \
    CALL (s) { OPTIONAL MATCH (s)-[:HAD_PHASE]->(c:PhaseChange) WITH c ORDER BY c.at_ms, c.last_seq \
      RETURN [x IN collect(c) | {from: x.from_phase, to: x.to_phase, by: x.changed_by, at_ms: x.at_ms, seq: x.last_seq}] AS phases } \
    CALL (s) { OPTIONAL MATCH (s)-[:HAS_PLAN]->(p:Plan) WITH p ORDER BY p.id \
      CALL (p) { OPTIONAL MATCH (a:PlanApproval)-[:APPROVES]->(p) WITH a ORDER BY a.approved_at_ms, a.id \
        RETURN [x IN collect(a) | {approved_by: x.approved_by, approved_at_ms: x.approved_at_ms}] AS approvals } \
      RETURN [x IN collect({plan_id: p.id, version: p.version, summary: p.summary, created_at_ms: p.created_at_ms, approvals: approvals}) WHERE x.plan_id IS NOT NULL] AS plans } \
    CALL (s) { OPTIONAL MATCH (s)-[:HAS_TASK]->(t:Task) WITH t ORDER BY t.id \
      RETURN [x IN collect(t) | {task_id: x.id, title: x.title, role: x.role, status: x.status, agent_id: x.agent_id}] AS tasks } \
    CALL (s) { OPTIONAL MATCH (s)-[:HAS_DECISION]->(d:Decision) WITH d ORDER BY d.decided_at_ms, d.id \
      RETURN [x IN collect(d) | {decision_id: x.id, task_id: x.task_id, title: x.title, rationale: x.rationale, decided_by: x.decided_by, decided_at_ms: x.decided_at_ms}] AS decisions } \
    CALL (s) { OPTIONAL MATCH (s)-[:REACHED]->(m:Milestone) WITH m ORDER BY m.reached_at_ms, m.name \
      RETURN [x IN collect(m) | {name: x.name, reached_at_ms: x.reached_at_ms}] AS milestones } \
    OPTIONAL MATCH (r:StoryRev {gen: $gen, id: s.id}) \
    RETURN {story_id: s.id, title: s.title, description: s.description, phase: s.phase, created_by: s.created_by, \
      phase_history: phases, plans: plans, tasks: tasks, decisions: decisions, milestones: milestones, \
      last_v: coalesce(s.last_v, '')} AS ctx, coalesce(r.rev, 0) AS rev";
