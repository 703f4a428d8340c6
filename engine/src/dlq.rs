//! Dead letters: parked messages go to a dead-letter stream, confirmed, with their context.

use crate::error::WriteError;
use crate::sink::graph::{DecisionRecord, ParkedView};
use async_nats::jetstream;
use async_nats::HeaderMap;
use projections::blocking::Decision;

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
    fn takes(&self, p: &ParkedView) -> bool {
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
    /// Who decides: recorded with each decision (D59).
    pub by: &'a str,
}

/// Re-projects parked events in their original order (stream time, stream, sequence) and
/// removes their parked records in the same transaction, recording the decision (who, when)
/// for every generation's builds and lifting the blocks it empties (D59). An event that still
/// fails stays parked, and so do the later parked events of its story on its stream; so does
/// one behind an earlier parked event of its story on its stream that this retry does not
/// project (`held_back`, #17 item 6).
///
/// Like a live commit, the transaction also holds the events' outbound events in the
/// outbox; once the cache is written they are published (same subjects, same
/// deterministic message ids as a live run) and removed from it. One that cannot be
/// published stays in the outbox, which the projector publishes when it next starts.
pub async fn retry(t: &RetryTarget<'_>, sel: &Selection) -> Result<RetryReport, WriteError> {
    let all = t.graph.parked(t.generation, Some(t.projector)).await?;
    let mut parked: Vec<_> = all.iter().filter(|p| sel.takes(p)).cloned().collect();
    parked.sort_by(|a, b| (a.ts_ns, &a.stream, a.seq).cmp(&(b.ts_ns, &b.stream, b.seq)));
    let dlq =
        t.js.get_stream(t.dlq_stream)
            .await
            .map_err(|e| WriteError::Nats {
                message: format!("dead-letter stream {}: {e}", t.dlq_stream),
            })?;
    let mut report = RetryReport::default();
    let mut batch = projections::CompactBatch::default();
    let mut stories = std::collections::BTreeSet::new();
    let mut outbox = Vec::new();
    for p in &parked {
        if behind_unretried(&all, p, &report.projected) {
            report.held_back.push(p.id.clone());
            continue;
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
        let decided: Vec<ParkedView> = parked
            .iter()
            .filter(|p| report.projected.contains(&p.id))
            .cloned()
            .collect();
        decide(t, Decision::Retried, &batch, &decided, &outbox).await?;
        // The stories whose parked records went: their views said "blocked".
        stories.extend(decided.iter().filter_map(|p| p.story_id.clone()));
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

/// Whether `p` has an earlier parked event of its story on its stream (in `all`) that is not
/// among `projected`: then it stays parked behind it.
fn behind_unretried(all: &[ParkedView], p: &ParkedView, projected: &[String]) -> bool {
    let Some(story) = &p.story_id else {
        return false;
    };
    all.iter().any(|q| {
        q.story_id.as_ref() == Some(story)
            && q.stream == p.stream
            && q.seq < p.seq
            && !projected.contains(&q.id)
    })
}

/// Records an operator's decision about `decided` (with `batch` and `outbox`, a retry's
/// writes and outbound events) in one transaction, moving the revisions of their stories
/// (their views said "blocked"); each (stream, story) it leaves without parked records is
/// lifted at the stream's end as read before the transaction (D59).
async fn decide(
    t: &RetryTarget<'_>,
    decision: Decision,
    batch: &projections::CompactBatch,
    decided: &[ParkedView],
    outbox: &[crate::sink::graph::OutboxEntry],
) -> Result<Vec<(String, String, u64)>, WriteError> {
    let mut ends = std::collections::BTreeMap::new();
    let mut lifts = Vec::new();
    for p in decided {
        let Some(story) = &p.story_id else { continue };
        if lifts
            .iter()
            .any(|(s, st, _): &(String, String, u64)| s == &p.stream && st == story)
        {
            continue;
        }
        if !ends.contains_key(&p.stream) {
            let (_, last) = crate::source::bounds(t.js, &p.stream).await?;
            ends.insert(p.stream.clone(), last);
        }
        lifts.push((p.stream.clone(), story.clone(), ends[&p.stream]));
    }
    let d = DecisionRecord {
        decision,
        by: t.by,
        parked: decided,
        lifts: &lifts,
        outbox,
    };
    t.graph
        .commit_decision(t.generation, t.projector, batch, &d)
        .await
}

/// What a discard did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DiscardReport {
    pub discarded: Vec<String>,
    /// (stream, story, at): blocks this discard lifted (no parked event of the story left
    /// on that stream); later events of the story on it project.
    pub lifted: Vec<(String, String, u64)>,
}

/// Drops parked events without projecting them, recording the decision (who, when) for
/// every generation's builds, lifts the blocks it empties (D59), and renders their stories'
/// views again.
pub async fn discard(t: &RetryTarget<'_>, ids: &[String]) -> Result<DiscardReport, WriteError> {
    let decided: Vec<ParkedView> = t
        .graph
        .parked(t.generation, Some(t.projector))
        .await?
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .collect();
    if decided.is_empty() {
        return Ok(DiscardReport::default());
    }
    let batch = projections::CompactBatch::default();
    let lifted = decide(t, Decision::Discarded, &batch, &decided, &[]).await?;
    // Their stories' views no longer say "blocked" by them.
    let stories: Vec<String> = decided
        .iter()
        .filter_map(|p| p.story_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !stories.is_empty() {
        let contexts = t.graph.story_contexts(t.generation, &stories).await?;
        t.cache
            .put_contexts(t.generation, t.cache_prefix, &contexts, false)
            .await?;
    }
    Ok(DiscardReport {
        discarded: decided.into_iter().map(|p| p.id).collect(),
        lifted,
    })
}

/// Keeps parked events' reasons true after decisions (#17 item 9): an event parked behind
/// one that an operator has since discarded or re-projected says so, and by whom; it stays
/// parked (the block holds until none of the story's events on the stream is parked).
pub fn current_reasons(parked: &mut [ParkedView], rulings: &[crate::sink::graph::RulingView]) {
    let still: std::collections::BTreeSet<String> = parked.iter().map(|p| p.id.clone()).collect();
    for p in parked.iter_mut() {
        let Some(by) = p.blocked_by.clone() else {
            continue;
        };
        if still.contains(&by) {
            continue;
        }
        let Some(r) = rulings
            .iter()
            .find(|r| projections::blocking::parked_id(&p.projector, &r.stream, r.seq) == by)
        else {
            continue;
        };
        let what = match r.ruling.decision {
            Some(Decision::Discarded) => "discarded",
            Some(Decision::Retried) => "re-projected",
            None => continue,
        };
        p.reason = format!(
            "{}; {by} has since been {what} by {} (at {} ms since the epoch): this event stays parked until it is retried or discarded",
            p.reason,
            // A decision recorded without a name prints as unknown.
            r.by.as_deref().unwrap_or("-"),
            r.at_ms.map_or("-".to_string(), |t| t.to_string())
        );
    }
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
