//! Progress of a build into a generation, read from the outside: the generation's stored
//! checkpoints against the streams' last sequences. Builds already move those checkpoints
//! with every committed batch, so watching them needs nothing from the build itself (the
//! same watcher serves `rebuild`, `verify --against-rebuild` and the background rebuild of
//! `run --on-projection-change rebuild`; docs/decisions.md D73).

use engine::error::WriteError;
use engine::sink::graph::{CheckpointKey, GraphSink};
use std::time::{Duration, Instant};

/// One reading of a build's progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub generation: String,
    /// Messages read into the generation (its checkpoints, summed over the streams).
    pub done: u64,
    /// Messages it will have read when caught up with the streams as they were at the start.
    pub expected: u64,
    /// Messages per second since the watch started.
    pub events_per_sec: f64,
    /// Seconds left at that rate; `None` until something was read.
    pub eta_secs: Option<f64>,
}

/// The rate and ETA of `done` out of `expected`, `elapsed` after a start at `start_done`.
///
/// ```
/// use replay::progress::estimate;
/// use std::time::Duration;
/// let (rate, eta) = estimate(600, 1000, 100, Duration::from_secs(10));
/// assert_eq!(rate, 50.0);
/// assert_eq!(eta, Some(8.0));
/// assert_eq!(estimate(100, 1000, 100, Duration::from_secs(10)).1, None);
/// assert_eq!(estimate(1200, 1000, 0, Duration::from_secs(10)).1, Some(0.0));
/// ```
pub fn estimate(
    done: u64,
    expected: u64,
    start_done: u64,
    elapsed: Duration,
) -> (f64, Option<f64>) {
    let read = done.saturating_sub(start_done);
    let secs = elapsed.as_secs_f64();
    if read == 0 || secs <= 0.0 {
        return (0.0, None);
    }
    let rate = read as f64 / secs;
    (rate, Some(expected.saturating_sub(done) as f64 / rate))
}

/// What to watch: a projector's streams in one generation.
pub struct Watch {
    pub graph: GraphSink,
    pub js: async_nats::jetstream::Context,
    pub projector: String,
    pub streams: Vec<String>,
    pub generation: String,
}

impl Watch {
    /// The messages the streams hold now (their last sequences, summed).
    pub async fn expected(&self) -> Result<u64, WriteError> {
        let mut total = 0;
        for s in &self.streams {
            total += engine::source::bounds(&self.js, s).await?.1;
        }
        Ok(total)
    }

    /// The messages read into the generation so far (partition 0 is where a build reads).
    pub async fn done(&self) -> Result<u64, WriteError> {
        let mut total = 0;
        for s in &self.streams {
            total += self
                .graph
                .checkpoint(&self.generation, &CheckpointKey::new(&self.projector, s, 0))
                .await?
                // No checkpoint yet: nothing of the stream read.
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Reports every `every` until the returned task is aborted. A reading that fails is
    /// logged and skipped: progress is information, the build itself reports its errors.
    pub fn spawn(
        self,
        every: Duration,
        mut on_report: impl FnMut(Report) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let started = Instant::now();
            let (expected, start_done) = match (self.expected().await, self.done().await) {
                (Ok(e), Ok(d)) => (e, d),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(generation = %self.generation, error = %e, "cannot read the build's progress; no progress is shown");
                    return;
                }
            };
            loop {
                tokio::time::sleep(every).await;
                match self.done().await {
                    Ok(done) => {
                        let (rate, eta) = estimate(done, expected, start_done, started.elapsed());
                        on_report(Report {
                            generation: self.generation.clone(),
                            done: done.min(expected),
                            expected,
                            events_per_sec: rate,
                            eta_secs: eta,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(generation = %self.generation, error = %e, "cannot read the build's progress this time")
                    }
                }
            }
        })
    }
}

/// One line of a report: `gen: done/expected events, N events/s, eta Ss`.
pub fn summary(r: &Report) -> String {
    let eta = match r.eta_secs {
        Some(s) => format!("eta {}s", s.ceil() as u64),
        None => "eta unknown".into(),
    };
    format!(
        "{}: {}/{} events, {:.0} events/s, {eta}",
        r.generation, r.done, r.expected, r.events_per_sec
    )
}
