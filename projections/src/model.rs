//! An in-memory model of the graph writes, with the same semantics as the engine's Cypher.
//!
//! It is the executable specification the property tests check convergence against, and the
//! shape the engine's state hash is computed over (label, id, sorted properties).

use crate::ops::{GraphOp, NodeWrite, Prop, RelWrite};
use std::collections::BTreeMap;

/// Properties of one node or relationship, sorted by name.
pub type Props = BTreeMap<String, Prop>;

/// A whole graph: nodes keyed by (label, id), relationships by (type, from, to).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphModel {
    pub nodes: BTreeMap<(String, String), Props>,
    pub rels: BTreeMap<(String, String, String, String, String), Props>,
}

/// The writer's guard: write unless the stored version is newer (equal = the same event again).
fn newer(current: Option<&Prop>, key: &str) -> bool {
    match current {
        Some(Prop::Str(v)) => v.as_str() <= key,
        _ => true,
    }
}

impl GraphModel {
    /// Applies operations in order, as the writer's MERGE + guarded SET would.
    pub fn apply<'a>(&mut self, ops: impl IntoIterator<Item = &'a GraphOp>) {
        for op in ops {
            match op {
                GraphOp::Node(w) => self.apply_node(w),
                GraphOp::Rel(r) => self.apply_rel(r),
            }
        }
    }

    fn merge_node(&mut self, label: &str, id: &str) -> &mut Props {
        self.nodes
            .entry((label.to_string(), id.to_string()))
            .or_insert_with(|| Props::from([("id".to_string(), Prop::Str(id.to_string()))]))
    }

    fn apply_node(&mut self, w: &NodeWrite) {
        let key = w.version.key();
        let n = self.merge_node(w.group.label().as_str(), &w.id);
        if newer(n.get(w.group.version_prop()), &key) {
            for (name, value) in w.group.props().iter().zip(&w.values) {
                match value {
                    Prop::Null => n.remove(*name),
                    v => n.insert(name.to_string(), v.clone()),
                };
            }
            n.insert(w.group.version_prop().to_string(), Prop::Str(key.clone()));
        }
        if newer(n.get("last_v"), &key) {
            n.insert("last_v".into(), Prop::Str(key));
            n.insert("last_seq".into(), Prop::Int(w.version.seq as i64));
            n.insert("last_stream".into(), Prop::Str(w.version.stream.clone()));
            n.insert("last_event_time_ms".into(), Prop::Int(w.event_time_ms));
        }
    }

    fn apply_rel(&mut self, r: &RelWrite) {
        let (from, to) = (r.rel.from_label().as_str(), r.rel.to_label().as_str());
        self.merge_node(from, &r.from);
        self.merge_node(to, &r.to);
        let key = r.version.key();
        let rel = self
            .rels
            .entry((
                r.rel.rel_type().to_string(),
                from.to_string(),
                r.from.clone(),
                to.to_string(),
                r.to.clone(),
            ))
            .or_default();
        if newer(rel.get("last_v"), &key) {
            rel.insert("last_v".into(), Prop::Str(key));
            rel.insert("last_seq".into(), Prop::Int(r.version.seq as i64));
            rel.insert("last_stream".into(), Prop::Str(r.version.stream.clone()));
            rel.insert("last_event_time_ms".into(), Prop::Int(r.event_time_ms));
        }
    }
}
