//! Sinks: where projected operations land. Each executes operations decided elsewhere.

pub mod cache;
pub mod cypher;
pub mod graph;
pub mod outbound;
pub mod ready;
