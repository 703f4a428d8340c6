//! Everything in projector that touches the world: JetStream streams and consumers, the
//! Neo4j and Valkey writers, checkpoints, retries, dead letters, metrics and config.
//!
//! Decisions live in the pure `projections` crate; this crate executes them.

pub mod api;
pub mod config;
pub mod connections;
pub mod dlq;
pub mod effective;
pub mod error;
pub mod feed;
pub mod generations;
pub mod health;
pub mod history;
pub mod layout;
pub mod leases;
pub mod metrics;
pub mod migrate;
pub mod nats;
pub mod progress;
pub mod retry;
pub mod runner;
pub mod server;
pub mod sink;
pub mod source;
pub mod streams;
pub mod supervisor;
pub mod views;
pub mod worker;
