//! What each message of a group becomes, before any write: projected, parked (it does not
//! decode, or its story has an earlier parked event), or another partition's. Decided
//! through [`projections::ingest`] (the one ingest path) in one deterministic order across
//! the streams: merged by stream time, then stream, each stream in sequence order.

use super::fetch::{Anomaly, Checked, Fetched};
use super::{Worker, WorkerError};
use async_nats::jetstream;
use projections::ingest::{ingest, Ingested, Stored};
use projections::Projection;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
    },
    /// Another partition's event: acked, nothing written (its own worker projects it).
    Elsewhere,
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
            Route::Elsewhere => None,
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
        "story {story} has an earlier parked event ({first}); parked behind it to keep the story's order"
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
            self.refresh_blocked().await;
        }
        let mut batch_blocked: BTreeMap<String, String> = BTreeMap::new();
        let mut items = Vec::with_capacity(checked.len());
        for c in checked {
            let subject = c.msg.subject.to_string();
            let route = self.decide(&c, &subject, &batch_blocked);
            if let Route::Park {
                story_id: Some(story),
                ..
            } = &route
            {
                batch_blocked.entry(story.clone()).or_insert_with(|| {
                    format!(
                        "{}:{}:{}",
                        self.cfg.projector, self.sources[c.src].stream, c.seq
                    )
                });
            }
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
        Ok((items, anomalies))
    }

    /// Drops stories from the block list once an operator retried or discarded their parked
    /// events (`projector dlq`). Checked before each group while the list is non-empty: one
    /// indexed query, and an unblocked story is never parked by a stale list.
    async fn refresh_blocked(&mut self) {
        let stories: Vec<String> = {
            let b = self.sh.blocked.lock().unwrap_or_else(|e| e.into_inner());
            if b.is_empty() {
                return;
            }
            b.keys().cloned().collect()
        };
        match self
            .sh
            .graph
            .still_blocked(&self.cfg.generation, &self.cfg.projector, &stories)
            .await
        {
            Ok(still) => {
                let still: BTreeSet<String> = still.into_iter().collect();
                let mut b = self.sh.blocked.lock().unwrap_or_else(|e| e.into_inner());
                b.retain(|story, _| {
                    let keep = still.contains(story);
                    if !keep {
                        tracing::info!(worker = %self.name, story, "story unblocked: its parked events were retried or discarded");
                    }
                    keep
                });
            }
            // Keeping the list is the safe side: at worst a story stays blocked a while longer.
            Err(e) => {
                tracing::warn!(worker = %self.name, error = %e, "cannot refresh the blocked stories; keeping the list")
            }
        }
    }

    fn decide(
        &self,
        c: &Checked,
        subject: &str,
        batch_blocked: &BTreeMap<String, String>,
    ) -> Route {
        let ct = content_type(&c.msg);
        let stored = Stored {
            stream: &self.sources[c.src].stream,
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
        match ingested {
            Ingested::Rejected { story_id, error } => Route::Park {
                story_id,
                kind: error.kind().to_string(),
                reason: error.to_string(),
                blocked_by: None,
            },
            Ingested::Projected {
                story_id,
                projection,
            } => {
                if let Some(story) = &story_id {
                    let blocked = batch_blocked.get(story).cloned().or_else(|| {
                        self.sh
                            .blocked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(story)
                            .cloned()
                    });
                    if let Some(first) = blocked {
                        return Route::Park {
                            story_id: Some(story.clone()),
                            kind: "story_blocked".into(),
                            reason: blocked_reason(story, &first),
                            blocked_by: Some(first),
                        };
                    }
                }
                Route::Project {
                    projection,
                    story_id,
                }
            }
        }
    }
}
