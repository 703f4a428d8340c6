//! Reads for other modules: the read views (`crate::views`) and the scans of the canonical
//! hash (`replay::hash`). Statements are the named ones of [`super::cypher`].

use super::{cypher, field, GraphSink};
use crate::error::WriteError;
use neo4rs::{query, BoltNull, BoltType};
use serde_json::{Map, Value};

/// A view parameter as Bolt: null, a string, an integer, or the JSON text of anything else.
/// A number that is not an integer is refused (the views take integers: limits, offsets,
/// epoch ms), never turned into 0.
fn bolt_param(name: &str, v: Value) -> Result<BoltType, WriteError> {
    Ok(match v {
        Value::Null => BoltType::Null(BoltNull),
        Value::String(s) => BoltType::from(s),
        Value::Number(n) => match n.as_i64() {
            Some(i) => BoltType::from(i),
            None => {
                return Err(WriteError::Neo4jRefused {
                    code: "projector.ViewParam".into(),
                    message: format!("view parameter {name} = {n} is not a 64-bit integer"),
                })
            }
        },
        other => BoltType::from(other.to_string()),
    })
}

impl GraphSink {
    /// Runs a read view of [`cypher`] (`TIMELINE`, `DECISIONS`, ...) on generation `gen` and
    /// returns its single `view` column as JSON (`None`: no row).
    pub async fn view(
        &self,
        statement: &'static str,
        gen: &str,
        params: Vec<(&'static str, Value)>,
    ) -> Result<Option<Value>, WriteError> {
        let mut q = query(statement).param("gen", gen);
        for (k, v) in params {
            q = q.param(k, bolt_param(k, v)?);
        }
        match self.first_row(q).await? {
            Some(row) => Ok(Some(row.get::<Value>("view").map_err(|e| {
                WriteError::Neo4jRefused {
                    code: "projector.ViewShape".into(),
                    message: e.to_string(),
                }
            })?)),
            None => Ok(None),
        }
    }

    /// Calls `f(label, properties)` for every node of `gen` whose first label is one of
    /// `labels`, in (label, id) order. A row that does not read back is an error.
    pub async fn scan_nodes(
        &self,
        gen: &str,
        labels: &[String],
        mut f: impl FnMut(String, Map<String, Value>),
    ) -> Result<(), WriteError> {
        let q = query(cypher::SCAN_NODES)
            .param("gen", gen)
            .param("labels", labels.to_vec());
        self.each_row(q, |row| {
            f(field(&row, "label")?, field(&row, "props")?);
            Ok(())
        })
        .await
    }

    /// Calls `f([type, from label, from id, to label, to id], properties)` for every
    /// relationship leaving a node of `gen` whose first label is one of `labels`, in that
    /// order of columns.
    pub async fn scan_relationships(
        &self,
        gen: &str,
        labels: &[String],
        mut f: impl FnMut([String; 5], Map<String, Value>),
    ) -> Result<(), WriteError> {
        let q = query(cypher::SCAN_RELATIONSHIPS)
            .param("gen", gen)
            .param("labels", labels.to_vec());
        self.each_row(q, |row| {
            let cols = [
                field(&row, "type")?,
                field(&row, "fl")?,
                field(&row, "f")?,
                field(&row, "tl")?,
                field(&row, "t")?,
            ];
            f(cols, field(&row, "props")?);
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_parameter_that_is_not_an_integer_is_refused_not_zero() {
        assert!(matches!(
            bolt_param("limit", serde_json::json!(10)).unwrap(),
            BoltType::Integer(_)
        ));
        assert!(bolt_param("limit", serde_json::json!(1.5)).is_err());
        assert!(bolt_param("limit", serde_json::json!(u64::MAX)).is_err());
    }
}
