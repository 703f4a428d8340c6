//! What the engine hands a projection: one stored message and its stream position.

/// One message as stored in a JetStream stream.
///
/// Everything a projection may depend on is here; nothing else (no clock, no
/// environment) reaches it, so the same envelope always projects the same way.
///
/// ```
/// use projections::Envelope;
/// let env = Envelope::new("PLANNING_EVENTS", 7, "planning.story.created", 1_700_000_000_000_000_000, br#"{"story_id":"US-1"}"#);
/// assert_eq!(env.seq, 7);
/// assert_eq!(env.content_type, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Stream the message was read from, e.g. `PLANNING_EVENTS`.
    pub stream: &'a str,
    /// The message's stream sequence (1-based, gap-free unless removed by limits).
    pub seq: u64,
    /// The subject it was published on; it decides the event type.
    pub subject: &'a str,
    /// The stream's own timestamp of the message, nanoseconds since the Unix epoch.
    pub stream_ts_ns: i64,
    /// The `Content-Type` header, if any (`application/msgpack` selects MessagePack).
    pub content_type: Option<&'a str>,
    /// The raw payload.
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// An envelope without a `Content-Type` header (JSON payload).
    pub fn new(
        stream: &'a str,
        seq: u64,
        subject: &'a str,
        stream_ts_ns: i64,
        payload: &'a [u8],
    ) -> Self {
        Envelope {
            stream,
            seq,
            subject,
            stream_ts_ns,
            content_type: None,
            payload,
        }
    }

    /// The same envelope with a `Content-Type` header.
    pub fn with_content_type(mut self, content_type: Option<&'a str>) -> Self {
        self.content_type = content_type;
        self
    }
}
