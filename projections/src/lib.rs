//! The domain core of projector: the event catalog and the projections.
//!
//! Everything here is pure and deterministic. No I/O, no clock, no randomness: a
//! projection is a function from a stored message ([`Envelope`]) and its decoded
//! [`Event`] to an ordered [`Projection`] of graph, cache and outbound operations.
//! The engine crate executes those operations; this crate only decides them.
//!
//! ```
//! use projections::{decode, project, Envelope};
//! let env = Envelope::new("PLANNING_EVENTS", 1, "planning.story.created", 0,
//!     br#"{"story_id":"US-1","title":"Login"}"#);
//! let event = decode(env.subject, env.content_type, env.payload)?;
//! let projection = project(&env, &event);
//! assert!(!projection.graph.is_empty());
//! assert!(projection.outbound.is_empty());
//! # Ok::<(), projections::DecodeError>(())
//! ```

pub mod blocking;
pub mod context;
pub mod decode;
pub mod envelope;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod model;
pub mod ops;
pub mod partition;
pub mod project;
pub mod sections;
pub mod version;

pub use decode::{DecodeError, Format, MAX_PAYLOAD_BYTES};
pub use envelope::Envelope;
pub use events::{decode, sniff_story_id, Event, Subject, CATALOG};
pub use ops::{
    CacheOp, CompactBatch, GraphOp, Group, Label, NodeWrite, Outbound, Projection, Prop, Rel,
    RelWrite, Version,
};
pub use partition::partition_of;
pub use project::project;
pub use version::PROJECTION_VERSION;
