//! The graph sink against the real Neo4j: a commit of several streams is one transaction
//! (every checkpoint moves or none, and nothing of the batch is written when one is stale).

mod common;

use common::TestConfig;
use engine::error::WriteError;
use engine::sink::graph::{
    CheckpointKey, CheckpointMove, Commit, GraphSink, OutboxEntry, ParkedRecord,
};
use projections::ingest::{ingest, Ingested, Stored};
use projections::{CompactBatch, Outbound};

/// A batch holding story `id` (created), as the committer builds it from a stored message.
fn story_batch(t: &TestConfig, stream: &str, seq: u64, id: &str) -> CompactBatch {
    let subject = format!("{}planning.story.created", t.cfg.subject_prefix);
    let payload = format!(r#"{{"story_id":"{id}","title":"Login"}}"#);
    let m = Stored {
        stream,
        seq,
        ts_ns: 1_000 + seq as i64,
        subject: &subject,
        content_type: None,
        payload: payload.as_bytes(),
    };
    let Ingested::Projected { projection, .. } = ingest(&t.cfg.subject_prefix, &m) else {
        panic!("the sample event decodes");
    };
    let mut b = CompactBatch::default();
    b.extend(&projection.graph);
    b
}

fn mv(key: &CheckpointKey, expected: u64, seq: u64) -> CheckpointMove {
    CheckpointMove {
        key: key.clone(),
        expected,
        seq,
        ts_ns: 1_000 + seq as i64,
        back: false,
    }
}

fn parked(stream: &str, seq: u64, story: &str) -> ParkedRecord {
    ParkedRecord {
        stream: stream.into(),
        seq,
        subject: "planning.story.created".into(),
        story_id: Some(story.into()),
        kind: "decode".into(),
        reason: "test".into(),
        blocked_by: None,
        dlq_seq: 1,
        ts_ns: 1_000 + seq as i64,
        refused: false,
    }
}

fn outbox(stream: &str, id: &str) -> OutboxEntry {
    OutboxEntry {
        stream: stream.into(),
        event: Outbound {
            msg_id: id.into(),
            subject: "context.updated".into(),
            payload: b"{}".to_vec(),
        },
    }
}

struct Sink {
    t: TestConfig,
    g: GraphSink,
    gen: String,
    a: CheckpointKey,
    b: CheckpointKey,
}

async fn sink() -> Sink {
    let t = TestConfig::new();
    let g = GraphSink::for_config(&t.cfg).unwrap();
    g.ensure_schema().await.unwrap();
    let gen = t.main_gen();
    let (a, b) = (t.stream("A_EVENTS"), t.stream("B_EVENTS"));
    Sink {
        a: CheckpointKey::new("p", &a, 0),
        b: CheckpointKey::new("p", &b, 0),
        t,
        g,
        gen,
    }
}

impl Sink {
    async fn positions(&self) -> (Option<u64>, Option<u64>) {
        (
            self.g.checkpoint(&self.gen, &self.a).await.unwrap(),
            self.g.checkpoint(&self.gen, &self.b).await.unwrap(),
        )
    }

    async fn pending(&self, key: &CheckpointKey) -> Vec<String> {
        let out = self.g.outbox_pending(&self.gen, key).await.unwrap();
        out.into_iter().map(|o| o.msg_id).collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_streams_checkpoints_commit_together_with_their_writes() {
    let s = sink().await;
    let story = format!("US-{}", s.t.tag);
    let batch = story_batch(&s.t, &s.a.stream, 5, &story);
    let c = Commit {
        batch: &batch,
        parked: &[parked(&s.b.stream, 3, &story)],
        outbox: &[outbox(&s.a.stream, "o-a"), outbox(&s.b.stream, "o-b")],
        // Given out of key order: the sink orders them itself.
        moves: &[mv(&s.b, 0, 3), mv(&s.a, 0, 5)],
        fence_live: true,
    };
    s.g.commit(&s.gen, &c).await.unwrap();
    assert_eq!(s.positions().await, (Some(5), Some(3)));
    assert_eq!(s.g.checkpoint_ts(&s.gen, &s.a).await.unwrap(), Some(1_005));
    assert_eq!(s.g.story_ids(&s.gen).await.unwrap(), vec![story.clone()]);
    // Moved by the write and by the parked record of the same story (its view says
    // "blocked" now, D63).
    assert_eq!(s.g.story_rev(&s.gen, &story).await.unwrap(), Some(2));
    // Each outbox entry is drained with the stream whose event produced it.
    assert_eq!(s.pending(&s.a).await, vec!["o-a"]);
    assert_eq!(s.pending(&s.b).await, vec!["o-b"]);
    let p = s.g.parked(&s.gen, Some("p")).await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].stream.as_str(), p[0].seq), (s.b.stream.as_str(), 3));
    assert_eq!(p[0].story_id.as_deref(), Some(story.as_str()));

    // And on from there: both advance again from where they are.
    let empty = CompactBatch::default();
    let c = Commit {
        batch: &empty,
        parked: &[],
        outbox: &[],
        moves: &[mv(&s.a, 5, 7), mv(&s.b, 3, 4)],
        fence_live: true,
    };
    s.g.commit(&s.gen, &c).await.unwrap();
    assert_eq!(s.positions().await, (Some(7), Some(4)));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_stale_checkpoint_fails_the_whole_commit_and_nothing_is_written() {
    let s = sink().await;
    let empty = CompactBatch::default();
    let start = Commit {
        batch: &empty,
        parked: &[],
        outbox: &[],
        moves: &[mv(&s.a, 0, 5), mv(&s.b, 0, 3)],
        fence_live: false,
    };
    s.g.commit(&s.gen, &start).await.unwrap();

    let story = format!("US-{}", s.t.tag);
    let batch = story_batch(&s.t, &s.a.stream, 6, &story);
    let parked = [parked(&s.b.stream, 4, &story)];
    let out = [outbox(&s.a.stream, "o-a"), outbox(&s.b.stream, "o-b")];
    // A's move is right, B's writer read 2 where another writer has since moved it to 3.
    let stale = Commit {
        batch: &batch,
        parked: &parked,
        outbox: &out,
        moves: &[mv(&s.a, 5, 6), mv(&s.b, 2, 4)],
        fence_live: false,
    };
    match s.g.commit(&s.gen, &stale).await {
        Err(WriteError::CheckpointMoved { id, expected }) => {
            assert_eq!((id, expected), (s.b.id(), 2));
        }
        other => panic!("expected CheckpointMoved for {}, got {other:?}", s.b.id()),
    }
    assert_eq!(
        s.positions().await,
        (Some(5), Some(3)),
        "A did not move either"
    );
    assert!(s.g.story_ids(&s.gen).await.unwrap().is_empty());
    assert!(s.g.story_rev(&s.gen, &story).await.unwrap().is_none());
    assert!(s.g.parked(&s.gen, None).await.unwrap().is_empty());
    assert!(s.pending(&s.a).await.is_empty() && s.pending(&s.b).await.is_empty());

    // Both stale: the error names the first in key id order, whatever the order given.
    let both = Commit {
        moves: &[mv(&s.b, 1, 4), mv(&s.a, 1, 6)],
        ..stale
    };
    match s.g.commit(&s.gen, &both).await {
        Err(WriteError::CheckpointMoved { id, .. }) => assert_eq!(id, s.a.id()),
        other => panic!("expected CheckpointMoved, got {other:?}"),
    }

    // A live writer of a generation that is not live is fenced off, nothing written.
    let fenced = Commit {
        moves: &[mv(&s.a, 5, 6)],
        fence_live: true,
        ..stale
    };
    match s.g.commit("not-live", &fenced).await {
        Err(WriteError::GenerationMoved { from, to }) => {
            assert_eq!((from.as_str(), to), ("not-live", s.gen.clone()))
        }
        other => panic!("expected GenerationMoved, got {other:?}"),
    }
    assert_eq!(s.positions().await, (Some(5), Some(3)));
}

/// Issue #17: a commit after a partly applied one (the Valkey step failed, then the group
/// was committed one event at a time) moved the checkpoint back over written events.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_never_moves_back_unless_the_move_says_so() {
    let s = sink().await;
    let empty = CompactBatch::default();
    let at = |moves: &[CheckpointMove]| -> Vec<CheckpointMove> { moves.to_vec() };
    let start = at(&[mv(&s.a, 0, 5)]);
    let c = Commit {
        batch: &empty,
        parked: &[],
        outbox: &[],
        moves: &start,
        fence_live: false,
    };
    s.g.commit(&s.gen, &c).await.unwrap();

    let story = format!("US-{}", s.t.tag);
    let batch = story_batch(&s.t, &s.a.stream, 3, &story);
    let back = at(&[mv(&s.a, 5, 3)]);
    let c = Commit {
        batch: &batch,
        moves: &back,
        ..c
    };
    match s.g.commit(&s.gen, &c).await {
        Err(e @ WriteError::Neo4jRefused { .. }) => {
            assert_eq!(e.action(), engine::error::Action::Halt, "{e}");
            assert!(e.to_string().contains("would move back from 5 to 3"), "{e}");
        }
        other => panic!("expected a refused move backwards, got {other:?}"),
    }
    assert_eq!(s.positions().await.0, Some(5));
    assert!(s.g.story_ids(&s.gen).await.unwrap().is_empty());

    // An accepted stream reset moves it back, as asked.
    let reset = at(&[CheckpointMove {
        back: true,
        ..mv(&s.a, 5, 0)
    }]);
    let c = Commit {
        batch: &empty,
        moves: &reset,
        ..c
    };
    s.g.commit(&s.gen, &c).await.unwrap();
    assert_eq!(s.positions().await.0, Some(0));
}
