//! Canonical state hashing: the same graph gives the same hash, byte for byte.
//!
//! Nodes of the projected labels are read in (label, id) order, relationships in
//! (type, from, to) order, properties sorted by name, `gen` left out (it names where the
//! state lives, not what it is). Checkpoints, parked records and story revisions are
//! bookkeeping and are not part of the state.

use engine::error::WriteError;
use engine::sink::graph::GraphSink;
use projections::Label;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A generation's graph summarized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphDigest {
    pub hash: String,
    pub nodes: u64,
    pub relationships: u64,
}

fn labels() -> Vec<String> {
    Label::ALL.iter().map(|l| l.as_str().to_string()).collect()
}

/// Calls `f(label, properties without gen)` for every projected node of `gen`, in
/// (label, id) order. A row that does not read back is an error, never an empty node.
async fn for_each_node(
    sink: &GraphSink,
    gen: &str,
    mut f: impl FnMut(&str, &Map<String, Value>),
) -> Result<(), WriteError> {
    sink.scan_nodes(gen, &labels(), |label, mut props| {
        props.remove("gen");
        f(&label, &props);
    })
    .await
}

/// Hashes the graph of generation `gen`.
pub async fn graph_digest(sink: &GraphSink, gen: &str) -> Result<GraphDigest, WriteError> {
    let mut h = Sha256::new();
    let mut nodes = 0u64;
    for_each_node(sink, gen, |label, props| {
        h.update(label.as_bytes());
        h.update(b"\x00");
        h.update(serde_json::to_vec(props).expect("JSON map serializes"));
        h.update(b"\n");
        nodes += 1;
    })
    .await?;
    let mut rels = 0u64;
    sink.scan_relationships(gen, &labels(), |cols, props| {
        for v in cols {
            h.update(v.as_bytes());
            h.update(b"\x00");
        }
        h.update(serde_json::to_vec(&props).expect("JSON map serializes"));
        h.update(b"\n");
        rels += 1;
    })
    .await?;
    Ok(GraphDigest {
        hash: hex::encode(h.finalize()),
        nodes,
        relationships: rels,
    })
}

/// Per label: number of nodes and a hash of them (for a readable difference summary).
pub async fn label_digests(
    sink: &GraphSink,
    gen: &str,
) -> Result<BTreeMap<String, (u64, String)>, WriteError> {
    let mut out: BTreeMap<String, (u64, Sha256)> = BTreeMap::new();
    for_each_node(sink, gen, |label, props| {
        let e = out
            .entry(label.to_string())
            .or_insert_with(|| (0, Sha256::new()));
        e.0 += 1;
        e.1.update(serde_json::to_vec(props).expect("JSON map serializes"));
    })
    .await?;
    Ok(out
        .into_iter()
        .map(|(k, (n, h))| (k, (n, hex::encode(h.finalize()))))
        .collect())
}

/// How many differing nodes of one label [`node_differences`] names.
pub const NAMED_PER_LABEL: usize = 5;

/// The node's key in a difference report: its `id`, else its properties (a node of a
/// label without ids).
fn node_key(props: &Map<String, Value>) -> String {
    match props.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => serde_json::to_string(props).expect("JSON map serializes"),
    }
}

async fn nodes_by_label(
    sink: &GraphSink,
    gen: &str,
) -> Result<BTreeMap<String, BTreeMap<String, Map<String, Value>>>, WriteError> {
    let mut out: BTreeMap<String, BTreeMap<String, Map<String, Value>>> = BTreeMap::new();
    for_each_node(sink, gen, |label, props| {
        out.entry(label.to_string())
            .or_default()
            .insert(node_key(props), props.clone());
    })
    .await?;
    Ok(out)
}

/// The nodes that differ between generations `a` and `b`, named: per label, the first
/// [`NAMED_PER_LABEL`] ids (in id order) found in one only or with other properties, each
/// with its differing properties (`name: A-value -> B-value`), then how many more there are.
/// Reads both graphs whole: meant for the differences of `verify --against-rebuild`.
pub async fn node_differences(
    sink: &GraphSink,
    a: &str,
    b: &str,
) -> Result<Vec<String>, WriteError> {
    let (na, nb) = (
        nodes_by_label(sink, a).await?,
        nodes_by_label(sink, b).await?,
    );
    let empty = BTreeMap::new();
    let labels: std::collections::BTreeSet<&String> = na.keys().chain(nb.keys()).collect();
    let mut out = Vec::new();
    for label in labels {
        let (la, lb) = (
            // A label absent from one generation has no nodes there.
            na.get(label).unwrap_or(&empty),
            // (the same for the other)
            nb.get(label).unwrap_or(&empty),
        );
        let ids: std::collections::BTreeSet<&String> = la.keys().chain(lb.keys()).collect();
        let mut differing = Vec::new();
        for id in ids {
            let line = match (la.get(id), lb.get(id)) {
                (Some(_), None) => format!("{label} {id}: only in {a}"),
                (None, Some(_)) => format!("{label} {id}: only in {b}"),
                (Some(x), Some(y)) if x != y => {
                    let names: std::collections::BTreeSet<&String> =
                        x.keys().chain(y.keys()).collect();
                    let show = |v: Option<&Value>| v.map_or("-".to_string(), Value::to_string);
                    let props: Vec<String> = names
                        .into_iter()
                        .filter(|n| x.get(*n) != y.get(*n))
                        .map(|n| format!("{n}: {} -> {}", show(x.get(n)), show(y.get(n))))
                        .collect();
                    format!("{label} {id}: {}", props.join("; "))
                }
                _ => continue,
            };
            differing.push(line);
        }
        let more = differing.len().saturating_sub(NAMED_PER_LABEL);
        out.extend(differing.into_iter().take(NAMED_PER_LABEL));
        if more > 0 {
            out.push(format!("{label}: and {more} more"));
        }
    }
    Ok(out)
}
