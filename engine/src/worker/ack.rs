//! Acknowledgements: the only module that acks a message (a tidy test checks it).
//!
//! A message is acked once its effects are committed: projected and parked events after
//! their group's commit, another partition's events once the checkpoint passes them (or the
//! next commit stores it past them), redeliveries of committed messages at once. Every ack
//! is double-acked (the server confirms it); an unconfirmed ack is counted and logged: its
//! redelivery is skipped by the checkpoint, so nothing is applied twice.

use super::route::{Item, Route};
use super::Worker;
use async_nats::jetstream::{self, AckKind};

fn failed(w: &Worker, src: usize, seq: u64, what: &str, e: &dyn std::fmt::Display) {
    let stream = &w.sources[src].stream;
    w.sh.metrics
        .write_errors
        .with_label_values(&[&w.cfg.projector, stream, "ack"])
        .inc();
    tracing::warn!(worker = %w.name, stream = %stream, seq, error = %e, "{what} not confirmed; a redelivery is skipped by the checkpoint");
}

/// Acks every item of a committed group: parked events terminated (the dead letter holds
/// them), the rest acked.
pub(super) async fn committed(w: &Worker, items: &[Item]) {
    let acks = items.iter().map(|it| async move {
        let kind = match it.route {
            Route::Park { .. } => AckKind::Term,
            Route::Project { .. } | Route::Elsewhere | Route::Discarded => AckKind::Ack,
        };
        (it, it.msg.double_ack_with(kind).await)
    });
    for (it, res) in futures::future::join_all(acks).await {
        if let Err(e) = res {
            failed(w, it.src, it.seq, "ack", &e);
        }
    }
}

/// Acks a redelivered message whose sequence is already committed.
pub(super) async fn duplicate(w: &Worker, src: usize, msg: &jetstream::Message, seq: u64) {
    if let Err(e) = msg.double_ack().await {
        failed(w, src, seq, "ack of a duplicate", &e);
    }
}

/// Tells the server the group in flight is still being worked on (while a step retries),
/// so it is not redelivered meanwhile.
pub(super) async fn progress(w: &Worker, items: &[Item]) {
    for it in items {
        if let Err(e) = it.msg.ack_with(AckKind::Progress).await {
            // Not fatal: at worst the server redelivers the message after ack_wait, and the
            // redelivery is skipped by the checkpoint once the group commits.
            failed(w, it.src, it.seq, "progress ack", &e);
        }
    }
}
