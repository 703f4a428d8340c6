//! Outbound events on NATS: the one publish of an outbox entry, used by the live committer
//! (`worker/commit.rs`), the start-up drain and `dlq retry`, so an event gets the same
//! subject and the same deterministic `Nats-Msg-Id` whichever path emits it.

use crate::error::WriteError;
use async_nats::jetstream;
use projections::Outbound;

/// Publishes one outbound event under the deployment's subject prefix and waits for the
/// stream's confirmation. Its `Nats-Msg-Id` makes a republish (after a crash, or of an
/// event a DLQ retry emits again) a no-op within the stream's duplicate window.
///
/// # Errors
/// [`WriteError::Nats`] naming the message id when the publish is not confirmed.
pub async fn publish(
    js: &jetstream::Context,
    subject_prefix: &str,
    event: &Outbound,
) -> Result<(), WriteError> {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", event.msg_id.as_str());
    let fail = |e: String| WriteError::Nats {
        message: format!("outbound {}: {e}", event.msg_id),
    };
    let subject = format!("{subject_prefix}{}", event.subject);
    js.publish_with_headers(subject, h, event.payload.clone().into())
        .await
        .map_err(|e| fail(e.to_string()))?
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}
