//! Bounded waits for Neo4j, for commands that must end rather than retry forever.

use crate::error::WriteError;
use crate::sink::graph::GraphSink;
use std::time::Duration;

/// Waits until Neo4j answers a trivial query, at most `timeout`.
///
/// One-shot commands call this first, so an unreachable Neo4j is one clear error (exit 1)
/// after `[neo4j] connect_timeout` instead of retries without end; the daemon does not call
/// it and keeps retrying with readiness false.
///
/// # Errors
/// [`WriteError::Neo4jUnavailable`] naming the URI, the timeout and the last error seen.
pub async fn wait_ready(graph: &GraphSink, timeout: Duration) -> Result<(), WriteError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer");
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(WriteError::Neo4jUnavailable {
                uri: graph.uri().to_string(),
                message: format!(
                    "not reachable within {}s ([neo4j] connect_timeout): {last}",
                    timeout.as_secs_f64()
                ),
            });
        }
        // neo4rs retries a refused connection itself for up to 60 s; the timeout cuts that.
        match tokio::time::timeout(left, graph.ping()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => {
                if !e.is_transient() {
                    return Err(e);
                }
                last = e.to_string();
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250).min(left)).await;
    }
}
