//! Typed write errors: each is either transient (retry, do not ack) or permanent (park).

use thiserror::Error;

/// Why a write to a sink did not happen, or did not happen as it should.
#[derive(Debug, Clone, Error)]
pub enum WriteError {
    /// The server could not be reached or the connection broke mid-exchange.
    #[error("Neo4j at {uri} is unavailable: {message}")]
    Neo4jUnavailable { uri: String, message: String },
    /// Neo4j said to retry (deadlock, leader change, lock timeout, terminated transaction).
    #[error("Neo4j transient error {code}: {message}")]
    Neo4jTransient { code: String, message: String },
    /// Neo4j refused the statement (constraint violation, type error): retrying will not help.
    #[error("Neo4j refused the write ({code}): {message}")]
    Neo4jRefused { code: String, message: String },
    /// The statement ran but the graph does not hold what it should (the seeds' bug #3).
    #[error("write of {what} not confirmed: {confirmed} of {expected} rows hold the new version")]
    Unconfirmed {
        what: String,
        expected: i64,
        confirmed: i64,
    },
    /// Another writer moved the checkpoint since it was read: this batch must not commit.
    #[error("checkpoint {id} is no longer at {expected}: another writer moved it")]
    CheckpointMoved { id: String, expected: u64 },
    /// A rebuilt generation was promoted: live workers move to it before writing again.
    #[error("the live generation moved from {from} to {to}")]
    GenerationMoved { from: String, to: String },
    /// Valkey could not be reached or refused the transaction.
    #[error("Valkey at {url}: {message}")]
    Valkey { url: String, message: String },
    /// NATS could not confirm a publish (dead letter or outbound event) or an ack.
    #[error("NATS: {message}")]
    Nats { message: String },
}

impl WriteError {
    /// Transient errors are retried with backoff and the batch stays unacked meanwhile;
    /// the others are permanent and lead to parking the offending event.
    pub fn is_transient(&self) -> bool {
        match self {
            WriteError::Neo4jUnavailable { .. }
            | WriteError::Neo4jTransient { .. }
            | WriteError::CheckpointMoved { .. }
            | WriteError::GenerationMoved { .. }
            | WriteError::Valkey { .. }
            | WriteError::Nats { .. } => true,
            WriteError::Neo4jRefused { .. } | WriteError::Unconfirmed { .. } => false,
        }
    }

    /// A short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            WriteError::Neo4jUnavailable { .. } => "neo4j_unavailable",
            WriteError::Neo4jTransient { .. } => "neo4j_transient",
            WriteError::Neo4jRefused { .. } => "neo4j_refused",
            WriteError::Unconfirmed { .. } => "unconfirmed",
            WriteError::CheckpointMoved { .. } => "checkpoint_moved",
            WriteError::GenerationMoved { .. } => "generation_moved",
            WriteError::Valkey { .. } => "valkey",
            WriteError::Nats { .. } => "nats",
        }
    }

    /// Classifies a neo4rs error.
    pub fn from_neo4j(uri: &str, e: neo4rs::Error) -> WriteError {
        use neo4rs::Neo4jErrorKind as K;
        match e {
            neo4rs::Error::Neo4j(err) => {
                let code = err.code().to_string();
                let message = err.message().to_string();
                match err.kind() {
                    K::Transient | K::Database => WriteError::Neo4jTransient { code, message },
                    K::Client(neo4rs::Neo4jClientErrorKind::SessionExpired)
                    | K::Client(neo4rs::Neo4jClientErrorKind::TransactionTerminated) => {
                        WriteError::Neo4jTransient { code, message }
                    }
                    _ => WriteError::Neo4jRefused { code, message },
                }
            }
            neo4rs::Error::StringTooLong
            | neo4rs::Error::MapTooBig
            | neo4rs::Error::BytesTooBig
            | neo4rs::Error::ListTooLong
            | neo4rs::Error::InvalidInteger(..)
            | neo4rs::Error::IntegerOverflow(..) => WriteError::Neo4jRefused {
                code: "projector.Serialization".into(),
                message: e.to_string(),
            },
            other => WriteError::Neo4jUnavailable {
                uri: uri.to_string(),
                message: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_unconfirmed_writes_are_permanent() {
        assert!(!WriteError::Unconfirmed {
            what: "x".into(),
            expected: 2,
            confirmed: 1
        }
        .is_transient());
        assert!(!WriteError::Neo4jRefused {
            code: "Neo.ClientError.Schema.ConstraintValidationFailed".into(),
            message: String::new()
        }
        .is_transient());
        assert!(WriteError::Neo4jUnavailable {
            uri: "bolt://x".into(),
            message: String::new()
        }
        .is_transient());
    }
}
