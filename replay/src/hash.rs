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
