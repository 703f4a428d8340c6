//! The body of the `decode` fuzz target (`projections/fuzz`), shared with the test that
//! replays its corpus on stable (`tests/fuzz_corpus.rs`), so both read inputs the same way.

use crate::{decode, project, sniff_story_id, Envelope, CATALOG};

/// Runs one fuzz input: byte 0 picks the subject (catalog index, or an unknown one), byte 1
/// the Content-Type (none, JSON, MessagePack, something else), the rest is the payload.
/// Decoding must not panic; what decodes must project twice to the same result. Returns
/// whether the input decoded.
///
/// ```
/// // PLAN_APPROVED (catalog index 4) as JSON.
/// let mut input = vec![4, 0];
/// input.extend_from_slice(br#"{"story_id":"US-1","plan_id":"P-1","approved_by":"po"}"#);
/// assert!(projections::fuzzing::check(&input));
/// assert!(!projections::fuzzing::check(&[4, 0, b'{']));
/// ```
pub fn check(data: &[u8]) -> bool {
    if data.len() < 2 {
        return false;
    }
    let subject = CATALOG
        .get(data[0] as usize)
        .map(|(s, _)| *s)
        .unwrap_or("planning.story.exploded");
    let content_type = match data[1] % 4 {
        0 => None,
        1 => Some("application/json"),
        2 => Some("application/msgpack"),
        _ => Some("text/plain"),
    };
    let payload = &data[2..];
    let _ = sniff_story_id(content_type, payload);
    let Ok(event) = decode(subject, content_type, payload) else {
        return false;
    };
    let env = Envelope {
        stream: "PLANNING_EVENTS",
        seq: 1,
        subject,
        stream_ts_ns: 1_700_000_000_000_000_000,
        content_type,
        payload,
    };
    assert_eq!(project(&env, &event), project(&env, &event));
    true
}
