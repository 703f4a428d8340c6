//! Dead letters: parked messages go to a dead-letter stream, confirmed, with their context.

use crate::error::WriteError;
use async_nats::jetstream;
use async_nats::HeaderMap;

/// Why and what is parked: everything an operator needs to decide, in headers.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub projector: &'a str,
    pub stream: &'a str,
    pub seq: u64,
    pub subject: &'a str,
    pub delivered: i64,
    pub story_id: Option<&'a str>,
    pub kind: &'a str,
    pub reason: &'a str,
    pub blocked_by: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub payload: &'a [u8],
}

pub const H_SUBJECT: &str = "Projector-Original-Subject";
pub const H_STREAM: &str = "Projector-Stream";
pub const H_SEQ: &str = "Projector-Seq";
pub const H_DELIVERED: &str = "Projector-Delivered";
pub const H_PROJECTOR: &str = "Projector-Projector";
pub const H_KIND: &str = "Projector-Error-Kind";
pub const H_REASON: &str = "Projector-Error";
pub const H_STORY: &str = "Projector-Story";
pub const H_BLOCKED_BY: &str = "Projector-Blocked-By";

/// Publishes a dead letter and waits for the stream's confirmation.
///
/// The message id makes a republish after a crash a no-op within the duplicate window.
/// Returns the dead-letter stream sequence.
pub async fn park(
    js: &jetstream::Context,
    subject_prefix: &str,
    d: &DeadLetter<'_>,
) -> Result<u64, WriteError> {
    let mut h = HeaderMap::new();
    h.insert(
        "Nats-Msg-Id",
        format!("dlq:{}:{}:{}", d.projector, d.stream, d.seq).as_str(),
    );
    h.insert(H_SUBJECT, d.subject);
    h.insert(H_STREAM, d.stream);
    h.insert(H_SEQ, d.seq.to_string().as_str());
    h.insert(H_DELIVERED, d.delivered.to_string().as_str());
    h.insert(H_PROJECTOR, d.projector);
    h.insert(H_KIND, d.kind);
    // Header values are single-line.
    h.insert(H_REASON, d.reason.replace(['\r', '\n'], " ").as_str());
    if let Some(s) = d.story_id {
        h.insert(H_STORY, s);
    }
    if let Some(b) = d.blocked_by {
        h.insert(H_BLOCKED_BY, b);
    }
    if let Some(ct) = d.content_type {
        h.insert("Content-Type", ct);
    }
    let subject = format!("{subject_prefix}.{}.{}", d.projector, d.stream);
    let err = |e: String| WriteError::Nats {
        message: format!("dead letter for {}:{}: {e}", d.stream, d.seq),
    };
    let ack = js
        .publish_with_headers(subject, h, d.payload.to_vec().into())
        .await
        .map_err(|e| err(e.to_string()))?
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(ack.sequence)
}
