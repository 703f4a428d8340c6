//! Prometheus metrics of the projector, registered once and shared by every worker.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All metrics, labelled by projector and stream (and partition where it applies).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// outcome: projected | parked | duplicate | ignored | discarded
    pub events: IntCounterVec,
    pub batch_size: HistogramVec,
    pub batch_seconds: HistogramVec,
    /// From the stream's append of a message to its effects committed and acked.
    pub event_latency: HistogramVec,
    pub checkpoint: IntGaugeVec,
    pub lag: IntGaugeVec,
    pub retries: IntCounterVec,
    pub parked: IntCounterVec,
    /// The parked backlog of the generation being written (its parked records now, by
    /// projector, stream and reason kind), read from the graph: retries and discards made
    /// by `projector dlq` show.
    pub parked_events: IntGaugeVec,
    /// Messages read from a stream's archive mirror because the stream no longer held them.
    pub archive_reads: IntCounterVec,
    pub write_errors: IntCounterVec,
    pub gaps: IntCounterVec,
    /// Checkpoints found past their stream's last sequence (stream deleted and recreated).
    pub stream_resets: IntCounterVec,
    pub lost_messages: IntCounterVec,
    pub outbound: IntCounterVec,
    /// Partitions this instance holds a lease on (after each upkeep round).
    pub partitions_held: IntGaugeVec,
    /// how: expired (the holder stopped refreshing) | handed_over (it gave the partition back)
    pub takeovers: IntCounterVec,
    /// For expired leases: from the old holder's last refresh to the new holder's start.
    pub takeover_gap: HistogramVec,
    /// The configured `[partitions] count`, so an alert can compare it with the partitions
    /// held (`deploy/prometheus/`). Set only when partitions are leased (count > 1).
    pub partitions_configured: IntGaugeVec,
    /// 1 while `/readyz` would answer ready, 0 otherwise; set at each scrape.
    pub ready: IntGauge,
    /// The process's resident set size (Linux `/proc/self/status`), set at each scrape.
    pub resident_memory: IntGauge,
    /// Story views served from Neo4j instead of Valkey, by reason
    /// (`crate::views::Fallback::reason`); every reason exists from the start at zero.
    pub view_cache_fallbacks: IntCounterVec,
    /// Change feeds (`GET /v1/changes`) open on this instance.
    pub feed_clients: IntGauge,
    /// Feeds this instance closed, by reason (`crate::feed::hub::DROP_REASONS`).
    pub feed_dropped: IntCounterVec,
    /// Changelog reads that failed, by what was read (the reader retries).
    pub feed_errors: IntCounterVec,
    /// Events a background rebuild (`run --on-projection-change rebuild`) has put into its
    /// generation, the events it expects in all, and its ETA in seconds (-1: unknown).
    pub rebuild_events: IntCounterVec,
    pub rebuild_expected: IntGaugeVec,
    pub rebuild_eta: IntGaugeVec,
    /// Each step of a projection upgrade (started, built, verified, switched, dropped_old,
    /// refused, warned), by generation.
    pub upgrade_steps: IntCounterVec,
}

/// Kinds of `projector_write_errors_total` and `projector_retries_total` a worker can count:
/// every `WriteError::kind` and `ack`. Created at zero when a worker starts, so a first error
/// is an increase an alert can see, and the series exist for the dashboard.
const WORKER_ERROR_KINDS: &[&str] = &[
    "neo4j_unavailable",
    "neo4j_transient",
    "neo4j_refused",
    "unconfirmed",
    "checkpoint_moved",
    "generation_moved",
    "valkey",
    "nats",
    "ack",
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    histogram_by(r, name, help, buckets, &["projector", "stream"])
}

fn histogram_by(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

/// Fine below 100 ms, where a live projector should be; coarse above (catch-up, outages).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.012, 0.015, 0.020, 0.025, 0.030,
    0.040, 0.050, 0.060, 0.080, 0.100, 0.150, 0.200, 0.300, 0.500, 0.750, 1.0, 2.0, 5.0, 10.0,
    30.0, 60.0, 300.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            events: counter(
                &r,
                "projector_events_total",
                "Events handled, by outcome (projected, parked, duplicate, ignored, discarded by an operator)",
                &["projector", "stream", "subject", "outcome"],
            ),
            batch_size: histogram(
                &r,
                "projector_batch_size",
                "Messages per committed batch",
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
            ),
            batch_seconds: histogram(
                &r,
                "projector_batch_seconds",
                "Time from fetch to ack of a batch",
                prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"),
            ),
            event_latency: histogram(
                &r,
                "projector_event_latency_seconds",
                "From a message's append to its stream (JetStream timestamp) to its effects committed in Neo4j and Valkey and acked",
                LATENCY_BUCKETS.to_vec(),
            ),
            checkpoint: gauge(
                &r,
                "projector_checkpoint_sequence",
                "Last committed stream sequence",
                &["projector", "stream", "partition"],
            ),
            lag: gauge(
                &r,
                "projector_lag",
                "Stream messages not yet committed by this projector",
                &["projector", "stream", "partition"],
            ),
            retries: counter(
                &r,
                "projector_retries_total",
                "Retried writes, by error kind",
                &["projector", "stream", "kind"],
            ),
            parked: counter(
                &r,
                "projector_parked_total",
                "Events parked in the dead-letter stream, by reason kind",
                &["projector", "stream", "kind"],
            ),
            parked_events: gauge(
                &r,
                "projector_parked_events",
                "Parked events of the generation being written (the dead-letter backlog), by projector, stream and reason kind",
                &["projector", "stream", "kind"],
            ),
            archive_reads: counter(
                &r,
                "projector_archive_reads_total",
                "Messages read from a stream's archive mirror because the stream no longer held them (a range healed instead of a gap)",
                &["projector", "stream"],
            ),
            write_errors: counter(
                &r,
                "projector_write_errors_total",
                "Write errors, by kind (transient ones are retried, permanent ones parked)",
                &["projector", "stream", "kind"],
            ),
            gaps: counter(
                &r,
                "projector_gaps_total",
                "Holes found in a stream after the checkpoint (messages removed before projection)",
                &["projector", "stream"],
            ),
            stream_resets: counter(
                &r,
                "projector_stream_resets_total",
                "Starts that found the checkpoint past the stream's last sequence (stream deleted and recreated, or restored from an older backup)",
                &["projector", "stream"],
            ),
            lost_messages: counter(
                &r,
                "projector_lost_messages_total",
                "Messages in detected holes",
                &["projector", "stream"],
            ),
            outbound: counter(
                &r,
                "projector_outbound_total",
                "Outbound events published after commit",
                &["projector", "subject"],
            ),
            partitions_held: gauge(
                &r,
                "projector_partitions_held",
                "Partitions this instance holds a lease on",
                &["projector", "instance"],
            ),
            takeovers: counter(
                &r,
                "projector_partition_takeovers_total",
                "Partitions taken from another instance, by how (expired lease, or handed over)",
                &["projector", "how"],
            ),
            takeover_gap: histogram_by(
                &r,
                "projector_partition_takeover_gap_seconds",
                "For partitions taken over after their lease expired: seconds from the old holder's last refresh to the new holder's start (how long the partition had no writer)",
                vec![0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0],
                &["projector"],
            ),
            partitions_configured: gauge(
                &r,
                "projector_partitions_configured",
                "The configured partition count ([partitions] count), when partitions are leased",
                &["projector"],
            ),
            ready: {
                let g = IntGauge::new(
                    "projector_ready",
                    "1 while /readyz reports ready (every worker connected, none halted, lag under --ready-lag; a standby holding no partition is ready), else 0",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            resident_memory: {
                let g = IntGauge::new(
                    "process_resident_memory_bytes",
                    "Resident memory size of the projector process in bytes",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            view_cache_fallbacks: {
                let c = counter(
                    &r,
                    "projector_view_cache_fallbacks_total",
                    "Story views read from Neo4j instead of Valkey, by reason (unavailable, unreadable, stale, missing, no_cache)",
                    &["reason"],
                );
                for f in crate::views::Fallback::ALL {
                    c.with_label_values(&[f.reason()]);
                }
                c
            },
            feed_clients: {
                let g = IntGauge::new(
                    "projector_feed_clients",
                    "Change feeds (GET /v1/changes) open on this instance",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            feed_dropped: {
                let c = counter(
                    &r,
                    "projector_feed_dropped_total",
                    "Change feeds closed by this instance, by reason (slow_client, too_many, shutdown)",
                    &["reason"],
                );
                for reason in crate::feed::hub::DROP_REASONS {
                    c.with_label_values(&[reason]);
                }
                c
            },
            feed_errors: counter(
                &r,
                "projector_feed_errors_total",
                "Changelog reads from Valkey that failed (retried), by what was read",
                &["read"],
            ),
            rebuild_events: counter(
                &r,
                "projector_rebuild_events_total",
                "Events a background rebuild has projected into its generation",
                &["generation"],
            ),
            rebuild_expected: gauge(
                &r,
                "projector_rebuild_expected_events",
                "Events a background rebuild expects to project in all (the streams' last sequences when it started)",
                &["generation"],
            ),
            rebuild_eta: gauge(
                &r,
                "projector_rebuild_eta_seconds",
                "Estimated seconds until a background rebuild has read what it expects (-1: unknown yet)",
                &["generation"],
            ),
            upgrade_steps: counter(
                &r,
                "projector_upgrade_steps_total",
                "Steps of projection upgrades (started, built, verified, switched, dropped_old, refused, warned)",
                &["generation", "step"],
            ),
            registry: r,
        }
    }

    /// Creates a worker's counters at zero (errors by kind, gaps, lost messages): a counter
    /// that first appears at 1 is invisible to `increase()`, and a dashboard needs the series.
    pub fn init_worker(&self, projector: &str, stream: &str) {
        self.gaps.with_label_values(&[projector, stream]);
        self.archive_reads.with_label_values(&[projector, stream]);
        self.lost_messages.with_label_values(&[projector, stream]);
        for kind in WORKER_ERROR_KINDS {
            self.write_errors
                .with_label_values(&[projector, stream, kind]);
            self.retries.with_label_values(&[projector, stream, kind]);
        }
    }

    /// Partitioned runs: the configured count, and the takeover and lease series at zero.
    pub fn init_partitioned(&self, projector: &str, count: u32) {
        self.partitions_configured
            .with_label_values(&[projector])
            .set(i64::from(count));
        for how in ["expired", "handed_over"] {
            self.takeovers.with_label_values(&[projector, how]);
        }
        self.takeover_gap.with_label_values(&[projector]);
        self.write_errors
            .with_label_values(&[projector, "-", "lease"]);
    }

    /// Events counted so far by outcome (`projected`, `parked`, `duplicate`, `ignored`),
    /// over every projector, stream and subject: a finished run's summary.
    pub fn events_by_outcome(&self) -> std::collections::BTreeMap<String, u64> {
        use prometheus::core::Collector;
        let mut out = std::collections::BTreeMap::new();
        for family in self.events.collect() {
            for m in family.get_metric() {
                let outcome = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "outcome")
                    .map(|l| l.value().to_string());
                if let Some(o) = outcome {
                    *out.entry(o).or_insert(0) += m.get_counter().get_value() as u64;
                }
            }
        }
        out
    }

    /// Drops the lag and checkpoint of a partition this instance no longer holds: its new
    /// holder reports them, and a frozen copy here would keep a lag alert firing.
    pub fn forget_partition(&self, projector: &str, stream: &str, partition: u32) {
        let p = partition.to_string();
        for g in [&self.lag, &self.checkpoint] {
            // Absent when the worker stopped before its first batch: nothing to forget.
            if g.remove_label_values(&[projector, stream, &p]).is_err() {
                tracing::debug!(projector, stream, partition, "no lag series to drop");
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        match resident_bytes() {
            Some(b) => self.resident_memory.set(b),
            // Not Linux (no /proc): the gauge stays at 0 rather than failing the scrape.
            None => tracing::debug!("resident memory unknown (no /proc/self/status)"),
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// VmRSS from `/proc/self/status`, in bytes.
fn resident_bytes() -> Option<i64> {
    // No /proc (not Linux): unknown, which `render` says in a debug line.
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    // A line of another shape: unknown, as above.
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialised_series_are_rendered_at_zero_and_forgotten_lag_is_gone() {
        let m = Metrics::new();
        m.init_worker("graph", "S");
        m.init_partitioned("graph", 6);
        m.lag.with_label_values(&["graph", "S", "2"]).set(40);
        let text = m.render();
        for name in [
            "projector_gaps_total{projector=\"graph\",stream=\"S\"} 0",
            "projector_write_errors_total{kind=\"valkey\",projector=\"graph\",stream=\"S\"} 0",
            "projector_partition_takeovers_total{how=\"expired\",projector=\"graph\"} 0",
            "projector_partitions_configured{projector=\"graph\"} 6",
            "projector_lag{partition=\"2\",projector=\"graph\",stream=\"S\"} 40",
            "projector_ready 0",
            "projector_view_cache_fallbacks_total{reason=\"unavailable\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
        if cfg!(target_os = "linux") {
            assert!(!text.contains("process_resident_memory_bytes 0"), "{text}");
        }
        m.forget_partition("graph", "S", 2);
        assert!(!m.render().contains("projector_lag{"));
    }
}
