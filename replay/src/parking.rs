//! What a replayed message becomes, decided as the live worker decides it (D58, D59).
//!
//! A rebuild reads every stream from its first sequence, so it applies the whole parking
//! rule ([`projections::blocking`]) with the recorded rulings (refused writes, operators'
//! discards and retries) and lifts: it parks what live parked, into its own generation's
//! dead-letter records, and its `dlq list` lists exactly what it left out. A replay on top
//! of a generation (`replay --from-seq`) does not see the history before its range: it skips
//! what that generation holds parked and what an operator discarded, and applies the rest.

use async_nats::jetstream;
use engine::dlq::DeadLetter;
use engine::error::WriteError;
use engine::sink::graph::{GraphSink, ParkedRecord};
use projections::blocking::{parked_id, Blocks, Decision, Outcome};
use projections::ingest::Ingested;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// How a replay decides parking.
pub enum Parking {
    /// A build from the first sequence: the whole rule; parked events are recorded.
    Build {
        blocks: Mutex<Blocks>,
        dlq_subject_prefix: String,
    },
    /// A replay on top of a generation: what it holds parked, and discards, are skipped.
    OnTop {
        parked: BTreeSet<String>,
        blocks: Blocks,
    },
}

/// A message's outcome in a replay.
pub enum Replayed {
    Project(projections::Projection),
    /// Parked in the target generation (a build): kind, reason, blocked by.
    Park {
        story_id: Option<String>,
        kind: String,
        reason: String,
        blocked_by: Option<String>,
        refused: bool,
    },
    /// Left out: does not decode (on top), parked in the generation, or discarded.
    Skip {
        discarded: bool,
    },
}

impl Parking {
    /// For a build of `gen` (maybe resumed: its parked records so far keep their blocks).
    pub async fn build(
        graph: &GraphSink,
        gen: &str,
        projector: &str,
        dlq_subject_prefix: &str,
    ) -> Result<Parking, WriteError> {
        let mut blocks = rulings(graph, projector).await?;
        for (story, stream, blocker) in graph.blocked_stories(gen, projector).await? {
            blocks.block(&stream, &story, blocker);
        }
        Ok(Parking::Build {
            blocks: Mutex::new(blocks),
            dlq_subject_prefix: dlq_subject_prefix.to_string(),
        })
    }

    /// For a replay on top of `gen`.
    pub async fn on_top(
        graph: &GraphSink,
        gen: &str,
        projector: &str,
    ) -> Result<Parking, WriteError> {
        let parked = graph
            .parked(gen, Some(projector))
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect();
        Ok(Parking::OnTop {
            parked,
            blocks: rulings(graph, projector).await?,
        })
    }

    /// Decides message (`stream`, `seq`) of `projector`.
    pub fn decide(&self, projector: &str, stream: &str, seq: u64, ingested: Ingested) -> Replayed {
        match self {
            Parking::OnTop { parked, blocks } => {
                let ruling = blocks.ruling(stream, seq);
                let discarded = ruling.decision == Some(Decision::Discarded);
                let retried = ruling.decision == Some(Decision::Retried);
                let held = parked.contains(&parked_id(projector, stream, seq));
                match ingested {
                    Ingested::Projected { projection, .. }
                        if !discarded && !held && (retried || !ruling.refused) =>
                    {
                        Replayed::Project(projection)
                    }
                    _ => Replayed::Skip { discarded },
                }
            }
            Parking::Build { blocks, .. } => {
                let outcome = blocks.lock().unwrap_or_else(|e| e.into_inner()).decide(
                    projector,
                    stream,
                    seq,
                    ingested.story_id(),
                    matches!(ingested, Ingested::Projected { .. }),
                );
                match (outcome, ingested) {
                    (Outcome::Discarded, _) => Replayed::Skip { discarded: true },
                    (_, Ingested::Rejected { story_id, error }) => Replayed::Park {
                        story_id,
                        kind: error.kind().to_string(),
                        reason: error.to_string(),
                        blocked_by: None,
                        refused: false,
                    },
                    (Outcome::Project, Ingested::Projected { projection, .. }) => {
                        Replayed::Project(projection)
                    }
                    (Outcome::Blocked { by }, Ingested::Projected { story_id, .. }) => {
                        Replayed::Park {
                            reason: format!(
                                "story {} has an earlier parked event on this stream ({by}); parked behind it to keep the story's order",
                                // A blocked event always has a story; "-" keeps it printable.
                                story_id.as_deref().unwrap_or("-")
                            ),
                            story_id,
                            kind: "story_blocked".into(),
                            blocked_by: Some(by),
                            refused: false,
                        }
                    }
                    (Outcome::Parked, Ingested::Projected { story_id, .. }) => Replayed::Park {
                        story_id,
                        kind: "neo4j_refused".into(),
                        reason: "Neo4j refused this event's writes when it was first projected; parked as then (see `projector dlq show`)".into(),
                        blocked_by: None,
                        refused: true,
                    },
                }
            }
        }
    }

    /// A build's dead-letter prefix (None: a replay on top parks nothing).
    pub fn dlq_subject_prefix(&self) -> Option<&str> {
        match self {
            Parking::Build {
                dlq_subject_prefix, ..
            } => Some(dlq_subject_prefix),
            Parking::OnTop { .. } => None,
        }
    }
}

async fn rulings(graph: &GraphSink, projector: &str) -> Result<Blocks, WriteError> {
    let mut blocks = Blocks::default();
    for r in graph.rulings(projector).await? {
        blocks.rule(&r.stream, r.seq, r.ruling);
    }
    for (stream, story, at) in graph.lifts(projector).await? {
        blocks.lift(&stream, &story, at);
    }
    Ok(blocks)
}

/// A message a build parks: its dead letter (confirmed; the same message id as live's, so
/// it is deduplicated within the stream's window) and its record for the generation.
pub struct ToPark<'a> {
    pub projector: &'a str,
    pub stream: &'a str,
    pub seq: u64,
    pub ts_ns: i64,
    pub subject: &'a str,
    pub content_type: Option<&'a str>,
    pub payload: &'a [u8],
}

/// Publishes the dead letter of `m` and returns its parked record.
pub async fn park(
    js: &jetstream::Context,
    dlq_subject_prefix: &str,
    m: &ToPark<'_>,
    parked: Replayed,
) -> Result<ParkedRecord, WriteError> {
    let Replayed::Park {
        story_id,
        kind,
        reason,
        blocked_by,
        refused,
    } = parked
    else {
        unreachable!("park is called with a Park outcome");
    };
    let d = DeadLetter {
        projector: m.projector,
        stream: m.stream,
        seq: m.seq,
        subject: m.subject,
        // A rebuild read it once; the live delivery count is in live's own dead letter.
        delivered: 1,
        story_id: story_id.as_deref(),
        kind: &kind,
        reason: &reason,
        blocked_by: blocked_by.as_deref(),
        content_type: m.content_type,
        payload: m.payload,
    };
    let dlq_seq = engine::retry::Retrier::bounded(engine::retry::Backoff::default(), 30)
        .run("publish dead letter", || {
            engine::dlq::park(js, dlq_subject_prefix, &d)
        })
        .await?;
    Ok(ParkedRecord {
        stream: m.stream.to_string(),
        seq: m.seq,
        subject: m.subject.to_string(),
        story_id,
        kind,
        reason,
        blocked_by,
        dlq_seq,
        ts_ns: m.ts_ns,
        refused,
    })
}
