//! The one ingest path: a stored message -> strip the subject prefix -> decode -> envelope ->
//! project. The live committer, replays, DLQ retries and the ceiling benchmark all call
//! [`ingest`], so a message projects the same way whichever path reads it.

use crate::{DecodeError, Envelope, Projection};

/// A message as read from a stream, with the deployment's subject prefix still on.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub stream: &'a str,
    pub seq: u64,
    /// The stream's timestamp of the message, nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// The subject as published, prefix included.
    pub subject: &'a str,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    pub payload: &'a [u8],
}

/// What a message turned into.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    /// It decoded: its story (if the event has one) and its projection.
    Projected {
        story_id: Option<String>,
        projection: Projection,
    },
    /// It did not decode: the story id read from the payload as far as it goes, and why.
    Rejected {
        story_id: Option<String>,
        error: DecodeError,
    },
}

impl Ingested {
    /// The story the message belongs to, decoded or sniffed.
    pub fn story_id(&self) -> Option<&str> {
        match self {
            Ingested::Projected { story_id, .. } | Ingested::Rejected { story_id, .. } => {
                story_id.as_deref()
            }
        }
    }
}

/// Ingests one stored message. A subject without `subject_prefix` is an unknown subject,
/// never decoded as if it had the prefix: it belongs to another deployment.
///
/// ```
/// use projections::ingest::{ingest, Ingested, Stored};
/// let m = Stored {
///     stream: "PLANNING_EVENTS", seq: 1, ts_ns: 0, subject: "x.planning.story.created",
///     content_type: None, payload: br#"{"story_id":"US-1","title":"Login"}"#,
/// };
/// assert!(matches!(ingest("x.", &m), Ingested::Projected { .. }));
/// assert_eq!(ingest("x.", &m).story_id(), Some("US-1"));
/// let other = Stored { subject: "planning.story.created", ..m };
/// assert!(matches!(ingest("x.", &other), Ingested::Rejected { .. }));
/// assert_eq!(ingest("x.", &other).story_id(), Some("US-1"));
/// ```
pub fn ingest(subject_prefix: &str, m: &Stored<'_>) -> Ingested {
    let Some(catalog) = m.subject.strip_prefix(subject_prefix) else {
        return Ingested::Rejected {
            story_id: crate::sniff_story_id(m.content_type, m.payload),
            error: DecodeError::UnknownSubject {
                subject: m.subject.to_string(),
            },
        };
    };
    match crate::decode(catalog, m.content_type, m.payload) {
        Ok(event) => {
            let env = Envelope::new(m.stream, m.seq, catalog, m.ts_ns, m.payload)
                .with_content_type(m.content_type);
            Ingested::Projected {
                story_id: event.story_id().map(str::to_string),
                projection: crate::project(&env, &event),
            }
        }
        Err(error) => Ingested::Rejected {
            story_id: crate::sniff_story_id(m.content_type, m.payload),
            error,
        },
    }
}
