//! Prometheus metrics of the projector, registered once and shared by every worker.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics, labelled by projector and stream (and partition where it applies).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// outcome: projected | parked | duplicate | ignored
    pub events: IntCounterVec,
    pub batch_size: HistogramVec,
    pub batch_seconds: HistogramVec,
    /// From the stream's append of a message to its effects committed and acked.
    pub event_latency: HistogramVec,
    pub checkpoint: IntGaugeVec,
    pub lag: IntGaugeVec,
    pub retries: IntCounterVec,
    pub parked: IntCounterVec,
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
}

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
                "Events handled, by outcome (projected, parked, duplicate, ignored)",
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
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
