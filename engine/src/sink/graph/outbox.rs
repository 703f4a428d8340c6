//! The transactional outbox: outbound events committed with their batch, published after
//! it, removed once the publish is confirmed.

use super::batch::{list, map};
use super::{cypher, field, CheckpointKey, GraphSink};
use crate::error::WriteError;
use neo4rs::query;
use projections::Outbound;

/// An outbound event waiting in the outbox, with the stream whose event produced it
/// (the outbox is drained per stream at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub stream: String,
    pub event: Outbound,
}

impl GraphSink {
    /// Outbound events committed but not yet confirmed as published (after a crash), of
    /// `key`'s projector and stream.
    pub async fn outbox_pending(
        &self,
        gen: &str,
        key: &CheckpointKey,
    ) -> Result<Vec<Outbound>, WriteError> {
        let q = query(cypher::OUTBOX_PENDING)
            .param("gen", gen)
            .param("projector", key.projector.as_str())
            .param("stream", key.stream.as_str());
        let mut out = Vec::new();
        for row in self.rows(q).await? {
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
        self.run(
            query(cypher::OUTBOX_DONE)
                .param("gen", gen)
                .param("ids", ids.to_vec()),
        )
        .await
    }

    /// Adds `outbox` to `txn` (the commit whose events produced them).
    pub(super) async fn outbox_add(
        &self,
        txn: &mut neo4rs::Txn,
        gen: &str,
        projector: &str,
        outbox: &[OutboxEntry],
    ) -> Result<(), WriteError> {
        if outbox.is_empty() {
            return Ok(());
        }
        // Payloads are JSON that projections serialized (UTF-8 by construction), so the
        // lossy conversion never replaces anything; the outbox stores them as strings.
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
        let (what, n) = ("outbox entries".into(), outbox.len() as i64);
        self.confirmed(txn, q, what, n).await
    }
}
