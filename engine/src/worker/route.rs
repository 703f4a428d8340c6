//! What each message of a group becomes, before any write: projected, parked (it does not
//! decode, Neo4j refused it before, or its story has an earlier parked event on the same
//! stream), discarded by an operator, or another partition's. Decided through
//! [`projections::ingest`] (the one ingest path) and [`projections::blocking`] (the one
//! parking rule, D58), so a replay or rebuild decides each message the same way.

use super::fetch::{Anomaly, Checked, Fetched};
use super::{Worker, WorkerError};
use async_nats::jetstream;
use projections::blocking::Outcome;
use projections::ingest::{ingest, Ingested, Stored};
use projections::Projection;
use std::collections::VecDeque;

/// What a message turned into.
pub(super) enum Route {
    Project {
        projection: Projection,
        story_id: Option<String>,
    },
    Park {
        story_id: Option<String>,
        kind: String,
        reason: String,
        blocked_by: Option<String>,
        /// Parked because Neo4j refused its writes (recorded as a ruling, D59).
        refused: bool,
    },
    /// Another partition's event (its own worker projects it): acked, nothing written.
    Elsewhere,
    /// One an operator discarded (D59): acked, nothing written, counted as `discarded`.
    Discarded,
}

/// A message of a group with its route; it carries its own acknowledgement handle.
pub(super) struct Item {
    /// Index of its stream's source.
    pub src: usize,
    pub msg: jetstream::Message,
    pub seq: u64,
    pub ts_ns: i64,
    pub subject: String,
    pub delivered: i64,
    pub pending: u64,
    pub route: Route,
}

impl Item {
    pub fn story(&self) -> Option<&str> {
        match &self.route {
            Route::Project { story_id, .. } | Route::Park { story_id, .. } => story_id.as_deref(),
            Route::Elsewhere | Route::Discarded => None,
        }
    }

    pub fn content_type(&self) -> Option<String> {
        content_type(&self.msg)
    }
}

fn content_type(msg: &jetstream::Message) -> Option<String> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .map(|v| v.as_str().to_string())
}

/// The reason an event is parked behind an earlier parked event of its story.
pub(super) fn blocked_reason(story: &str, first: &str) -> String {
    format!(
        "story {story} has an earlier parked event on this stream ({first}); parked behind it to keep the story's order"
    )
}

impl Worker {
    /// Checks each stream's sequence, then routes the group's messages in one order.
    pub(super) async fn route(
        &mut self,
        fetched: Vec<Fetched>,
    ) -> Result<(Vec<Item>, Vec<(usize, Anomaly)>), WorkerError> {
        let mut parts: Vec<VecDeque<Checked>> = Vec::new();
        let mut anomalies = Vec::new();
        for f in fetched {
            let src = f.src;
            let (ok, anomaly) = self.check_sequence(f).await?;
            parts.push(ok.into());
            if let Some(a) = anomaly {
                anomalies.push((src, a));
            }
        }
        // Merged by (stream time, stream), always taking the head of a stream's part: the
        // streams interleave as they happened, and each stream keeps its sequence order even
        // if its clock stepped back (a leader moved to a node with another clock).
        let mut checked = Vec::with_capacity(parts.iter().map(VecDeque::len).sum());
        while let Some(i) = (0..parts.len())
            .filter(|&i| !parts[i].is_empty())
            .min_by_key(|&i| {
                let c = &parts[i][0];
                (c.ts_ns, self.sources[c.src].stream.as_str())
            })
        {
            checked.extend(parts[i].pop_front());
        }
        if !checked.is_empty() {
            self.refresh_lifts().await;
        }
        let mut items = Vec::with_capacity(checked.len());
        for c in checked {
            let subject = c.msg.subject.to_string();
            let route = self.decide(&c, &subject);
            items.push(Item {
                src: c.src,
                msg: c.msg,
                seq: c.seq,
                ts_ns: c.ts_ns,
                subject,
                delivered: c.delivered,
                pending: c.pending,
                route,
            });
        }
        let lifted = self
            .sh
            .blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_unblocked();
        for (story, stream, at) in lifted {
            tracing::info!(worker = %self.name, story, stream, lifted_at = at, "story unblocked on this stream: an operator's retry or discard left none of its events parked");
        }
        Ok((items, anomalies))
    }

    /// Reads the lifts an operator's decision recorded (`projector dlq retry|discard`), while
    /// some story is blocked: one query before each group, so a lifted story's next events
    /// project. A lift this misses is caught by the commit's fence (D59).
    async fn refresh_lifts(&mut self) {
        let empty = self
            .sh
            .blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if empty {
            return;
        }
        match self.sh.graph.lifts(&self.cfg.projector).await {
            Ok(lifts) => {
                let mut b = self.sh.blocked.lock().unwrap_or_else(|e| e.into_inner());
                for (stream, story, at) in lifts {
                    b.lift(&stream, &story, at);
                }
            }
            // Keeping the blocks is the safe side: a lift missed here fences the commit.
            Err(e) => {
                tracing::warn!(worker = %self.name, error = %e, "cannot read the lifted blocks; keeping the list")
            }
        }
    }

    fn decide(&self, c: &Checked, subject: &str) -> Route {
        let ct = content_type(&c.msg);
        let stream = &self.sources[c.src].stream;
        let stored = Stored {
            stream,
            seq: c.seq,
            ts_ns: c.ts_ns,
            subject,
            content_type: ct.as_deref(),
            payload: &c.msg.payload,
        };
        let ingested = ingest(&self.cfg.subject_prefix, &stored);
        if self.cfg.partitions > 1
            && projections::partition_of(ingested.story_id(), self.cfg.partitions)
                != self.cfg.partition
        {
            return Route::Elsewhere;
        }
        let projects = matches!(ingested, Ingested::Projected { .. });
        let outcome = self
            .sh
            .blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decide(
                &self.cfg.projector,
                stream,
                c.seq,
                ingested.story_id(),
                projects,
            );
        route_of(outcome, ingested)
    }
}

/// The route of an ingested message given its outcome under the parking rule.
pub(super) fn route_of(outcome: Outcome, ingested: Ingested) -> Route {
    match (outcome, ingested) {
        (Outcome::Discarded, _) => Route::Discarded,
        (_, Ingested::Rejected { story_id, error }) => Route::Park {
            story_id,
            kind: error.kind().to_string(),
            reason: error.to_string(),
            blocked_by: None,
            refused: false,
        },
        (Outcome::Blocked { by }, Ingested::Projected { story_id, .. }) => Route::Park {
            // A blocked event always has a story; "-" only keeps the reason printable.
            reason: blocked_reason(story_id.as_deref().unwrap_or("-"), &by),
            story_id,
            kind: "story_blocked".into(),
            blocked_by: Some(by),
            refused: false,
        },
        (Outcome::Parked, Ingested::Projected { story_id, .. }) => Route::Park {
            story_id,
            kind: "neo4j_refused".into(),
            reason: "Neo4j refused this event's writes when it was first projected; parked as then (see `projector dlq show`)".into(),
            blocked_by: None,
            refused: true,
        },
        (
            Outcome::Project,
            Ingested::Projected {
                story_id,
                projection,
            },
        ) => Route::Project {
            projection,
            story_id,
        },
    }
}
