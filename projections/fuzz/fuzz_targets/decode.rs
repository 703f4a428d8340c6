//! Decoding any bytes on any catalog subject, as JSON or MessagePack, never panics; what
//! decodes also projects without panicking, twice to the same result (determinism).
//! The input layout and the checks: `projections::fuzzing::check`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    projections::fuzzing::check(data);
});
