//! The workers running in this process: each one's stop switch, its join, and what it
//! ended with, reported by name (a panicked worker too).

use crate::worker::{Exit, WorkerError};
use std::collections::BTreeMap;
use std::future::Future;
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

/// Which worker: (index of its projector, partition).
pub type Key = (usize, u32);

/// How one worker ended.
pub struct Ended {
    pub key: Key,
    /// `projector/partition`.
    pub name: String,
    pub result: Result<Exit, WorkerError>,
    /// It did not end by itself: aborted at the shutdown deadline.
    pub aborted: bool,
}

/// Spawns workers and joins them, one stop switch each.
#[derive(Default)]
pub struct Supervisor {
    set: JoinSet<Result<Exit, WorkerError>>,
    running: BTreeMap<Id, (Key, String)>,
    /// The stop switches of the workers running under a key (one per partition, or one per
    /// stream of it), with their task ids.
    stops: BTreeMap<Key, Vec<(Id, watch::Sender<bool>)>>,
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Starts a worker under `key` (several may share one); `run` gets the receiver of its
    /// own stop switch.
    pub fn spawn<F, Fut>(&mut self, key: Key, name: String, run: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = Result<Exit, WorkerError>> + Send + 'static,
    {
        let (stop, rx) = watch::channel(false);
        let handle = self.set.spawn(run(rx));
        self.running.insert(handle.id(), (key, name));
        self.stops.entry(key).or_default().push((handle.id(), stop));
    }

    /// Whether a worker of `key` runs.
    pub fn holds(&self, key: &Key) -> bool {
        self.stops.contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Asks the workers of `key` to stop after their group in flight; `false` if none runs.
    pub fn stop(&self, key: &Key) -> bool {
        match self.stops.get(key) {
            Some(switches) => {
                for (_, s) in switches {
                    // Never fails: it also stores the value when the worker already ended.
                    s.send_replace(true);
                }
                true
            }
            None => false,
        }
    }

    /// Asks every worker to stop after its group in flight.
    pub fn stop_all(&self) {
        for key in self.stops.keys() {
            self.stop(key);
        }
    }

    /// The next worker to end, or `None` when none runs. A panicked or aborted worker ends
    /// with [`WorkerError::Fatal`] naming it.
    pub async fn join_next(&mut self) -> Option<Ended> {
        let joined = self.set.join_next_with_id().await?;
        let aborted = matches!(&joined, Err(e) if e.is_cancelled());
        let (id, result) = match joined {
            Ok((id, r)) => (id, r),
            Err(e) => {
                let why = if e.is_panic() {
                    "the worker panicked (a bug of projector: please report it with the log)"
                } else {
                    "the worker was aborted (shutdown deadline)"
                };
                (
                    e.id(),
                    Err(WorkerError::Fatal {
                        stream: String::new(),
                        error: why.to_string(),
                    }),
                )
            }
        };
        let (key, name) = self
            .running
            .remove(&id)
            .expect("every task of the set was spawned with its key");
        // Only this task's switch: the other workers of the key keep theirs.
        if let Some(switches) = self.stops.get_mut(&key) {
            switches.retain(|(owner, _)| *owner != id);
            if switches.is_empty() {
                self.stops.remove(&key);
            }
        }
        let result = result.map_err(|e| match e {
            WorkerError::Fatal { stream, error } if stream.is_empty() => WorkerError::Fatal {
                stream: name.clone(),
                error,
            },
            e => e,
        });
        Some(Ended {
            key,
            name,
            result,
            aborted,
        })
    }

    /// Aborts every worker and waits until all are gone (a commit in flight must not land
    /// after another instance took the partition over).
    pub async fn abort_all(&mut self) -> Vec<Ended> {
        self.set.abort_all();
        let mut out = Vec::new();
        while let Some(e) = self.join_next().await {
            out.push(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_worker_is_reported_by_its_name() {
        let mut s = Supervisor::new();
        s.spawn((0, 3), "graph/3".into(), |_stop| async {
            panic!("boom");
        });
        let ended = s.join_next().await.expect("one worker");
        assert_eq!(ended.key, (0, 3));
        let err = ended.result.expect_err("a panic is an error").to_string();
        assert!(err.starts_with("graph/3: the worker panicked"), "{err}");
        assert!(s.join_next().await.is_none());
    }

    #[tokio::test]
    async fn stop_reaches_the_worker_and_its_exit_is_kept() {
        let mut s = Supervisor::new();
        s.spawn((1, 0), "cache/0".into(), |mut stop| async move {
            stop.wait_for(|v| *v)
                .await
                .expect("the supervisor keeps the sender");
            Ok(Exit::Stopped)
        });
        assert!(s.holds(&(1, 0)));
        assert!(s.stop(&(1, 0)));
        let ended = s.join_next().await.expect("one worker");
        assert_eq!(ended.name, "cache/0");
        assert_eq!(ended.result.expect("stopped"), Exit::Stopped);
        assert!(!s.holds(&(1, 0)));
    }
}
