//! Typed write errors, and the one place that says what each one means for a batch:
//! [`WriteError::action`].

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
    /// An operator's retry or discard lifted the block an event was to be parked behind
    /// (D59): the group is routed again with the lift.
    #[error("the block of {id} was lifted by an operator's decision")]
    BlockLifted { id: String },
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

/// What a failed write means for the batch that hit it. Decided in one place
/// ([`WriteError::action`]); every caller acts on it and none special-cases an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A server was away or asked to try again: back off and run the same step again,
    /// nothing acked meanwhile.
    Retry,
    /// Our position is stale (another writer moved the checkpoint, or a rebuild was promoted):
    /// re-read the checkpoints and position the sources again; nothing of the batch is acked.
    Reposition,
    /// The server refused what one event writes, or the write was not confirmed: commit the
    /// batch's events one per transaction to find it, and park only it.
    Isolate,
    /// A bug of ours (a row or context of the wrong shape): no event is to blame, stop and
    /// let an operator look.
    Halt,
}

/// Codes of [`WriteError::Neo4jRefused`] that projector itself raises when what Neo4j
/// returned has the wrong shape: a bug in a query or a reader, not a refusal of an event.
pub const OUR_BUG_CODES: [&str; 4] = [
    "projector.RowShape",
    "projector.ContextShape",
    "projector.CommitShape",
    "projector.CheckpointBackwards",
];

impl WriteError {
    /// What to do about this error: the whole failure disposition, in one exhaustive match.
    pub fn action(&self) -> Action {
        match self {
            WriteError::Neo4jUnavailable { .. }
            | WriteError::Neo4jTransient { .. }
            | WriteError::Valkey { .. }
            | WriteError::Nats { .. } => Action::Retry,
            WriteError::CheckpointMoved { .. }
            | WriteError::GenerationMoved { .. }
            | WriteError::BlockLifted { .. } => Action::Reposition,
            WriteError::Neo4jRefused { code, .. } if OUR_BUG_CODES.contains(&code.as_str()) => {
                Action::Halt
            }
            WriteError::Neo4jRefused { .. } | WriteError::Unconfirmed { .. } => Action::Isolate,
        }
    }

    /// Whether running the same step again may succeed (`action() == Retry`).
    pub fn is_transient(&self) -> bool {
        self.action() == Action::Retry
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
            WriteError::BlockLifted { .. } => "block_lifted",
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

    /// The failure disposition, one row per kind of error.
    #[test]
    fn every_error_has_one_action() {
        let refused = |code: &str| WriteError::Neo4jRefused {
            code: code.into(),
            message: String::new(),
        };
        let table: Vec<(WriteError, Action)> = vec![
            (
                WriteError::Neo4jUnavailable {
                    uri: "bolt://x".into(),
                    message: String::new(),
                },
                Action::Retry,
            ),
            (
                WriteError::Neo4jTransient {
                    code: "Neo.TransientError.Transaction.DeadlockDetected".into(),
                    message: String::new(),
                },
                Action::Retry,
            ),
            (
                WriteError::Valkey {
                    url: "redis://x".into(),
                    message: String::new(),
                },
                Action::Retry,
            ),
            (
                WriteError::Nats {
                    message: String::new(),
                },
                Action::Retry,
            ),
            (
                WriteError::CheckpointMoved {
                    id: "p/S/0".into(),
                    expected: 3,
                },
                Action::Reposition,
            ),
            (
                WriteError::GenerationMoved {
                    from: "main".into(),
                    to: "g2".into(),
                },
                Action::Reposition,
            ),
            (
                WriteError::BlockLifted { id: "p:S:7".into() },
                Action::Reposition,
            ),
            (
                refused("Neo.ClientError.Schema.ConstraintValidationFailed"),
                Action::Isolate,
            ),
            (refused("projector.Serialization"), Action::Isolate),
            (
                WriteError::Unconfirmed {
                    what: "x".into(),
                    expected: 2,
                    confirmed: 1,
                },
                Action::Isolate,
            ),
            (refused("projector.RowShape"), Action::Halt),
            (refused("projector.ContextShape"), Action::Halt),
            (refused("projector.CommitShape"), Action::Halt),
        ];
        for (e, want) in table {
            assert_eq!(e.action(), want, "{e}");
            assert_eq!(e.is_transient(), want == Action::Retry, "{e}");
        }
    }
}
