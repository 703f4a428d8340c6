//! The projection version: which projection code built a generation.
//!
//! [`PROJECTION_VERSION`] changes whenever what the projections write can change: the event
//! catalog, the graph model (labels, property groups, relationships) or any projection's
//! output. `projections/tests/version.rs` fingerprints all three over a fixed corpus and fails
//! when the fingerprint moves without a new version, so a forgotten bump fails CI. Every
//! generation records the version that built it; `run --on-projection-change` compares it
//! with this one (docs/decisions.md D70).

/// The version of what the projections write. Bump it (and record the new fingerprint in
/// `projections/tests/version.rs`) with any change to a projection's output.
#[cfg(not(feature = "variant-v2"))]
pub const PROJECTION_VERSION: u32 = 1;

/// The test-only variant (feature `variant-v2`): story titles are written upper-cased, and
/// the version is bumped with it. The upgrade tests build a binary with it.
#[cfg(feature = "variant-v2")]
pub const PROJECTION_VERSION: u32 = 2;

/// The story title as the projection writes it: as published, or upper-cased by the
/// test-only variants (`variant-v2`, and `variant-unbumped`, which forgets the bump).
pub(crate) fn story_title(title: &str) -> String {
    if cfg!(any(feature = "variant-v2", feature = "variant-unbumped")) {
        title.to_uppercase()
    } else {
        title.to_string()
    }
}
