//! Read views over a generation's graph: the Cypher behind `projector query` and the HTTP
//! API (`docs/views.md` has the same statements, ready for Neo4j Browser).

use crate::error::WriteError;
use crate::sink::graph::GraphSink;
use neo4rs::query;
use serde_json::Value;

/// Every projected change of a story, in stream order (stream time, then stream, then sequence).
pub const TIMELINE: &str = "MATCH (s:Story {gen: $gen, id: $id})-[:HAS_EVENT]->(e:StoryEvent) \
    WITH e ORDER BY e.last_v \
    RETURN collect({seq: e.seq, stream: e.stream, subject: e.subject, event_time_ms: e.event_time_ms, summary: e.summary}) AS view";

/// Decisions, optionally of one story and since a time (epoch ms), newest first.
pub const DECISIONS: &str = "MATCH (d:Decision {gen: $gen}) \
    WHERE ($story IS NULL OR d.story_id = $story) AND ($since IS NULL OR d.decided_at_ms >= $since) \
    WITH d ORDER BY d.decided_at_ms DESC, d.id LIMIT $limit \
    RETURN collect({decision_id: d.id, story_id: d.story_id, task_id: d.task_id, title: d.title, rationale: d.rationale, decided_by: d.decided_by, decided_at_ms: d.decided_at_ms}) AS view";

/// Tasks, optionally by status and role.
pub const TASKS: &str = "MATCH (t:Task {gen: $gen}) \
    WHERE ($status IS NULL OR t.status = $status) AND ($role IS NULL OR t.role = $role) \
    WITH t ORDER BY t.story_id, t.id LIMIT $limit \
    RETURN collect({task_id: t.id, story_id: t.story_id, title: t.title, role: t.role, status: t.status, agent_id: t.agent_id}) AS view";

/// Plan approvals, optionally of one story, newest first.
pub const APPROVALS: &str = "MATCH (a:PlanApproval {gen: $gen}) \
    WHERE $story IS NULL OR a.story_id = $story \
    WITH a ORDER BY a.approved_at_ms DESC, a.id LIMIT $limit \
    RETURN collect({approval_id: a.id, story_id: a.story_id, plan_id: a.plan_id, approved_by: a.approved_by, approved_at_ms: a.approved_at_ms}) AS view";

/// A story's neighbourhood as edges (for Mermaid and DOT).
pub const NEIGHBOURHOOD: &str = "MATCH (s:Story {gen: $gen, id: $id}) \
    OPTIONAL MATCH (s)-[r]->(n) WHERE NOT n:StoryEvent AND NOT n:PhaseChange \
    OPTIONAL MATCH (n)-[r2]->(m) WHERE m.gen = $gen AND NOT m:Story AND NOT m:StoryEvent \
    RETURN collect(DISTINCT [s.id, 'Story', type(r), n.id, labels(n)[0]]) + collect(DISTINCT [n.id, labels(n)[0], type(r2), m.id, labels(m)[0]]) AS view";

/// Which story view source answered.
pub enum Source {
    Cache,
    Neo4j,
}

/// Reads a story's view: Valkey first if it carries the graph's newest version for the
/// story, else Neo4j (repopulating the cache). `Ok(None)`: no such story.
pub async fn story_view(
    graph: &GraphSink,
    cache: Option<&crate::sink::cache::CacheSink>,
    gen: &str,
    live: bool,
    id: &str,
) -> Result<Option<(projections::context::StoryContext, Source)>, WriteError> {
    // Staleness is ruled out by revision: every commit that touches the story moves its
    // `StoryRev` in the same transaction, and the cached entry is served only if it was
    // rendered at the revision the graph has now (one indexed lookup).
    let Some(rev) = graph.story_rev(gen, id).await? else {
        return Ok(None);
    };
    let prefix = cache.map(|c| c.gen_prefix(gen, live)).unwrap_or_default();
    if let Some(c) = cache {
        if let Ok(Some((bytes, cached_rev))) = c.get_context(&prefix, id).await {
            if cached_rev == rev {
                if let Ok(mut cached) =
                    serde_json::from_slice::<projections::context::StoryContext>(&bytes)
                {
                    cached.rev = rev;
                    return Ok(Some((cached, Source::Cache)));
                }
            }
        }
    }
    let mut found = graph.story_contexts(gen, &[id.to_string()]).await?;
    let Some(ctx) = found.pop() else {
        return Ok(None);
    };
    if let Some(c) = cache {
        // A failed refresh only costs the next reader a graph read.
        if let Err(e) = c
            .put_contexts(&prefix, std::slice::from_ref(&ctx), false)
            .await
        {
            tracing::warn!(error = %e, "could not refresh the cached story view");
        }
    }
    Ok(Some((ctx, Source::Neo4j)))
}

/// Parameters of a view query, by name.
pub type Params = Vec<(&'static str, Value)>;

/// Runs a view statement and returns its single `view` column as JSON (`None`: no row).
pub async fn run(
    graph: &GraphSink,
    statement: &str,
    gen: &str,
    params: Params,
) -> Result<Option<Value>, WriteError> {
    let err = |e| WriteError::from_neo4j(graph.uri(), e);
    let mut q = query(statement).param("gen", gen);
    for (k, v) in params {
        q = match v {
            Value::Null => q.param(k, neo4rs::BoltType::Null(neo4rs::BoltNull)),
            Value::String(s) => q.param(k, s),
            Value::Number(n) => q.param(k, n.as_i64().unwrap_or(0)),
            other => q.param(k, other.to_string()),
        };
    }
    let mut rows = graph.graph().execute(q).await.map_err(err)?;
    match rows.next().await.map_err(err)? {
        Some(row) => Ok(Some(row.get::<Value>("view").map_err(|e| {
            WriteError::Neo4jRefused {
                code: "projector.ViewShape".into(),
                message: e.to_string(),
            }
        })?)),
        None => Ok(None),
    }
}

fn node_id(label: &str, id: &str) -> String {
    let clean: String = format!("{label}_{id}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    clean
}

fn escape(s: &str) -> String {
    s.replace('"', "'")
}

/// The complete edges of a neighbourhood: (from id, from label, type, to id, to label).
fn edges(v: &Value) -> impl Iterator<Item = [&str; 5]> {
    v.as_array().into_iter().flatten().filter_map(|e| {
        let e: Vec<&str> = e
            .as_array()?
            .iter()
            .map(|x| x.as_str().unwrap_or(""))
            .collect();
        match e.as_slice() {
            [a, b, c, d, f] if !c.is_empty() && !d.is_empty() => Some([*a, *b, *c, *d, *f]),
            _ => None,
        }
    })
}

/// Renders neighbourhood edges as a Mermaid flowchart.
pub fn mermaid(v: &Value) -> String {
    let mut out = String::from("graph LR\n");
    for [from, fl, ty, to, tl] in edges(v) {
        out.push_str(&format!(
            "  {}[\"{fl}: {}\"] -- {ty} --> {}[\"{tl}: {}\"]\n",
            node_id(fl, from),
            escape(from),
            node_id(tl, to),
            escape(to)
        ));
    }
    out
}

/// Renders neighbourhood edges as Graphviz DOT.
pub fn dot(v: &Value) -> String {
    let mut out = String::from("digraph story {\n  rankdir=LR;\n");
    for [from, fl, ty, to, tl] in edges(v) {
        out.push_str(&format!(
            "  \"{fl}: {}\" -> \"{tl}: {}\" [label=\"{ty}\"];\n",
            escape(from),
            escape(to)
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagrams_escape_and_skip_empty_edges() {
        let edges = serde_json::json!([
            ["US-1", "Story", "HAS_TASK", "T-\"1", "Task"],
            ["US-1", "Story", null, null, null]
        ]);
        let m = mermaid(&edges);
        assert!(
            m.contains("Story_US_1[\"Story: US-1\"] -- HAS_TASK --> Task_T__1[\"Task: T-'1\"]"),
            "{m}"
        );
        assert_eq!(m.lines().count(), 2);
        assert!(dot(&edges).contains("\"Story: US-1\" -> \"Task: T-'1\" [label=\"HAS_TASK\"]"));
    }
}
