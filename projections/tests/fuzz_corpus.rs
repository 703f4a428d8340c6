//! Replays the fuzz corpus (`projections/fuzz/corpus/decode`, grown by `dev/fuzz`) on the
//! stable toolchain, so every input the fuzzer kept stays a regression test in CI: decoding
//! never panics and what decodes projects the same way twice.

use projections::{decode, project, sniff_story_id, Envelope, CATALOG};

#[test]
fn fuzz_corpus_decodes_without_panic_and_projects_deterministically() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut inputs = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus is in git") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        inputs += 1;
        if data.len() < 2 {
            continue;
        }
        // The same input layout as fuzz_targets/decode.rs.
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
        if let Ok(event) = decode(subject, content_type, payload) {
            decoded += 1;
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
    }
    assert!(inputs > 100, "corpus has {inputs} inputs");
    // The seeds (valid events of 13 subjects, JSON and MessagePack) still decode.
    assert!(decoded >= 26, "only {decoded} of {inputs} inputs decoded");
}
