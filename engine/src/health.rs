//! Liveness and readiness shared between the workers and the HTTP server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Per-worker state: connected to every server, and how far behind.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct WorkerHealth {
    pub stream: String,
    pub checkpoint: u64,
    pub connected: bool,
    pub lag: u64,
    pub last_error: Option<String>,
    pub halted: Option<String>,
}

/// Which code writes which generation: the versions `/readyz` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Versions {
    /// This binary's projection version (`projections::PROJECTION_VERSION`).
    pub projection_version: u32,
    /// This binary's version.
    pub binary_version: String,
    /// The generation the workers write (the live one when following live).
    pub generation: String,
    /// The projection version that created it; null when unrecorded.
    pub generation_projection_version: Option<i64>,
    /// The binary version that created it; null when unrecorded.
    pub generation_binary_version: Option<String>,
    /// A projection upgrade in progress (`run --on-projection-change rebuild`): its step and
    /// progress, e.g. `rebuilding pv2: 1200/5000 events, 850 events/s, eta 5s`.
    pub upgrade: Option<String>,
}

/// Readiness: every worker connected, none halted, and lag under the threshold.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, WorkerHealth>>>,
    versions: Arc<Mutex<Versions>>,
    pub max_ready_lag: u64,
}

impl Health {
    pub fn new(max_ready_lag: u64) -> Health {
        Health {
            inner: Arc::default(),
            versions: Arc::new(Mutex::new(Versions {
                projection_version: projections::PROJECTION_VERSION,
                binary_version: crate::generations::BINARY_VERSION.into(),
                ..Versions::default()
            })),
            max_ready_lag,
        }
    }

    /// Records the generation written and the versions that created it.
    pub fn set_generation(
        &self,
        generation: &str,
        projection: Option<i64>,
        binary: Option<String>,
    ) {
        let mut v = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        v.generation = generation.to_string();
        v.generation_projection_version = projection;
        v.generation_binary_version = binary;
    }

    /// Sets (or with `None` clears) the upgrade step `/readyz` shows.
    pub fn set_upgrade(&self, step: Option<String>) {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade = step;
    }

    pub fn versions(&self) -> Versions {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update(&self, worker: &str, f: impl FnOnce(&mut WorkerHealth)) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(worker.to_string()).or_default());
    }

    /// Forgets a worker that stopped on purpose (its partition went to another instance).
    pub fn remove(&self, worker: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(worker);
    }

    pub fn snapshot(&self) -> BTreeMap<String, WorkerHealth> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn ready(&self) -> bool {
        let m = self.snapshot();
        !m.is_empty()
            && m.values()
                .all(|w| w.connected && w.halted.is_none() && w.lag <= self.max_ready_lag)
    }
}
