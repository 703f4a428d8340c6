//! The parking rule every path applies (live, replay, rebuild, `--as-of`, DLQ retry): what a
//! message becomes given its stream's earlier messages and the recorded decisions (D58).
//!
//! A parked event blocks the later events of its story **on its own stream** only: a stream's
//! order is total and every path reads each stream in that order, while the interleaving of
//! two streams differs between concurrent stream workers, grouped transactions and replays.
//! So an outcome depends only on (stream, earlier sequences of that stream, decisions), never
//! on timing. A block ends at a recorded [`Lift`]: after an operator's retry or discard left
//! no parked event of the story on that stream, the events after the lift's position project.
//!
//! Decisions that the input alone does not give are recorded once, for every generation
//! ([`Ruling`]): a write Neo4j refused (the projector parked it), an operator's discard, an
//! operator's retry.
//!
//! ```
//! use projections::blocking::{Blocks, Outcome, Ruling};
//! let mut b = Blocks::default();
//! // S's event 5 does not decode: parked by input; it blocks S on stream A.
//! assert_eq!(b.decide("p", "A", 5, Some("S"), false), Outcome::Parked);
//! assert_eq!(
//!     b.decide("p", "A", 6, Some("S"), true),
//!     Outcome::Blocked { by: "p:A:5".into() }
//! );
//! // Another stream of S is not blocked: its order relative to A is not total.
//! assert_eq!(b.decide("p", "B", 2, Some("S"), true), Outcome::Project);
//! // An operator retried event 6: it projects on every path.
//! b.rule("A", 6, Ruling::RETRIED);
//! assert_eq!(b.decide("p", "A", 6, Some("S"), true), Outcome::Project);
//! // The block was lifted at A's sequence 9: event 10 projects.
//! b.lift("A", "S", 9);
//! assert_eq!(b.decide("p", "A", 10, Some("S"), true), Outcome::Project);
//! ```

use std::collections::BTreeMap;

/// An operator's decision about one parked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Dropped: not projected, not parked.
    Discarded,
    /// Re-projected: projected, whatever blocked it.
    Retried,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Discarded => "discard",
            Decision::Retried => "retry",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "discard" => Some(Decision::Discarded),
            "retry" => Some(Decision::Retried),
            _ => None,
        }
    }
}

/// What is recorded about one message (projector, stream, sequence) beyond its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ruling {
    /// Neo4j refused its writes and the projector parked it: every path parks it too (and it
    /// blocks its story's later events on its stream), unless an operator decided otherwise.
    pub refused: bool,
    /// The operator's last decision about it.
    pub decision: Option<Decision>,
}

impl Ruling {
    pub const RETRIED: Ruling = Ruling {
        refused: false,
        decision: Some(Decision::Retried),
    };
    pub const DISCARDED: Ruling = Ruling {
        refused: false,
        decision: Some(Decision::Discarded),
    };
    pub const REFUSED: Ruling = Ruling {
        refused: true,
        decision: None,
    };
}

/// What a message becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its projection is applied.
    Project,
    /// Parked for itself: it does not decode, or Neo4j refused it ([`Ruling::refused`]).
    Parked,
    /// Parked behind an earlier parked event of its story on the same stream.
    Blocked { by: String },
    /// An operator discarded it: nothing is written, nothing stays parked.
    Discarded,
}

/// The block a story has on one stream: the first event of it that was parked (even if an
/// operator discarded or retried it since: what it blocked stays blocked until a lift).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub id: String,
    pub seq: u64,
}

/// Blocks per (story, stream) and the recorded lifts, for one projector.
#[derive(Debug, Clone, Default)]
pub struct Blocks {
    blocked: BTreeMap<(String, String), Blocker>,
    /// (stream, story) -> positions at which an operator's decision lifted the block.
    lifts: BTreeMap<(String, String), Vec<u64>>,
    /// (stream, seq) -> what is recorded about that message.
    rulings: BTreeMap<(String, u64), Ruling>,
    /// Blocks a lift ended since [`Blocks::take_unblocked`] was last called:
    /// (story, stream, lift position).
    unblocked: Vec<(String, String, u64)>,
}

/// The id of a parked event: `projector:stream:seq`.
pub fn parked_id(projector: &str, stream: &str, seq: u64) -> String {
    format!("{projector}:{stream}:{seq}")
}

/// The sequence of a parked event id (its last `:` field).
pub fn seq_of_id(id: &str) -> Option<u64> {
    // Not a number: not an id this crate made (the caller says what it expected).
    id.rsplit(':').next()?.parse().ok()
}

impl Blocks {
    /// Decides message (`stream`, `seq`) of `story`. `projects` says whether it decodes
    /// (ingest projected it). Records the block it starts.
    pub fn decide(
        &mut self,
        projector: &str,
        stream: &str,
        seq: u64,
        story: Option<&str>,
        projects: bool,
    ) -> Outcome {
        let ruling = self.ruling(stream, seq);
        let blocker = story.and_then(|s| self.blocker(stream, s, seq));
        let initial = match (projects && !ruling.refused, &blocker) {
            (false, _) => Outcome::Parked,
            (true, Some(b)) => Outcome::Blocked { by: b.id.clone() },
            (true, None) => Outcome::Project,
        };
        if let (Some(s), None, Outcome::Parked | Outcome::Blocked { .. }) =
            (story, &blocker, &initial)
        {
            self.blocked.insert(
                (s.to_string(), stream.to_string()),
                Blocker {
                    id: parked_id(projector, stream, seq),
                    seq,
                },
            );
        }
        match (ruling.decision, initial) {
            (Some(Decision::Discarded), _) => Outcome::Discarded,
            // A retry is recorded only when the event projected.
            (Some(Decision::Retried), _) if projects => Outcome::Project,
            (_, o) => o,
        }
    }

    /// What is recorded about message (`stream`, `seq`) (nothing: the default).
    pub fn ruling(&self, stream: &str, seq: u64) -> Ruling {
        self.rulings
            .get(&(stream.to_string(), seq))
            .copied()
            // Nothing recorded: the input alone decides.
            .unwrap_or_default()
    }

    /// Records what is known about message (`stream`, `seq`).
    pub fn rule(&mut self, stream: &str, seq: u64, ruling: Ruling) {
        self.rulings.insert((stream.to_string(), seq), ruling);
    }

    /// The block on (`story`, `stream`) that applies to sequence `seq`, dropping one a
    /// lift ended before `seq`.
    pub fn blocker(&mut self, stream: &str, story: &str, seq: u64) -> Option<Blocker> {
        let key = (story.to_string(), stream.to_string());
        let b = self.blocked.get(&key)?.clone();
        let lift = self
            .lifts
            .get(&(stream.to_string(), story.to_string()))
            .and_then(|ats| ats.iter().copied().find(|&at| b.seq <= at && at < seq));
        if let Some(at) = lift {
            self.blocked.remove(&key);
            self.unblocked
                .push((story.to_string(), stream.to_string(), at));
            return None;
        }
        Some(b)
    }

    /// The blocks lifts ended since the last call: (story, stream, lift position).
    pub fn take_unblocked(&mut self) -> Vec<(String, String, u64)> {
        std::mem::take(&mut self.unblocked)
    }

    /// Records that (`story`, `stream`) was unblocked at stream position `at`.
    pub fn lift(&mut self, stream: &str, story: &str, at: u64) {
        let ats = self
            .lifts
            .entry((stream.to_string(), story.to_string()))
            .or_default();
        if !ats.contains(&at) {
            ats.push(at);
        }
    }

    /// Sets the block of (`story`, `stream`) unless it has one (start-up, from the parked
    /// records of a generation).
    pub fn block(&mut self, stream: &str, story: &str, blocker: Blocker) {
        self.blocked
            .entry((story.to_string(), stream.to_string()))
            .or_insert(blocker);
    }

    /// Forgets the blocks of `stream` whose story `keep` rejects (a worker reloading its
    /// own streams and partition).
    pub fn clear_stream(&mut self, stream: &str, mut keep: impl FnMut(&str) -> bool) {
        self.blocked
            .retain(|(story, s), _| s != stream || keep(story));
    }

    /// Whether anything is blocked (lifts are re-read only then).
    pub fn is_empty(&self) -> bool {
        self.blocked.is_empty()
    }

    /// The (story, stream) pairs blocked now.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.blocked.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_holds_until_a_lift_after_its_blocker_and_before_the_event() {
        let mut b = Blocks::default();
        assert_eq!(b.decide("p", "A", 5, Some("S"), false), Outcome::Parked);
        // A lift before the blocker ends nothing.
        b.lift("A", "S", 3);
        let blocked = Outcome::Blocked { by: "p:A:5".into() };
        assert_eq!(b.decide("p", "A", 6, Some("S"), true), blocked);
        b.lift("A", "S", 7);
        // Sequence 7 was at or before the lift: still behind.
        assert_eq!(b.decide("p", "A", 7, Some("S"), true), blocked);
        assert_eq!(b.decide("p", "A", 8, Some("S"), true), Outcome::Project);
        // A new parked event starts a new block.
        assert_eq!(b.decide("p", "A", 9, Some("S"), false), Outcome::Parked);
        assert_eq!(
            b.decide("p", "A", 10, Some("S"), true),
            Outcome::Blocked { by: "p:A:9".into() }
        );
    }

    #[test]
    fn rulings_decide_what_the_input_does_not() {
        let mut b = Blocks::default();
        b.rule("A", 1, Ruling::REFUSED);
        assert_eq!(b.decide("p", "A", 1, Some("S"), true), Outcome::Parked);
        b.rule("A", 2, Ruling::DISCARDED);
        assert_eq!(b.decide("p", "A", 2, Some("S"), true), Outcome::Discarded);
        assert_eq!(
            b.decide("p", "A", 3, Some("S"), true),
            Outcome::Blocked { by: "p:A:1".into() }
        );
        b.rule("A", 4, Ruling::RETRIED);
        assert_eq!(b.decide("p", "A", 4, Some("S"), true), Outcome::Project);
        // A story-less message parks for itself and blocks nothing.
        assert_eq!(b.decide("p", "A", 5, None, false), Outcome::Parked);
        assert_eq!(seq_of_id("p:A:17"), Some(17));
        assert_eq!(
            Decision::parse(Decision::Retried.as_str()),
            Some(Decision::Retried)
        );
    }
}
