//! The Cypher the graph writer runs, built only from code-defined labels, types and property
//! names. Event values are always parameters. Pure functions, unit-tested below.

use projections::{Group, Label, Rel};

/// Constraint and index statements, idempotent (`IF NOT EXISTS`).
///
/// Every label gets a composite uniqueness constraint on `(gen, id)`: it backs MERGE (no
/// label scans) and keeps generations apart in Community's single database.
pub fn schema() -> Vec<String> {
    let mut out: Vec<String> = Label::ALL
        .iter()
        .map(|l| {
            format!(
                "CREATE CONSTRAINT {}_gen_id IF NOT EXISTS FOR (n:{}) REQUIRE (n.gen, n.id) IS UNIQUE",
                l.as_str().to_lowercase(),
                l.as_str()
            )
        })
        .collect();
    out.push("CREATE CONSTRAINT checkpoint_gen_id IF NOT EXISTS FOR (n:Checkpoint) REQUIRE (n.gen, n.id) IS UNIQUE".into());
    out.push("CREATE CONSTRAINT parked_gen_id IF NOT EXISTS FOR (n:ParkedEvent) REQUIRE (n.gen, n.id) IS UNIQUE".into());
    out.push("CREATE CONSTRAINT lostrange_gen_id IF NOT EXISTS FOR (n:LostRange) REQUIRE (n.gen, n.id) IS UNIQUE".into());
    out.push("CREATE CONSTRAINT outbox_gen_id IF NOT EXISTS FOR (n:Outbox) REQUIRE (n.gen, n.id) IS UNIQUE".into());
    out.push("CREATE CONSTRAINT storyrev_gen_id IF NOT EXISTS FOR (n:StoryRev) REQUIRE (n.gen, n.id) IS UNIQUE".into());
    out.push(
        "CREATE CONSTRAINT generation_pointer_id IF NOT EXISTS FOR (n:GenerationPointer) REQUIRE n.id IS UNIQUE".into(),
    );
    out.push(
        "CREATE INDEX story_event_story IF NOT EXISTS FOR (n:StoryEvent) ON (n.gen, n.story_id)"
            .into(),
    );
    out.push(
        "CREATE INDEX decision_story IF NOT EXISTS FOR (n:Decision) ON (n.gen, n.story_id)".into(),
    );
    out.push("CREATE INDEX task_status IF NOT EXISTS FOR (n:Task) ON (n.gen, n.status)".into());
    out.push("CREATE INDEX parked_story IF NOT EXISTS FOR (n:ParkedEvent) ON (n.gen, n.projector, n.story_id)".into());
    out
}

/// One UNWIND statement writing one property group for many nodes.
///
/// `SET n._lock` takes the node's write lock before the version guard is read: under
/// Neo4j's read-committed isolation, two transactions could otherwise both read the old
/// version and the later commit would win whatever its version (a lost update).
///
/// Rows: `{id, v, seq, stream, t, p: {prop: value}}`. The group's properties are set only if
/// the row's version is not older than the stored one; `last_*` likewise. An equal version
/// is the same event again: it is rewritten, so a replay after a projection fix corrects
/// what the buggy projection wrote. It returns how many
/// rows it processed and how many nodes hold this version or a newer one afterwards: the
/// writer requires both to equal the number of rows (a write that did not land is an error).
///
/// ```
/// let q = engine::sink::cypher::node_upsert(projections::Group::TaskStatus);
/// assert!(q.contains("MERGE (n:Task {gen: $gen, id: row.id})"));
/// assert!(q.contains("n.status = row.p.status"));
/// ```
pub fn node_upsert(group: Group) -> String {
    format!("{NO_REPLAN}{}", node_body(group, "$rows", ""))
}

/// Keeps a cached plan when the graph's statistics move. Every write is a MERGE on a
/// unique `(gen, id)` constraint, whose plan does not depend on the statistics; replanning
/// as a store grows from empty re-planned the batch statement (seconds each) again and again
/// during a catch-up.
pub const NO_REPLAN: &str = "CYPHER replan=skip ";

/// [`node_upsert`] reading `rows` and naming its two result columns `rows{tag}` and
/// `confirmed{tag}`, so that many of them can share one statement.
fn node_body(group: Group, rows: &str, tag: &str) -> String {
    let label = group.label().as_str();
    let v = group.version_prop();
    let sets: Vec<String> = group
        .props()
        .iter()
        .map(|p| format!("n.{p} = row.p.{p}"))
        .collect();
    format!(
        "UNWIND {rows} AS row \
         MERGE (n:{label} {{gen: $gen, id: row.id}}) \
         SET n._lock = true \
         FOREACH (_ IN CASE WHEN n.{v} IS NULL OR n.{v} <= row.v THEN [1] ELSE [] END | \
           SET {sets}, n.{v} = row.v) \
         FOREACH (_ IN CASE WHEN n.last_v IS NULL OR n.last_v <= row.v THEN [1] ELSE [] END | \
           SET n.last_v = row.v, n.last_seq = row.seq, n.last_stream = row.stream, n.last_event_time_ms = row.t) \
         REMOVE n._lock \
         RETURN count(*) AS rows{tag}, sum(CASE WHEN n.{v} >= row.v THEN 1 ELSE 0 END) AS confirmed{tag}",
        sets = sets.join(", ")
    )
}

/// One UNWIND statement ensuring many relationships of one type (endpoints merged by id).
///
/// ```
/// let q = engine::sink::cypher::rel_upsert(projections::Rel::StoryTask);
/// assert!(q.contains("MERGE (a)-[r:HAS_TASK]->(b)"));
/// ```
pub fn rel_upsert(rel: Rel) -> String {
    format!("{NO_REPLAN}{}", rel_body(rel, "$rows", ""))
}

fn rel_body(rel: Rel, rows: &str, tag: &str) -> String {
    format!(
        "UNWIND {rows} AS row \
         MERGE (a:{from} {{gen: $gen, id: row.from}}) \
         MERGE (b:{to} {{gen: $gen, id: row.to}}) \
         MERGE (a)-[r:{ty}]->(b) \
         SET r._lock = true \
         FOREACH (_ IN CASE WHEN r.last_v IS NULL OR r.last_v <= row.v THEN [1] ELSE [] END | \
           SET r.last_v = row.v, r.last_seq = row.seq, r.last_stream = row.stream, r.last_event_time_ms = row.t) \
         REMOVE r._lock \
         RETURN count(*) AS rows{tag}, sum(CASE WHEN r.last_v >= row.v THEN 1 ELSE 0 END) AS confirmed{tag}",
        from = rel.from_label().as_str(),
        to = rel.to_label().as_str(),
        ty = rel.rel_type()
    )
}

/// Every graph write of a batch in one statement, so a batch costs one round trip whatever
/// it holds. Node groups come first (in [`Group::ALL`] order), then relationships (in
/// [`Rel::ALL`] order), then the story revisions; each reads its own rows from the one map
/// parameter `$batch` (keys `n_<Group>`, `r_<Rel>`, `stories`; empty lists for what the
/// batch lacks) and returns `rows_<name>` and `confirmed_<name>`. Neither the text nor the
/// parameter types ever change, so Neo4j plans it once per server: separate list
/// parameters, some empty, gave a new type signature and a 3 s re-plan per combination.
///
/// ```
/// let q = engine::sink::cypher::batch_upsert();
/// assert!(q.contains("UNWIND $batch.n_TaskStatus AS row"));
/// assert!(q.contains("confirmed_r_StoryTask"));
/// assert!(q.contains("rows_stories"));
/// ```
pub fn batch_upsert() -> &'static str {
    static Q: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Q.get_or_init(|| {
        let mut parts = Vec::new();
        let mut cols = Vec::new();
        for g in Group::ALL {
            let name = format!("n_{g:?}");
            parts.push(format!(
                "CALL {{ {} }}",
                node_body(*g, &format!("$batch.{name}"), &format!("_{name}"))
            ));
            cols.push(format!("rows_{name}, confirmed_{name}"));
        }
        for r in Rel::ALL {
            let name = format!("r_{r:?}");
            parts.push(format!(
                "CALL {{ {} }}",
                rel_body(*r, &format!("$batch.{name}"), &format!("_{name}"))
            ));
            cols.push(format!("rows_{name}, confirmed_{name}"));
        }
        parts.push(format!(
            "CALL {{ {} }}",
            STORY_REV_BUMP
                .replace("AS rows", "AS rows_stories")
                .replace("$ids", "$batch.stories")
        ));
        cols.push("rows_stories".into());
        format!("{NO_REPLAN}{} RETURN {}", parts.join(" "), cols.join(", "))
    })
}

/// Advances a checkpoint only from the position the writer read (optimistic concurrency):
/// if another writer moved it meanwhile, zero rows come back and the batch is rolled back.
pub const CHECKPOINT_ADVANCE: &str = "MERGE (c:Checkpoint {gen: $gen, id: $id}) \
     ON CREATE SET c.projector = $projector, c.stream = $stream, c.partition = $partition, c.seq = 0 \
     SET c._lock = true \
     WITH c WHERE c.seq = $expected \
     SET c.seq = $seq, c.ts_ns = CASE WHEN $ts_ns = 0 THEN null ELSE $ts_ns END REMOVE c._lock \
     RETURN c.seq AS seq";

pub const CHECKPOINT_READ: &str = "MATCH (c:Checkpoint {gen: $gen, id: $id}) RETURN c.seq AS seq";

/// The stream time of the message a checkpoint is at (null when unknown).
pub const CHECKPOINT_TS: &str = "MATCH (c:Checkpoint {gen: $gen, id: $id}) RETURN c.ts_ns AS ts_ns";

/// Parked events: the operator's view of the dead letters, and the per-story block list.
pub const PARK: &str = "UNWIND $rows AS row \
     MERGE (p:ParkedEvent {gen: $gen, id: row.id}) \
     SET p.projector = $projector, p.stream = row.stream, p.seq = row.seq, p.subject = row.subject, \
         p.story_id = row.story_id, p.reason = row.reason, p.kind = row.kind, \
         p.blocked_by = row.blocked_by, p.dlq_seq = row.dlq_seq, p.ts_ns = row.ts_ns \
     RETURN count(p) AS rows";

/// The transactional outbox: outbound events committed with the batch, published after it.
pub const OUTBOX_ADD: &str = "UNWIND $rows AS row \
     MERGE (o:Outbox {gen: $gen, id: row.id}) \
     SET o.projector = $projector, o.stream = row.stream, o.subject = row.subject, o.payload = row.payload \
     RETURN count(o) AS rows";

pub const OUTBOX_PENDING: &str =
    "MATCH (o:Outbox {gen: $gen, projector: $projector, stream: $stream}) \
     RETURN o.id AS id, o.subject AS subject, o.payload AS payload ORDER BY o.id";

pub const OUTBOX_DONE: &str = "MATCH (o:Outbox {gen: $gen}) WHERE o.id IN $ids DELETE o";

/// Moves the revision of every story a commit touched (the write lock serializes writers).
pub const STORY_REV_BUMP: &str = "UNWIND $ids AS id \
     MERGE (r:StoryRev {gen: $gen, id: id}) \
     SET r.rev = coalesce(r.rev, 0) + 1 \
     RETURN count(*) AS rows";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_statement_sets_all_its_props_and_its_version() {
        for g in Group::ALL {
            let q = node_upsert(*g);
            for p in g.props() {
                assert!(q.contains(&format!("n.{p} = row.p.{p}")), "{g}: {p}");
            }
            assert!(q.contains(&format!("n.{} = row.v", g.version_prop())));
            assert!(!q.contains("$label"), "labels are never parameters");
        }
    }

    #[test]
    fn every_label_has_a_gen_id_constraint() {
        let s = schema().join("\n");
        for l in Label::ALL {
            assert!(s.contains(&format!("FOR (n:{l}) REQUIRE (n.gen, n.id) IS UNIQUE")));
        }
    }
}
