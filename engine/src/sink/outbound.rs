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
    publish_all(js, subject_prefix, std::slice::from_ref(event)).await
}

/// Publishes outbound events in their order, then waits for every confirmation: one round
/// trip for a batch's outbox, not one per event. A batch of 500 events emitted ~125, and
/// waiting for each before sending the next made the consumer of their stream take them
/// one per transaction (docs/benchmarks.md, "Session 12"). The sends go out in order on one
/// connection, so the stream holds them in that order; retrying the whole set after a
/// failure is safe, as the message ids make the confirmed ones no-ops.
///
/// # Errors
/// [`WriteError::Nats`] naming the first message id that was not sent or not confirmed.
pub async fn publish_all(
    js: &jetstream::Context,
    subject_prefix: &str,
    events: &[Outbound],
) -> Result<(), WriteError> {
    let fail = |event: &Outbound, e: String| WriteError::Nats {
        message: format!("outbound {}: {e}", event.msg_id),
    };
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", event.msg_id.as_str());
        let subject = format!("{subject_prefix}{}", event.subject);
        let ack = js
            .publish_with_headers(subject, h, event.payload.clone().into())
            .await
            .map_err(|e| fail(event, e.to_string()))?;
        acks.push(ack);
    }
    let confirmed =
        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await;
    for (event, res) in events.iter().zip(confirmed) {
        res.map_err(|e| fail(event, e.to_string()))?;
    }
    Ok(())
}
