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

/// Which parked events a retry or discard takes.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Story(String),
    Ids(Vec<String>),
}

impl Selection {
    fn takes(&self, p: &crate::sink::graph::ParkedView) -> bool {
        match self {
            Selection::All => true,
            Selection::Story(s) => p.story_id.as_deref() == Some(s.as_str()),
            Selection::Ids(ids) => ids.contains(&p.id),
        }
    }
}

/// What a retry did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetryReport {
    pub projected: Vec<String>,
    /// Still failing, with the reason; they stay parked (and so do later events of their story).
    pub still_failing: Vec<(String, String)>,
    pub held_back: Vec<String>,
    /// Outbound events (`context.updated`) the retried events emitted, published.
    pub outbound: usize,
}

/// Where a retry writes.
pub struct RetryTarget<'a> {
    pub js: &'a jetstream::Context,
    pub graph: &'a crate::sink::graph::GraphSink,
    pub cache: &'a crate::sink::cache::CacheSink,
    pub generation: &'a str,
    pub projector: &'a str,
    pub subject_prefix: &'a str,
    pub dlq_stream: &'a str,
    pub cache_prefix: &'a str,
    /// Emit the retried events' outbound events (`context.updated`), as a live run of this
    /// generation would: true for the live generation.
    pub publish_outbound: bool,
}

/// Re-projects parked events in their original order (stream time, stream, sequence) and
/// removes their parked records in the same transaction. An event that still fails stays
/// parked, and so do the later parked events of its story.
///
/// Like a live commit, the transaction also holds the events' outbound events in the
/// outbox; once the cache is written they are published (same subjects, same
/// deterministic message ids as a live run) and removed from it. One that cannot be
/// published stays in the outbox, which the projector publishes when it next starts.
pub async fn retry(t: &RetryTarget<'_>, sel: &Selection) -> Result<RetryReport, WriteError> {
    let mut parked: Vec<_> = t
        .graph
        .parked(t.generation, Some(t.projector))
        .await?
        .into_iter()
        .filter(|p| sel.takes(p))
        .collect();
    parked.sort_by(|a, b| (a.ts_ns, &a.stream, a.seq).cmp(&(b.ts_ns, &b.stream, b.seq)));
    let dlq =
        t.js.get_stream(t.dlq_stream)
            .await
            .map_err(|e| WriteError::Nats {
                message: format!("dead-letter stream {}: {e}", t.dlq_stream),
            })?;
    let mut report = RetryReport::default();
    let mut failed_stories = std::collections::BTreeSet::new();
    let mut batch = projections::CompactBatch::default();
    let mut stories = std::collections::BTreeSet::new();
    let mut outbox = Vec::new();
    for p in &parked {
        if let Some(s) = &p.story_id {
            if failed_stories.contains(s) {
                report.held_back.push(p.id.clone());
                continue;
            }
        }
        let m = dlq
            .get_raw_message(p.dlq_seq)
            .await
            .map_err(|e| WriteError::Nats {
                message: format!("dead letter {} (seq {}): {e}", p.id, p.dlq_seq),
            })?;
        let stored = projections::ingest::Stored {
            stream: &p.stream,
            seq: p.seq,
            ts_ns: p.ts_ns,
            subject: &p.subject,
            content_type: m.headers.get("Content-Type").map(|v| v.as_str()),
            payload: &m.payload,
        };
        match projections::ingest::ingest(t.subject_prefix, &stored) {
            projections::ingest::Ingested::Rejected { error, .. } => {
                if let Some(s) = &p.story_id {
                    failed_stories.insert(s.clone());
                }
                report.still_failing.push((p.id.clone(), error.to_string()));
            }
            projections::ingest::Ingested::Projected { projection, .. } => {
                batch.extend(&projection.graph);
                for projections::CacheOp::RefreshContext { story_id, .. } in &projection.cache {
                    stories.insert(story_id.clone());
                }
                if t.publish_outbound {
                    outbox.extend(projection.outbound.iter().map(|event| {
                        crate::sink::graph::OutboxEntry {
                            stream: p.stream.clone(),
                            event: event.clone(),
                        }
                    }));
                }
                report.projected.push(p.id.clone());
            }
        }
    }
    if !report.projected.is_empty() {
        // The stories whose parked records go (their views said "blocked").
        let unparked: Vec<String> = parked
            .iter()
            .filter(|p| report.projected.contains(&p.id))
            .filter_map(|p| p.story_id.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        t.graph
            .commit_retry(
                t.generation,
                t.projector,
                &batch,
                &report.projected,
                &outbox,
                &unparked,
            )
            .await?;
        stories.extend(unparked);
        let ids: Vec<String> = stories.into_iter().collect();
        let contexts = t.graph.story_contexts(t.generation, &ids).await?;
        t.cache
            .put_contexts(t.generation, t.cache_prefix, &contexts, false)
            .await?;
        publish_outbox(t, &outbox).await?;
        report.outbound = outbox.len();
    }
    Ok(report)
}

/// Publishes a retry's outbox entries (each confirmed), then removes them from the outbox.
async fn publish_outbox(
    t: &RetryTarget<'_>,
    outbox: &[crate::sink::graph::OutboxEntry],
) -> Result<(), WriteError> {
    if outbox.is_empty() {
        return Ok(());
    }
    let retrier = crate::retry::Retrier::bounded(crate::retry::Backoff::default(), 5);
    for o in outbox {
        retrier
            .run("publish outbound event", || {
                crate::sink::outbound::publish(t.js, t.subject_prefix, &o.event)
            })
            .await
            .map_err(|e| WriteError::Nats {
                message: format!("{e}; the retried events are committed and their outbound events wait in the outbox: the projector publishes them when it next starts"),
            })?;
    }
    let ids: Vec<String> = outbox.iter().map(|o| o.event.msg_id.clone()).collect();
    retrier
        .run("clear outbox", || t.graph.outbox_done(t.generation, &ids))
        .await
}

/// Removes parked events without re-projecting them (an operator's decision) and renders
/// their stories' views again, which no longer say "blocked" by them. Returns how many
/// were removed.
pub async fn discard(
    graph: &crate::sink::graph::GraphSink,
    cache: &crate::sink::cache::CacheSink,
    generation: &str,
    cache_prefix: &str,
    ids: &[String],
) -> Result<u64, WriteError> {
    let (n, stories) = graph.discard_parked(generation, ids).await?;
    if !stories.is_empty() {
        let contexts = graph.story_contexts(generation, &stories).await?;
        cache.put_contexts(cache_prefix, &contexts, false).await?;
    }
    Ok(n)
}

/// The ids among `ids` that name no parked event of `projector` in `generation`: a typo
/// must be refused, not pass for "re-projected 0 events".
pub async fn not_parked(
    graph: &crate::sink::graph::GraphSink,
    generation: &str,
    projector: &str,
    ids: &[String],
) -> Result<Vec<String>, WriteError> {
    let parked = graph.parked(generation, Some(projector)).await?;
    Ok(ids
        .iter()
        .filter(|id| !parked.iter().any(|p| &p.id == *id))
        .cloned()
        .collect())
}

/// A parked event's message in the dead-letter stream, or why it is not there.
pub enum Stored {
    Held(jetstream::message::StreamMessage),
    /// The stream no longer holds it (its limits removed it): the reason, as NATS says it.
    Gone(String),
}

/// Reads message `dlq_seq` of the dead-letter stream. Only a message the stream no longer
/// holds is an answer ([`Stored::Gone`]); a timeout or a lost connection is an error, not
/// "payload missing".
pub async fn stored_message(
    js: &jetstream::Context,
    dlq_stream: &str,
    dlq_seq: u64,
) -> Result<Stored, WriteError> {
    let dlq = js
        .get_stream(dlq_stream)
        .await
        .map_err(|e| WriteError::Nats {
            message: format!("dead-letter stream {dlq_stream}: {e}"),
        })?;
    match dlq.get_raw_message(dlq_seq).await {
        Ok(m) => Ok(Stored::Held(m)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
            Ok(Stored::Gone(e.to_string()))
        }
        Err(e) => Err(WriteError::Nats {
            message: format!(
                "cannot read message {dlq_seq} of the dead-letter stream {dlq_stream}: {e}"
            ),
        }),
    }
}
