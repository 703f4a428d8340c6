//! Replays, rebuilds, temporal generations and state hashing, on top of the engine.

pub mod hash;
pub mod rebuild;
pub mod replay;
