//! What a committed group tells the operator: per event an outcome counter
//! (`projector_events_total`), per parked event a WARN line with its reason and the
//! `projector_parked_total` counter, per stream the lag, checkpoint, batch size and latency.

use super::route::{Item, Route};
use super::Worker;
use std::collections::BTreeMap;
use std::time::Instant;

impl Worker {
    /// Sets a stream's lag and checkpoint gauges and its health entry.
    pub(super) fn set_lag(&self, src: usize, lag: u64) {
        let s = &self.sources[src];
        let p = self.cfg.partition.to_string();
        let l = [self.cfg.projector.as_str(), s.stream.as_str(), p.as_str()];
        self.sh.metrics.lag.with_label_values(&l).set(lag as i64);
        self.sh
            .metrics
            .checkpoint
            .with_label_values(&l)
            .set(s.checkpoint as i64);
        let (stream, ckpt) = (s.stream.clone(), s.checkpoint);
        self.sh.health.update(&s.name, |h| {
            h.lag = lag;
            h.stream = stream;
            h.checkpoint = ckpt;
        });
    }

    /// Metrics and logs of a committed group (after its acks).
    pub(super) fn committed(&self, items: &[Item], started: Instant) {
        // Per stream: (events, lag after the group, parked, first sequence).
        let mut per_stream: BTreeMap<usize, (usize, u64, usize, u64)> = BTreeMap::new();
        for it in items {
            let stream = &self.sources[it.src].stream;
            let e = per_stream.entry(it.src).or_insert((0, 0, 0, it.seq));
            e.0 += 1;
            e.1 = it.pending;
            e.3 = e.3.min(it.seq);
            let outcome = match &it.route {
                // Counted by the partition that owns it.
                Route::Elsewhere => continue,
                // Left out as an operator decided; said once per event, not silently.
                Route::Discarded => {
                    tracing::info!(worker = %self.name, stream = %stream, seq = it.seq, subject = %it.subject, "left out: an operator discarded this event (dlq discard)");
                    "discarded"
                }
                Route::Project { projection, .. } if projection.graph.is_empty() => "ignored",
                Route::Project { .. } => "projected",
                Route::Park {
                    kind,
                    reason,
                    story_id,
                    ..
                } => {
                    e.2 += 1;
                    self.sh
                        .metrics
                        .parked
                        .with_label_values(&[&self.cfg.projector, stream, kind])
                        .inc();
                    tracing::warn!(worker = %self.name, stream = %stream, seq = it.seq, subject = %it.subject, story = ?story_id, kind = %kind, reason = %reason, "parked in the dead-letter stream");
                    "parked"
                }
            };
            let subject = it
                .subject
                .strip_prefix(self.cfg.subject_prefix.as_str())
                // An unprefixed (unknown) subject is counted under its own name.
                .unwrap_or(&it.subject);
            self.sh
                .metrics
                .events
                .with_label_values(&[&self.cfg.projector, stream, subject, outcome])
                .inc();
        }
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            // A clock before 1970: latencies read as 0 (clamped below), nothing else is lost.
            .map_or(0, |d| d.as_nanos() as i64);
        for it in items
            .iter()
            .filter(|it| !matches!(it.route, Route::Elsewhere | Route::Discarded))
        {
            let labels = [self.cfg.projector.as_str(), &self.sources[it.src].stream];
            // Clocks of the NATS server and this host; negative skew is clamped to zero.
            self.sh
                .metrics
                .event_latency
                .with_label_values(&labels)
                .observe((now_ns - it.ts_ns).max(0) as f64 / 1e9);
        }
        for (&src, &(n, lag, parked, first)) in &per_stream {
            let labels = [self.cfg.projector.as_str(), &self.sources[src].stream];
            self.sh
                .metrics
                .batch_size
                .with_label_values(&labels)
                .observe(n as f64);
            self.sh
                .metrics
                .batch_seconds
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
            self.set_lag(src, lag);
            // tests/deploy.rs reads these lines: each stream's committed range.
            tracing::debug!(worker = %self.sources[src].name, first, last = self.sources[src].checkpoint, events = n, parked, lag, "batch committed");
        }
    }
}
