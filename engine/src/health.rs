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

/// Readiness: every worker connected, none halted, and lag under the threshold.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, WorkerHealth>>>,
    pub max_ready_lag: u64,
}

impl Health {
    pub fn new(max_ready_lag: u64) -> Health {
        Health {
            inner: Arc::default(),
            max_ready_lag,
        }
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
