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
    // Rulings and lifts belong to no generation (D59): every build of the streams reads them.
    out.push(
        "CREATE CONSTRAINT ruling_id IF NOT EXISTS FOR (n:Ruling) REQUIRE n.id IS UNIQUE".into(),
    );
    out.push(
        "CREATE CONSTRAINT block_lift_id IF NOT EXISTS FOR (n:BlockLift) REQUIRE n.id IS UNIQUE"
            .into(),
    );
    out.push(
        "CREATE CONSTRAINT block_fence_id IF NOT EXISTS FOR (n:BlockFence) REQUIRE n.id IS UNIQUE"
            .into(),
    );
    out.push("CREATE INDEX parked_story IF NOT EXISTS FOR (n:ParkedEvent) ON (n.gen, n.projector, n.story_id)".into());
    // The story view's "blocked by" reads a story's parked events of every projector.
    out.push(
        "CREATE INDEX parked_gen_story IF NOT EXISTS FOR (n:ParkedEvent) ON (n.gen, n.story_id)"
            .into(),
    );
    out
}

/// Keeps a cached plan when the graph's statistics move. Every write is a MERGE on a
/// unique `(gen, id)` constraint, whose plan does not depend on the statistics; replanning
/// as a store grows from empty re-planned the batch statement (seconds each) again and again
/// during a catch-up.
pub const NO_REPLAN: &str = "CYPHER replan=skip ";

/// [`NO_REPLAN`] in front of a statement literal, for the constants every commit runs: the
/// checkpoint move, the generation fence, parked records, the outbox, the story revisions
/// and the context read of the cache step. Without it Neo4j discarded their plans each time
/// a label's count moved past its divergence threshold (42 times in 70 s of load on a
/// graph growing from empty, `Discarded stale query` in its debug.log), and replanning the
/// context read stalled every worker's cache step for 190-300 ms at once. Each of them
/// starts from a unique `(gen, id)` lookup or a bound node, so no plan depends on the
/// statistics.
macro_rules! no_replan {
    ($($q:tt)+) => {
        concat!("CYPHER replan=skip ", $($q)+)
    };
}

/// [`STORY_REV_BUMP`] without the hint: a subquery of [`batch_upsert`] takes no prefix.
macro_rules! story_rev_bump {
    () => {
        "UNWIND $ids AS id \
         MERGE (r:StoryRev {gen: $gen, id: id}) \
         SET r.rev = coalesce(r.rev, 0) + 1 \
         RETURN count(*) AS rows"
    };
}

/// One UNWIND over `rows` writing one property group for many nodes, a subquery of
/// [`batch_upsert`].
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
/// Its two result columns are named `rows{tag}` and `confirmed{tag}`, so that many of them
/// can share one statement.
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

/// One UNWIND over `rows` ensuring many relationships of one type (endpoints merged by
/// id), a subquery of [`batch_upsert`].
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
            story_rev_bump!()
                .replace("AS rows", "AS rows_stories")
                .replace("$ids", "$batch.stories")
        ));
        cols.push("rows_stories".into());
        format!("{NO_REPLAN}{} RETURN {}", parts.join(" "), cols.join(", "))
    })
}

// ---- Checkpoints and lost ranges (sink/graph/checkpoints.rs, commit.rs) ----

/// Advances every checkpoint of a commit (`$moves`: rows `{id, projector, stream, partition,
/// expected, seq, ts_ns, back}`, sorted by id so writers lock them in one order), each only
/// from the position its writer read (optimistic concurrency: `c.seq = expected`) and never
/// to a lower sequence unless the move says so (`back`: `run --accept-stream-reset` reading a
/// recreated stream from its start); a commit after a partly applied one must not move a
/// checkpoint behind events it already wrote. Returns the id of each checkpoint it
/// advanced; the writer rolls back if one is missing (moved by another writer, or a move
/// backwards that was not asked for).
pub const CHECKPOINTS_ADVANCE: &str = no_replan!("UNWIND $moves AS m \
     MERGE (c:Checkpoint {gen: $gen, id: m.id}) \
     ON CREATE SET c.projector = m.projector, c.stream = m.stream, c.partition = m.partition, c.seq = 0 \
     SET c._lock = true \
     WITH c, m WHERE c.seq = m.expected AND (m.seq >= c.seq OR m.back) \
     SET c.seq = m.seq, c.ts_ns = CASE WHEN m.ts_ns = 0 THEN null ELSE m.ts_ns END REMOVE c._lock \
     RETURN c.id AS id");

/// A checkpoint's sequence (no row: none stored).
pub const CHECKPOINT_READ: &str = "MATCH (c:Checkpoint {gen: $gen, id: $id}) RETURN c.seq AS seq";

/// The stream time of the message a checkpoint is at (null when unknown).
pub const CHECKPOINT_TS: &str = "MATCH (c:Checkpoint {gen: $gen, id: $id}) RETURN c.ts_ns AS ts_ns";

/// Every partition's checkpoint of one projector and stream: `p`, `seq`.
pub const CHECKPOINTS_OF: &str = "MATCH (c:Checkpoint {gen: $gen}) \
     WHERE c.projector = $projector AND c.stream = $stream \
     RETURN c.partition AS p, c.seq AS seq";

/// Creates a checkpoint at `$seq` unless it exists (a new partition layout).
pub const CHECKPOINT_CREATE: &str = "MERGE (c:Checkpoint {gen: $gen, id: $id}) \
     ON CREATE SET c.projector = $projector, c.stream = $stream, \
     c.partition = $partition, c.seq = $seq";

/// Removes one checkpoint.
pub const CHECKPOINT_DELETE: &str = "MATCH (c:Checkpoint {gen: $gen, id: $id}) DELETE c";

/// Records a hole found after a checkpoint (idempotent per range).
pub const LOST_RANGE_RECORD: &str = "MERGE (l:LostRange {gen: $gen, id: $id}) \
     SET l.projector = $projector, l.stream = $stream, l.partition = $partition, \
         l.from_seq = $from, l.to_seq = $to, l.halted = $halted, l.checkpoint = $checkpoint";

/// A generation's lost ranges: `p`, `s`, `f`, `t`, `h` (projector, stream, from, to, halted).
pub const LOST_RANGES: &str = "MATCH (l:LostRange {gen: $gen}) \
     RETURN l.projector AS p, l.stream AS s, l.from_seq AS f, l.to_seq AS t, l.halted AS h \
     ORDER BY s, f";

// ---- Parked events (sink/graph/parked.rs) ----

/// Parked events: the operator's view of the dead letters, and the per-story block list.
/// A row Neo4j refused (`row.refused`) also records its [`Ruling`](RULINGS), for every
/// generation: a rebuild parks it too (D59).
pub const PARK: &str = no_replan!("UNWIND $rows AS row \
     MERGE (p:ParkedEvent {gen: $gen, id: row.id}) \
     SET p.projector = $projector, p.stream = row.stream, p.seq = row.seq, p.subject = row.subject, \
         p.story_id = row.story_id, p.reason = row.reason, p.kind = row.kind, \
         p.blocked_by = row.blocked_by, p.dlq_seq = row.dlq_seq, p.ts_ns = row.ts_ns \
     FOREACH (_ IN CASE WHEN row.refused THEN [1] ELSE [] END | \
         MERGE (r:Ruling {id: row.id}) \
         ON CREATE SET r.projector = $projector, r.stream = row.stream, r.seq = row.seq, \
             r.refused_reason = row.reason, r.refused_ms = timestamp() \
         SET r.refused = true) \
     RETURN count(p) AS rows");

/// The fence of parked-behind rows (`$rows`: `{id, fence, stream, story_id, seq,
/// blocked_seq}`): takes the write lock of each (projector, stream, story)'s fence node, the
/// one an operator's decision takes first, then returns the ids of rows that a recorded lift
/// covers (lifted after their blocker, before them): the worker routes them again.
pub const BLOCK_FENCE: &str = "UNWIND $rows AS row \
     MERGE (f:BlockFence {id: row.fence}) SET f._lock = true REMOVE f._lock \
     WITH row WHERE EXISTS { \
         MATCH (l:BlockLift {projector: $projector, stream: row.stream, story: row.story_id}) \
         WHERE l.at >= row.blocked_seq AND l.at < row.seq } \
     RETURN row.id AS id";

/// Records an operator's decision (`$decision`: discard or retry) about parked events
/// (`$rows`: `{id, stream, seq}`), with who and when (`rows`: how many).
pub const RULINGS_DECIDE: &str = "UNWIND $rows AS row \
     MERGE (r:Ruling {id: row.id}) \
     ON CREATE SET r.projector = $projector, r.stream = row.stream, r.seq = row.seq, r.refused = false \
     SET r.decision = $decision, r.by = $by, r.at_ms = timestamp() \
     RETURN count(r) AS rows";

/// Every ruling of `$projector`: `stream`, `seq`, `refused`, `decision`, `by`, `at_ms`
/// (`decision`, `by` and `at_ms` null for a refusal nobody decided on yet).
pub const RULINGS: &str = "MATCH (r:Ruling) WHERE r.projector = $projector \
     RETURN r.stream AS stream, r.seq AS seq, coalesce(r.refused, false) AS refused, \
            r.decision AS decision, r.by AS by, r.at_ms AS at_ms";

/// Locks the fences of (stream, story) pairs (`$keys`: `{fence}`) before an operator's
/// decision writes, so that a worker parking behind one of them waits for the decision.
pub const BLOCK_FENCE_LOCK: &str = "UNWIND $keys AS k \
     MERGE (f:BlockFence {id: k.fence}) SET f._lock = true REMOVE f._lock \
     RETURN count(f) AS rows";

/// After an operator's decision: lifts the block of each (stream, story) of `$keys`
/// (`{fence, stream, story, at}`) that has no parked record left in `$gen`, at stream
/// position `at` (the stream's end before the decision). Returns the lifts recorded.
pub const BLOCK_LIFT: &str = "UNWIND $keys AS k \
     WITH k WHERE NOT EXISTS { \
         MATCH (p:ParkedEvent {gen: $gen, projector: $projector, story_id: k.story}) \
         WHERE p.stream = k.stream } \
     MERGE (l:BlockLift {id: k.fence + ':' + toString(k.at)}) \
     ON CREATE SET l.projector = $projector, l.stream = k.stream, l.story = k.story, \
         l.at = k.at, l.by = $by, l.at_ms = timestamp() \
     RETURN l.stream AS stream, l.story AS story, l.at AS at";

/// Every lift of `$projector`: `stream`, `story`, `at`.
pub const BLOCK_LIFTS: &str = "MATCH (l:BlockLift) WHERE l.projector = $projector \
     RETURN l.stream AS stream, l.story AS story, l.at AS at";

/// Parked records of one projector (`$projector` null: all), in stream order.
pub const PARKED: &str = "MATCH (p:ParkedEvent {gen: $gen}) \
     WHERE $projector IS NULL OR p.projector = $projector \
     RETURN p.id AS id, p.projector AS projector, p.stream AS stream, p.seq AS seq, \
            p.subject AS subject, p.story_id AS story_id, p.kind AS kind, p.reason AS reason, \
            p.blocked_by AS blocked_by, p.dlq_seq AS dlq_seq, p.ts_ns AS ts_ns \
     ORDER BY p.projector, p.stream, p.seq";

/// Removes parked records of one projector after their retry (`rows`: how many).
pub const PARKED_REMOVE: &str = "UNWIND $ids AS id \
     MATCH (p:ParkedEvent {gen: $gen, id: id}) WHERE p.projector = $projector \
     DELETE p RETURN count(*) AS rows";

/// The parked backlog of a generation: `projector`, `stream`, `kind`, `n`.
pub const PARKED_COUNTS: &str = "MATCH (p:ParkedEvent {gen: $gen}) \
     RETURN p.projector AS projector, p.stream AS stream, p.kind AS kind, count(*) AS n \
     ORDER BY projector, stream, kind";

/// How many stories have parked records in a generation: `n`.
pub const BLOCKED_STORY_COUNT: &str = "MATCH (p:ParkedEvent {gen: $gen}) \
     WHERE p.story_id IS NOT NULL RETURN count(DISTINCT p.story_id) AS n";

/// Per (story, stream) with parked records for `$projector`: the first of them by sequence
/// (`first`) and the event it was parked behind (`by`, null if it parked for itself).
pub const BLOCKED_STORIES: &str = "MATCH (p:ParkedEvent {gen: $gen, projector: $projector}) \
     WHERE p.story_id IS NOT NULL \
     WITH p ORDER BY p.seq \
     WITH p.story_id AS story, p.stream AS stream, collect(p)[0] AS f \
     RETURN story, stream, f.id AS first, f.blocked_by AS by";

// ---- The outbox (sink/graph/outbox.rs) ----

/// The transactional outbox: outbound events committed with the batch, published after it.
/// Each row names the stream whose event produced it (the outbox is drained per stream).
pub const OUTBOX_ADD: &str = no_replan!("UNWIND $rows AS row \
     MERGE (o:Outbox {gen: $gen, id: row.id}) \
     SET o.projector = $projector, o.stream = row.stream, o.subject = row.subject, o.payload = row.payload \
     RETURN count(o) AS rows");

/// Outbox entries of one projector and stream not yet confirmed as published.
pub const OUTBOX_PENDING: &str =
    "MATCH (o:Outbox {gen: $gen, projector: $projector, stream: $stream}) \
     RETURN o.id AS id, o.subject AS subject, o.payload AS payload ORDER BY o.id";

/// Removes outbox entries whose publish is confirmed.
pub const OUTBOX_DONE: &str =
    no_replan!("MATCH (o:Outbox {gen: $gen}) WHERE o.id IN $ids DELETE o");

// ---- Stories (sink/graph/stories.rs, batch.rs) ----

/// Moves the revision of every story a commit touched (the write lock serializes writers).
pub const STORY_REV_BUMP: &str = no_replan!(story_rev_bump!());

/// A story's revision (0 before any), no row if the story does not exist.
pub const STORY_REV: &str = "MATCH (s:Story {gen: $gen, id: $id}) \
     OPTIONAL MATCH (r:StoryRev {gen: $gen, id: $id}) \
     RETURN coalesce(r.rev, 0) AS rev";

/// A story's newest version key, no row if the story does not exist.
pub const STORY_VERSION: &str =
    "MATCH (s:Story {gen: $gen, id: $id}) RETURN coalesce(s.last_v, '') AS v";

/// Every story id of a generation, sorted.
pub const STORY_IDS: &str = "MATCH (s:Story {gen: $gen}) RETURN s.id AS id ORDER BY id";

/// The story view as stored in Valkey, read in one query per batch of stories. `blocked`:
/// the story's first parked event (stream time, stream, sequence) and how many are parked
/// behind it; null while none is.
pub const STORY_CONTEXT: &str = no_replan!("UNWIND $ids AS sid \
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
    CALL (s) { OPTIONAL MATCH (p:ParkedEvent {gen: $gen, story_id: s.id}) WITH p ORDER BY p.ts_ns, p.stream, p.seq \
      RETURN [x IN collect(p) | {by: x.id, kind: x.kind, reason: x.reason}] AS parked } \
    OPTIONAL MATCH (r:StoryRev {gen: $gen, id: s.id}) \
    RETURN {story_id: s.id, title: s.title, description: s.description, phase: s.phase, created_by: s.created_by, \
      phase_history: phases, plans: plans, tasks: tasks, decisions: decisions, milestones: milestones, \
      last_v: coalesce(s.last_v, ''), \
      blocked: CASE WHEN size(parked) = 0 THEN null \
        ELSE {by: parked[0].by, kind: parked[0].kind, reason: parked[0].reason, behind: size(parked) - 1} END} AS ctx, \
      coalesce(r.rev, 0) AS rev, coalesce(s.last_event_time_ms, 0) AS t");

// ---- Generations (sink/graph/generations.rs) ----

/// The live generation's `name`: the pointer `$pointer`'s, or `$default` without one
/// (always one row).
pub const LIVE_GENERATION: &str = no_replan!(
    "OPTIONAL MATCH (p:GenerationPointer {id: $pointer}) \
     RETURN coalesce(p.name, $default) AS name"
);

/// Creates the pointer `$pointer` at `$default` unless it exists.
pub const POINTER_REGISTER: &str =
    "MERGE (p:GenerationPointer {id: $pointer}) ON CREATE SET p.name = $default";

/// Points `$pointer` at `$name` only if `$name`'s checkpoints `$ids` are at or past the
/// live generation's: `behind` (0: switched), `previous`.
pub const PROMOTE: &str = "MERGE (p:GenerationPointer {id: $pointer}) ON CREATE SET p.name = $default \
     SET p._lock = true \
     WITH p \
     UNWIND $ids AS cid \
     OPTIONAL MATCH (old:Checkpoint {gen: p.name, id: cid}) \
     OPTIONAL MATCH (new:Checkpoint {gen: $name, id: cid}) \
     WITH p, sum(CASE WHEN coalesce(new.seq, 0) >= coalesce(old.seq, 0) THEN 0 ELSE 1 END) AS behind, \
          collect(DISTINCT p.name)[0] AS previous \
     FOREACH (_ IN CASE WHEN behind = 0 THEN [1] ELSE [] END | SET p.name = $name, p.previous = previous) \
     REMOVE p._lock \
     RETURN behind, previous";

/// Every generation holding a node: `gen`, `nodes`, `stories` (scans every node).
pub const GENERATION_SIZES: &str = "MATCH (n) WHERE n.gen IS NOT NULL \
     RETURN n.gen AS gen, count(n) AS nodes, sum(CASE WHEN n:Story THEN 1 ELSE 0 END) AS stories \
     ORDER BY gen";

/// Every deployment's pointer: `id`, `name`.
pub const POINTERS: &str = "MATCH (p:GenerationPointer) RETURN p.id AS id, p.name AS name";

/// Every generation marker: `gen`, `created` (epoch ms), `state`, `projection_version`,
/// `binary_version` (any but `gen` may be null).
pub const GENERATION_MARKERS: &str = "MATCH (g:Generation) RETURN g.gen AS gen, \
     g.created_ms AS created, g.state AS state, \
     g.projection_version AS projection_version, g.binary_version AS binary_version";

/// Marks generation `$gen` (created time and the projection `$pv` and binary `$bv` versions
/// that write it, once; `$state` when not null).
pub const GENERATION_MARK: &str = "MERGE (g:Generation {gen: $gen, id: $gen}) \
     ON CREATE SET g.created_ms = timestamp(), g.projection_version = $pv, g.binary_version = $bv \
     FOREACH (_ IN CASE WHEN $state IS NULL THEN [] ELSE [1] END | SET g.state = $state)";

/// Removes `$gen`'s marker when nothing else carries its `gen`.
pub const GENERATION_UNMARK_IF_EMPTY: &str = "MATCH (g:Generation {gen: $gen}) \
     WHERE NOT EXISTS { MATCH (n) WHERE n.gen = $gen AND NOT n:Generation } \
     DELETE g";

/// One row if any node carries `$gen`.
pub const GENERATION_ANY_NODE: &str = "MATCH (n) WHERE n.gen = $gen RETURN 1 AS one LIMIT 1";

/// Deletes up to 5,000 nodes of `label` (a code-defined label, never event data) in
/// generation `$gen`: `n`, how many.
pub fn generation_delete_batch(label: &str) -> String {
    format!(
        "MATCH (n:{label} {{gen: $gen}}) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*) AS n"
    )
}

// ---- Reads of other modules (sink/graph/reads.rs, mod.rs) ----

/// A trivial round trip (readiness, bounded waits).
pub const PING: &str = "RETURN 1 AS one";

/// Every projected node of `$gen` (first label in `$labels`) in (label, id) order:
/// `label`, `id`, `props` (the canonical hash).
pub const SCAN_NODES: &str = "MATCH (n) WHERE n.gen = $gen AND labels(n)[0] IN $labels \
     RETURN labels(n)[0] AS label, n.id AS id, properties(n) AS props \
     ORDER BY label, id";

/// Every relationship leaving a projected node of `$gen`, in (type, from, to) order.
pub const SCAN_RELATIONSHIPS: &str =
    "MATCH (a)-[r]->(b) WHERE a.gen = $gen AND labels(a)[0] IN $labels \
     RETURN type(r) AS type, labels(a)[0] AS fl, a.id AS f, labels(b)[0] AS tl, b.id AS t, \
            properties(r) AS props \
     ORDER BY type, fl, f, tl, t";

// ---- Read views (crate::views, docs/views.md) ----

/// Every projected change of a story, in stream order (stream time, then stream, then sequence).
pub const TIMELINE: &str = "MATCH (s:Story {gen: $gen, id: $id})-[:HAS_EVENT]->(e:StoryEvent) \
    WITH e ORDER BY e.last_v \
    RETURN collect({seq: e.seq, stream: e.stream, subject: e.subject, event_time_ms: e.event_time_ms, summary: e.summary}) AS view";

/// Decisions, optionally of one story and since a time (epoch ms), newest first.
pub const DECISIONS: &str = "MATCH (d:Decision {gen: $gen}) \
    WHERE ($story IS NULL OR d.story_id = $story) AND ($since IS NULL OR d.decided_at_ms >= $since) \
    WITH d ORDER BY d.decided_at_ms DESC, d.id SKIP $offset LIMIT $limit \
    RETURN collect({decision_id: d.id, story_id: d.story_id, task_id: d.task_id, title: d.title, rationale: d.rationale, decided_by: d.decided_by, decided_at_ms: d.decided_at_ms}) AS view";

/// Tasks, optionally by status and role, by story then task id.
pub const TASKS: &str = "MATCH (t:Task {gen: $gen}) \
    WHERE ($status IS NULL OR t.status = $status) AND ($role IS NULL OR t.role = $role) \
    WITH t ORDER BY t.story_id, t.id SKIP $offset LIMIT $limit \
    RETURN collect({task_id: t.id, story_id: t.story_id, title: t.title, role: t.role, status: t.status, agent_id: t.agent_id}) AS view";

/// Stories by id, a page at a time, with their phase, revision and newest event time.
pub const STORIES: &str = "MATCH (s:Story {gen: $gen}) \
    WITH s ORDER BY s.id SKIP $offset LIMIT $limit \
    OPTIONAL MATCH (r:StoryRev {gen: $gen, id: s.id}) \
    RETURN collect({story_id: s.id, title: s.title, phase: s.phase, revision: coalesce(r.rev, 0), last_event_time_ms: s.last_event_time_ms}) AS view";

/// Plan approvals, optionally of one story, newest first.
pub const APPROVALS: &str = "MATCH (a:PlanApproval {gen: $gen}) \
    WHERE $story IS NULL OR a.story_id = $story \
    WITH a ORDER BY a.approved_at_ms DESC, a.id SKIP $offset LIMIT $limit \
    RETURN collect({approval_id: a.id, story_id: a.story_id, plan_id: a.plan_id, approved_by: a.approved_by, approved_at_ms: a.approved_at_ms}) AS view";

/// A story's neighbourhood as edges (for Mermaid and DOT).
pub const NEIGHBOURHOOD: &str = "MATCH (s:Story {gen: $gen, id: $id}) \
    OPTIONAL MATCH (s)-[r]->(n) WHERE NOT n:StoryEvent AND NOT n:PhaseChange \
    OPTIONAL MATCH (n)-[r2]->(m) WHERE m.gen = $gen AND NOT m:Story AND NOT m:StoryEvent \
    RETURN collect(DISTINCT [s.id, 'Story', type(r), n.id, labels(n)[0]]) + collect(DISTINCT [n.id, labels(n)[0], type(r2), m.id, labels(m)[0]]) AS view";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_statement_sets_all_its_props_and_its_version() {
        let q = batch_upsert();
        for g in Group::ALL {
            assert!(q.contains(&format!("UNWIND $batch.n_{g:?} AS row")), "{g}");
            for p in g.props() {
                assert!(q.contains(&format!("n.{p} = row.p.{p}")), "{g}: {p}");
            }
            assert!(q.contains(&format!("n.{} = row.v", g.version_prop())));
            assert!(!q.contains("$label"), "labels are never parameters");
        }
    }

    /// Every statement a commit runs keeps its cached plan (D77): on 153fc50 none of the
    /// constants had the hint, and Neo4j replanned them as the graph grew.
    #[test]
    fn every_statement_of_a_commit_skips_replanning() {
        let mut commit: Vec<(String, String)> = [
            ("CHECKPOINTS_ADVANCE", CHECKPOINTS_ADVANCE),
            ("LIVE_GENERATION", LIVE_GENERATION),
            ("PARK", PARK),
            ("OUTBOX_ADD", OUTBOX_ADD),
            ("OUTBOX_DONE", OUTBOX_DONE),
            ("STORY_REV_BUMP", STORY_REV_BUMP),
            ("STORY_CONTEXT", STORY_CONTEXT),
        ]
        .iter()
        .map(|(n, q)| (n.to_string(), q.to_string()))
        .collect();
        commit.push(("batch_upsert".into(), batch_upsert().into()));
        for (name, q) in commit {
            assert!(q.starts_with(NO_REPLAN), "{name} may be replanned: {q}");
            // Once: the batch statement's subqueries take no hint of their own.
            assert_eq!(q.matches("CYPHER").count(), 1, "{name}: {q}");
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
