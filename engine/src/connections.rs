//! The three servers a command talks to, opened in one place and in one order.

use crate::config::Config;
use crate::error::WriteError;
use crate::nats::ConnectError;
use crate::sink::cache::CacheSink;
use crate::sink::graph::GraphSink;
use async_nats::jetstream;
use thiserror::Error;

/// Why the connections could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    Nats(#[from] ConnectError),
    #[error(transparent)]
    Sink(#[from] WriteError),
}

/// JetStream, the Neo4j sink (with this deployment's live pointer) and the Valkey sink.
#[derive(Clone)]
pub struct Connections {
    pub js: jetstream::Context,
    pub graph: GraphSink,
    pub cache: CacheSink,
}

impl Connections {
    /// Connects to NATS (failing fast on a bad URL or refused credentials), opens the Neo4j
    /// pool (lazily: its first query reports an unreachable server) and connects to Valkey.
    ///
    /// # Errors
    /// The first server that cannot be reached, with its address and what to check.
    pub async fn open(cfg: &Config) -> Result<Connections, OpenError> {
        let client = crate::nats::connect(&cfg.nats).await?;
        let js = jetstream::new(client);
        let graph = GraphSink::for_config(cfg)?;
        let cache = CacheSink::connect(&cfg.valkey).await?;
        Ok(Connections { js, graph, cache })
    }
}
