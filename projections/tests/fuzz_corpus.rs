//! Replays the fuzz corpus (`projections/fuzz/corpus/decode`, grown by `dev/fuzz`) on the
//! stable toolchain, so every input the fuzzer kept stays a regression test in CI: decoding
//! never panics and what decodes projects the same way twice.

#[test]
fn fuzz_corpus_decodes_without_panic_and_projects_deterministically() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut inputs = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus is in git") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        inputs += 1;
        if projections::fuzzing::check(&data) {
            decoded += 1;
        }
    }
    assert!(inputs > 100, "corpus has {inputs} inputs");
    // The seeds (valid events of 13 subjects, JSON and MessagePack) still decode.
    assert!(decoded >= 26, "only {decoded} of {inputs} inputs decoded");
}
