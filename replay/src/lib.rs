//! Replays, rebuilds, temporal generations and state hashing, on top of the engine.

pub mod generation;
pub mod hash;
pub mod parking;
pub mod progress;
pub mod rebuild;
pub mod replay;
mod settled;
pub mod upgrade;
