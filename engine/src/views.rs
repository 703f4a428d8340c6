//! Read views over a generation's graph, behind `projector query` and the HTTP API: their
//! row types, the Valkey-first story view and the diagrams. The statements live in
//! `sink/cypher.rs` with the rest of the Cypher and are re-exported here (`docs/views.md` has
//! the same statements, ready for Neo4j Browser).

use crate::error::WriteError;
use crate::sink::graph::GraphSink;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use crate::sink::cypher::{APPROVALS, DECISIONS, NEIGHBOURHOOD, STORIES, TASKS, TIMELINE};

/// One entry of [`TIMELINE`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    pub seq: Option<i64>,
    pub stream: Option<String>,
    pub subject: Option<String>,
    /// Event time, epoch milliseconds.
    pub event_time_ms: Option<i64>,
    pub summary: Option<String>,
}

/// One row of [`DECISIONS`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionRow {
    pub decision_id: String,
    pub story_id: Option<String>,
    pub task_id: Option<String>,
    pub title: Option<String>,
    pub rationale: Option<String>,
    pub decided_by: Option<String>,
    /// Epoch milliseconds.
    pub decided_at_ms: Option<i64>,
}

/// One row of [`STORIES`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoryRow {
    pub story_id: String,
    pub title: Option<String>,
    pub phase: Option<String>,
    /// The story's revision (as on the change feed).
    pub revision: i64,
    /// The story's newest event time, milliseconds since the epoch.
    pub last_event_time_ms: Option<i64>,
}

/// One row of [`TASKS`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskRow {
    pub task_id: String,
    pub story_id: Option<String>,
    pub title: Option<String>,
    pub role: Option<String>,
    pub status: Option<String>,
    pub agent_id: Option<String>,
}

/// One row of [`APPROVALS`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalRow {
    pub approval_id: String,
    pub story_id: Option<String>,
    pub plan_id: Option<String>,
    pub approved_by: Option<String>,
    /// Epoch milliseconds.
    pub approved_at_ms: Option<i64>,
}

/// Runs a list view and reads its rows as `T` (a row of another shape is an error, never
/// a silently different answer).
pub async fn rows<T: serde::de::DeserializeOwned>(
    graph: &GraphSink,
    statement: &'static str,
    gen: &str,
    params: Params,
) -> Result<Vec<T>, WriteError> {
    let v = run(graph, statement, gen, params)
        .await?
        // A list view always returns one row; none would mean an empty list.
        .unwrap_or(Value::Array(Vec::new()));
    serde_json::from_value(v).map_err(|e| WriteError::Neo4jRefused {
        code: "projector.ViewShape".into(),
        message: format!("a view row has an unexpected shape: {e}"),
    })
}

/// Which story view source answered.
pub enum Source {
    Cache,
    /// Neo4j, and why the cache did not answer.
    Neo4j(Fallback),
}

/// Why a story view was read from Neo4j rather than Valkey. Each one is counted in
/// `projector_view_cache_fallbacks_total{reason}`; the two faults are also logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Valkey did not answer (a fault: WARN).
    Unavailable,
    /// The cached entry is not a story context (a fault: WARN).
    Unreadable,
    /// The cached entry was rendered at an older revision than the graph holds.
    Stale,
    /// Nothing cached for the story (yet).
    Missing,
    /// The reader has no cache (the CLI without Valkey, which says so itself).
    NoCache,
}

impl Fallback {
    pub const ALL: [Fallback; 5] = [
        Fallback::Unavailable,
        Fallback::Unreadable,
        Fallback::Stale,
        Fallback::Missing,
        Fallback::NoCache,
    ];

    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Fallback::Unavailable => "unavailable",
            Fallback::Unreadable => "unreadable",
            Fallback::Stale => "stale",
            Fallback::Missing => "missing",
            Fallback::NoCache => "no_cache",
        }
    }

    /// Counts the fallback and, for a fault, logs it: at most once a minute per reason,
    /// since a broken Valkey would otherwise log once per read.
    fn emit(self, metrics: Option<&crate::metrics::Metrics>, story: &str, why: &str) {
        if let Some(m) = metrics {
            m.view_cache_fallbacks
                .with_label_values(&[self.reason()])
                .inc();
        }
        if !matches!(self, Fallback::Unavailable | Fallback::Unreadable) {
            tracing::debug!(story, reason = self.reason(), "story view read from Neo4j");
            return;
        }
        static LAST_WARN: std::sync::Mutex<[Option<std::time::Instant>; 2]> =
            std::sync::Mutex::new([None; 2]);
        let i = usize::from(self == Fallback::Unreadable);
        let mut last = LAST_WARN.lock().unwrap_or_else(|e| e.into_inner());
        if last[i].is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(60)) {
            return;
        }
        last[i] = Some(std::time::Instant::now());
        tracing::warn!(
            story,
            reason = self.reason(),
            error = why,
            "story view read from Neo4j instead of Valkey (logged at most once a minute; projector_view_cache_fallbacks_total counts every one)"
        );
    }
}

/// Reads a story's view: Valkey first if it carries the graph's newest version for the
/// story, else Neo4j (repopulating the cache). `Ok(None)`: no such story. Every read from
/// Neo4j is counted in `metrics` (when the caller has them) by its [`Fallback`] reason.
pub async fn story_view(
    graph: &GraphSink,
    cache: Option<&crate::sink::cache::CacheSink>,
    metrics: Option<&crate::metrics::Metrics>,
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
    let prefix = cache.map(|c| c.gen_prefix(gen, live));
    let fallback = match (cache, &prefix) {
        (Some(c), Some(prefix)) => match c.get_context(prefix, id).await {
            Err(e) => (Fallback::Unavailable, e.to_string()),
            Ok(None) => (Fallback::Missing, String::new()),
            Ok(Some((_, cached_rev))) if cached_rev != rev => (
                Fallback::Stale,
                format!("cached at revision {cached_rev}, graph at {rev}"),
            ),
            Ok(Some((bytes, _))) => {
                match serde_json::from_slice::<projections::context::StoryContext>(&bytes) {
                    Ok(mut cached) => {
                        cached.rev = rev;
                        return Ok(Some((cached, Source::Cache)));
                    }
                    Err(e) => (Fallback::Unreadable, format!("cached entry: {e}")),
                }
            }
        },
        _ => (Fallback::NoCache, String::new()),
    };
    fallback.0.emit(metrics, id, &fallback.1);
    let mut found = graph.story_contexts(gen, &[id.to_string()]).await?;
    let Some(ctx) = found.pop() else {
        return Ok(None);
    };
    if let (Some(c), Some(prefix)) = (cache, &prefix) {
        // A failed refresh only costs the next reader a graph read.
        if let Err(e) = c
            .put_contexts(gen, prefix, std::slice::from_ref(&ctx), false)
            .await
        {
            tracing::warn!(error = %e, "could not refresh the cached story view");
        }
    }
    Ok(Some((ctx, Source::Neo4j(fallback.0))))
}

/// Parameters of a view query, by name.
pub type Params = Vec<(&'static str, Value)>;

/// Runs a view statement and returns its single `view` column as JSON (`None`: no row).
pub async fn run(
    graph: &GraphSink,
    statement: &'static str,
    gen: &str,
    params: Params,
) -> Result<Option<Value>, WriteError> {
    graph.view(statement, gen, params).await
}

/// The nodes and edges of a neighbourhood, the story's own node first and always present.
/// Nodes are numbered in order of appearance, so two ids never share a node (a slug of the id
/// would merge `T-a-b` with `T-a_b`, or `T-日本` with `T-中文`).
struct Diagram<'a> {
    /// (label, id) of node `n{index}`.
    nodes: Vec<(&'a str, &'a str)>,
    /// (from node, relationship type, to node).
    edges: Vec<(usize, &'a str, usize)>,
}

impl<'a> Diagram<'a> {
    fn new(story: &'a str, v: &'a Value) -> Diagram<'a> {
        let mut d = Diagram {
            nodes: vec![("Story", story)],
            edges: Vec::new(),
        };
        for [from, fl, ty, to, tl] in edges(v) {
            let a = d.node(fl, from);
            let b = d.node(tl, to);
            if !d.edges.contains(&(a, ty, b)) {
                d.edges.push((a, ty, b));
            }
        }
        d
    }

    fn node(&mut self, label: &'a str, id: &'a str) -> usize {
        match self.nodes.iter().position(|n| *n == (label, id)) {
            Some(i) => i,
            None => {
                self.nodes.push((label, id));
                self.nodes.len() - 1
            }
        }
    }
}

/// A Mermaid label's text: Mermaid reads `#name;` / `#NNN;` as entity codes and renders
/// labels as HTML, so `"`, `#`, `&`, `<`, `>`, backticks and control characters are written
/// as decimal codes (`#34;`); everything else, unicode included, is literal.
pub fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '#' | '&' | '<' | '>' | '`' | '\\') || c.is_control() {
            out.push_str(&format!("#{};", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A DOT quoted string's text: `\` and `"` escaped (a lone trailing backslash would escape
/// the closing quote), newlines as `\n`, and `&` as `&amp;` (Graphviz reads `&name;` in a
/// label as an HTML entity, so `T-&amp;` would otherwise display as `T-&`).
pub fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '&' => out.push_str("&amp;"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The complete edges of a neighbourhood: (from id, from label, type, to id, to label).
fn edges(v: &Value) -> impl Iterator<Item = [&str; 5]> {
    v.as_array().into_iter().flatten().filter_map(|e| {
        let e: Vec<&str> = e
            .as_array()?
            .iter()
            // A null (OPTIONAL MATCH found no neighbour) is an incomplete edge, dropped below.
            .map(|x| x.as_str().unwrap_or(""))
            .collect();
        match e.as_slice() {
            [a, b, c, d, f] if !c.is_empty() && !d.is_empty() => Some([*a, *b, *c, *d, *f]),
            _ => None,
        }
    })
}

/// A relationship type as an edge label: the graph's types are `[A-Z_]+` constants, anything
/// else is shown escaped rather than trusted.
fn rel_label(ty: &str) -> String {
    if !ty.is_empty() && ty.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        ty.to_string()
    } else {
        format!("\"{}\"", mermaid_escape(ty))
    }
}

/// Renders story `story`'s neighbourhood edges as a Mermaid flowchart.
pub fn mermaid(story: &str, v: &Value) -> String {
    let d = Diagram::new(story, v);
    let mut out = String::from("graph LR\n");
    for (i, (label, id)) in d.nodes.iter().enumerate() {
        out.push_str(&format!(
            "  n{i}[\"{}: {}\"]\n",
            mermaid_escape(label),
            mermaid_escape(id)
        ));
    }
    for (a, ty, b) in &d.edges {
        out.push_str(&format!("  n{a} -- {} --> n{b}\n", rel_label(ty)));
    }
    out
}

/// Renders story `story`'s neighbourhood edges as Graphviz DOT.
pub fn dot(story: &str, v: &Value) -> String {
    let d = Diagram::new(story, v);
    let mut out = String::from("digraph story {\n  rankdir=LR;\n");
    for (i, (label, id)) in d.nodes.iter().enumerate() {
        out.push_str(&format!(
            "  n{i} [label=\"{}: {}\"];\n",
            dot_escape(label),
            dot_escape(id)
        ));
    }
    for (a, ty, b) in &d.edges {
        out.push_str(&format!("  n{a} -> n{b} [label=\"{}\"];\n", dot_escape(ty)));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fallback_has_its_own_reason() {
        let reasons: std::collections::BTreeSet<_> =
            Fallback::ALL.iter().map(|f| f.reason()).collect();
        assert_eq!(reasons.len(), Fallback::ALL.len());
    }

    /// The hostile ids of the diagram corpus (also rendered by Graphviz in tests/diagrams.rs).
    pub const HOSTILE: [&str; 14] = [
        "T-a-b",
        "T-a_b",
        "T-日本",
        "T-中文",
        "T-\"q\"",
        "T-\\",
        "T-\\\"",
        "T-<b>x</b>",
        "T-#35;",
        "T-&amp;",
        "T- sp ace",
        "T-{}[]|;",
        "T-`tick`",
        "T-new\nline",
    ];

    fn decode_mermaid(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('#') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let end = after.find(';').expect("an entity ends with ;");
            let n: u32 = after[..end].parse().expect("decimal entity");
            out.push(char::from_u32(n).unwrap());
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// A parser of the flowchart subset `mermaid` writes: every line a node `nI["label"]` or
    /// an edge `nI -- TYPE --> nJ`. Returns (node id -> decoded label, edges).
    type Parsed = (Vec<(String, String)>, Vec<(String, String, String)>);

    fn parse_mermaid(m: &str) -> Parsed {
        let mut lines = m.lines();
        assert_eq!(lines.next(), Some("graph LR"));
        let (mut nodes, mut edges) = (Vec::new(), Vec::new());
        for l in lines {
            let l = l.trim();
            if let Some((id, rest)) = l.split_once("[\"") {
                let label = rest.strip_suffix("\"]").expect(l);
                assert!(!label.contains('"'), "unescaped quote in {l}");
                assert!(id.starts_with('n') && id[1..].chars().all(|c| c.is_ascii_digit()));
                nodes.push((id.to_string(), decode_mermaid(label)));
            } else {
                let (a, rest) = l.split_once(" -- ").expect(l);
                let (ty, b) = rest.split_once(" --> ").expect(l);
                edges.push((a.to_string(), ty.to_string(), b.to_string()));
            }
        }
        (nodes, edges)
    }

    fn corpus() -> Value {
        let mut e: Vec<Value> = HOSTILE
            .iter()
            .map(|id| serde_json::json!(["US-\"1\\", "Story", "HAS_TASK", id, "Task"]))
            .collect();
        e.push(serde_json::json!(["US-\"1\\", "Story", null, null, null]));
        e.push(serde_json::json!([
            "T-a-b",
            "Task",
            "DECIDED_IN",
            "D-日本",
            "Decision"
        ]));
        Value::Array(e)
    }

    #[test]
    fn mermaid_ids_are_unique_and_labels_round_trip() {
        let m = mermaid("US-\"1\\", &corpus());
        let (nodes, edges) = parse_mermaid(&m);
        let mut ids: Vec<&String> = nodes.iter().map(|n| &n.0).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), nodes.len(), "{m}");
        assert_eq!(nodes.len(), HOSTILE.len() + 2, "{m}");
        assert_eq!(nodes[0].1, "Story: US-\"1\\");
        for id in HOSTILE {
            assert!(
                nodes.iter().any(|n| n.1 == format!("Task: {id}")),
                "{id:?} in {m}"
            );
        }
        assert!(nodes.iter().any(|n| n.1 == "Decision: D-日本"));
        assert_eq!(edges.len(), HOSTILE.len() + 1);
        for (a, _, b) in &edges {
            assert!(nodes.iter().any(|n| &n.0 == a) && nodes.iter().any(|n| &n.0 == b));
        }
    }

    #[test]
    fn a_story_without_neighbours_still_has_its_node() {
        let lonely = serde_json::json!([["US-9", "Story", null, null, null]]);
        let (nodes, edges) = parse_mermaid(&mermaid("US-9", &lonely));
        assert_eq!(nodes, vec![("n0".to_string(), "Story: US-9".to_string())]);
        assert!(edges.is_empty());
        assert!(dot("US-9", &lonely).contains("n0 [label=\"Story: US-9\"];"));
    }

    #[test]
    fn dot_escapes_quotes_and_backslashes() {
        assert_eq!(dot_escape("T-\\"), "T-\\\\");
        assert_eq!(dot_escape("a\"b"), "a\\\"b");
        let d = dot("US-1", &corpus());
        assert!(d.contains("[label=\"Task: T-\\\\\"];"), "{d}");
    }
}
