//! Everything in projector that touches the world: JetStream streams and consumers, the
//! Neo4j and Valkey writers, checkpoints, retries, dead letters, metrics and config.
//!
//! Decisions live in the pure `projections` crate; this crate executes them.

pub mod config;
pub mod nats;
pub mod streams;
