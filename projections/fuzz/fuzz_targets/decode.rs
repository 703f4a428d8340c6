//! Decoding any bytes on any catalog subject, as JSON or MessagePack, never panics; what
//! decodes also projects without panicking, twice to the same result (determinism).
//!
//! Input layout: byte 0 picks the subject (catalog index, or an unknown one), byte 1 the
//! Content-Type (none, JSON, MessagePack, something else), the rest is the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use projections::{decode, project, Envelope, CATALOG};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
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
    let _ = projections::sniff_story_id(content_type, payload);
    if let Ok(event) = decode(subject, content_type, payload) {
        let env = Envelope {
            stream: "PLANNING_EVENTS",
            seq: 1,
            subject,
            stream_ts_ns: 1_700_000_000_000_000_000,
            content_type,
            payload,
        };
        assert_eq!(project(&env, &event), project(&env, &event));
    }
});
