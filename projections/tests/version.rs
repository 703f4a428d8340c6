//! The projection version is bumped whenever what the projections write changes.
//!
//! The fingerprint covers the event catalog, the graph model (labels, property groups and
//! their version properties, relationship types and ends) and the output of the one ingest
//! path over a fixed corpus (`version_corpus.jsonl`: every catalog subject for two stories,
//! a repeat, an undecodable payload and an unknown subject), together with the graph the
//! writer's semantics build from it (`GraphModel`). Every recorded version keeps its
//! fingerprint, so a change of output under an old version fails here (docs/decisions.md D70).
//! `tests/projection_version.rs` shows the test failing on the `variant-unbumped` feature.

use projections::ingest::{ingest, Ingested, Stored};
use projections::model::GraphModel;
use projections::{Group, Label, Rel, CATALOG, PROJECTION_VERSION};
use sha2::{Digest, Sha256};

/// (projection version, fingerprint). Add a row with each bump; never edit an old one.
/// Version 2 is the test-only `variant-v2` feature's.
const RECORDED: &[(u32, &str)] = &[
    (
        1,
        "6175ad1854a5c215b32f5d816e53de23e7f15c7bd8e07486ec432c999eca417e",
    ),
    (
        2,
        "4b1738dbe40e2bbb58fb91ae901569bfb9e9acbc7f5c833e579b1596c2c5f83e",
    ),
];

struct Msg {
    stream: String,
    seq: u64,
    ts_ns: i64,
    subject: String,
    payload: String,
}

fn corpus() -> Vec<Msg> {
    include_str!("version_corpus.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("corpus line is JSON");
            Msg {
                stream: v["stream"].as_str().expect("stream").to_string(),
                seq: v["seq"].as_u64().expect("seq"),
                ts_ns: v["ts_ns"].as_i64().expect("ts_ns"),
                subject: v["subject"].as_str().expect("subject").to_string(),
                payload: v["payload"].as_str().expect("payload").to_string(),
            }
        })
        .collect()
}

fn stored(m: &Msg) -> Stored<'_> {
    Stored {
        stream: &m.stream,
        seq: m.seq,
        ts_ns: m.ts_ns,
        subject: &m.subject,
        content_type: None,
        payload: m.payload.as_bytes(),
    }
}

/// The fingerprint of what the projections write, as lowercase hex SHA-256.
fn fingerprint() -> String {
    let mut h = Sha256::new();
    let mut line = |s: String| {
        h.update(s.as_bytes());
        h.update(b"\n");
    };
    for entry in CATALOG {
        line(format!("catalog {entry:?}"));
    }
    for l in Label::ALL {
        line(format!("label {}", l.as_str()));
    }
    for g in Group::ALL {
        line(format!(
            "group {g:?} {} {:?} {}",
            g.label().as_str(),
            g.props(),
            g.version_prop()
        ));
    }
    for r in Rel::ALL {
        line(format!(
            "rel {r:?} {} {} {}",
            r.rel_type(),
            r.from_label().as_str(),
            r.to_label().as_str()
        ));
    }
    let mut model = GraphModel::default();
    for m in corpus() {
        let out = ingest("", &stored(&m));
        if let Ingested::Projected { projection, .. } = &out {
            model.apply(&projection.graph);
        }
        line(format!("ingest {out:?}"));
    }
    line(format!("model {model:?}"));
    hex::encode(h.finalize())
}

#[test]
fn projection_version_matches_the_fingerprint() {
    let now = fingerprint();
    match RECORDED.iter().find(|(v, _)| *v == PROJECTION_VERSION) {
        Some((_, recorded)) if *recorded == now => {}
        Some((_, recorded)) => panic!(
            "what the projections write changed (fingerprint {now}) but PROJECTION_VERSION is \
             still {PROJECTION_VERSION} (recorded as {recorded}): bump PROJECTION_VERSION in \
             projections/src/version.rs and add ({}, \"{now}\") to RECORDED here",
            PROJECTION_VERSION + 1
        ),
        None => panic!(
            "PROJECTION_VERSION {PROJECTION_VERSION} has no recorded fingerprint: add \
             ({PROJECTION_VERSION}, \"{now}\") to RECORDED"
        ),
    }
    // One version, one output: no two versions may share a fingerprint either.
    for (i, (v, f)) in RECORDED.iter().enumerate() {
        assert!(
            RECORDED[i + 1..].iter().all(|(w, g)| w != v && g != f),
            "version {v} is recorded twice, or shares its fingerprint with another"
        );
    }
}

#[test]
fn the_corpus_covers_every_catalog_subject() {
    let corpus = corpus();
    for (subject, _) in CATALOG {
        assert!(
            corpus.iter().any(|m| m.subject == *subject),
            "version_corpus.jsonl has no {subject} message: add one, so a change to its \
             projection moves the fingerprint"
        );
    }
}
