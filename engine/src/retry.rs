//! Capped exponential backoff with full jitter, and the one retry loop ([`Retrier`]).

use crate::error::{Action, WriteError};
use crate::health::Health;
use crate::metrics::Metrics;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// Backoff schedule: attempt n waits a random time in [0, min(cap, base * 2^n)].
///
/// ```
/// use engine::retry::Backoff;
/// let b = Backoff::default();
/// for n in 0..40 { assert!(b.delay(n) <= b.cap); }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.cap);
        // Jitter spreads retries of many workers; it never reaches projected state.
        let nanos = rand::random_range(0..=exp.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }
}

/// Runs a step again while it fails with [`Action::Retry`], with [`Backoff`] between
/// attempts, until it succeeds, fails otherwise, shutdown is requested or the attempts run
/// out; then the last error is returned. Each failure is counted
/// (`projector_write_errors_total`, `projector_retries_total`) and logged with its context,
/// and the worker's health shows it until a retry succeeds.
///
/// The one retry loop of the engine: the committer, start-up and replays all use it.
#[derive(Clone)]
pub struct Retrier {
    backoff: Backoff,
    shutdown: Option<watch::Receiver<bool>>,
    /// `(metrics, [projector, stream])`: the labels failures are counted under.
    metrics: Option<(Metrics, [String; 2])>,
    /// `(health, worker names)`: the entries whose `connected`/`last_error` it keeps.
    health: Option<(Health, Vec<String>)>,
    max_attempts: Option<u32>,
}

impl Retrier {
    /// Retries until success or shutdown (`shutdown` turning true).
    pub fn new(backoff: Backoff, shutdown: watch::Receiver<bool>) -> Retrier {
        Retrier {
            backoff,
            shutdown: Some(shutdown),
            metrics: None,
            health: None,
            max_attempts: None,
        }
    }

    /// For one-shot commands: no shutdown signal, at most `attempts` attempts.
    pub fn bounded(backoff: Backoff, attempts: u32) -> Retrier {
        Retrier {
            backoff,
            shutdown: None,
            metrics: None,
            health: None,
            max_attempts: Some(attempts.max(1)),
        }
    }

    /// Counts failures and retries under `projector` and `stream`.
    pub fn counted(mut self, metrics: Metrics, projector: &str, stream: &str) -> Retrier {
        self.metrics = Some((metrics, [projector.to_string(), stream.to_string()]));
        self
    }

    /// Keeps the health entry `name` up to date (disconnected while retrying); called
    /// again, it keeps several (a step of a transaction of several streams).
    pub fn reporting(mut self, health: Health, name: &str) -> Retrier {
        match &mut self.health {
            Some((_, names)) => names.push(name.to_string()),
            None => self.health = Some((health, vec![name.to_string()])),
        }
        self
    }

    fn worker(&self) -> String {
        self.health
            .as_ref()
            .map_or_else(|| "-".to_string(), |(_, n)| n.join(","))
    }

    fn stopping(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Runs `f` until it succeeds or an error other than a retriable one comes.
    pub async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, WriteError>>,
    {
        self.run_waiting(what, f, || async {}).await
    }

    /// Like [`Retrier::run`]; `waiting` runs before each back-off (the committer sends
    /// progress acks there, so the batch in flight is not redelivered meanwhile).
    pub async fn run_waiting<T, F, Fut, W, WFut>(
        &self,
        what: &str,
        mut f: F,
        mut waiting: W,
    ) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, WriteError>>,
        W: FnMut() -> WFut,
        WFut: Future<Output = ()>,
    {
        let mut attempt = 0u32;
        loop {
            let e = match f().await {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(worker = %self.worker(), what, attempts = attempt + 1, "recovered");
                        if let Some((h, names)) = &self.health {
                            for name in names {
                                h.update(name, |h| {
                                    h.connected = true;
                                    h.last_error = None;
                                });
                            }
                        }
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            if let Some((m, [p, s])) = &self.metrics {
                m.write_errors.with_label_values(&[p, s, e.kind()]).inc();
            }
            let out_of_attempts = self.max_attempts.is_some_and(|n| attempt + 1 >= n);
            if e.action() != Action::Retry || self.stopping() || out_of_attempts {
                return Err(e);
            }
            if let Some((m, [p, s])) = &self.metrics {
                m.retries.with_label_values(&[p, s, e.kind()]).inc();
            }
            let delay = self.backoff.delay(attempt);
            tracing::warn!(worker = %self.worker(), what, attempt = attempt + 1, error = %e, retry_in_ms = delay.as_millis() as u64, "transient error, retrying");
            if let Some((h, names)) = &self.health {
                for name in names {
                    h.update(name, |h| {
                        h.connected = false;
                        h.last_error = Some(e.to_string());
                    });
                }
            }
            waiting().await;
            match &self.shutdown {
                Some(sd) => {
                    let mut sd = sd.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // Err: the sender is gone, which is no reason to cut the wait short.
                        Ok(()) = sd.changed() => {}
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
            attempt += 1;
        }
    }
}
