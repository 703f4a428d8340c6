//! Which partition an event belongs to: by story, so that one story's events always land in
//! the same partition and keep their stream order there.
//!
//! The story id is in the payload, not the subject, so JetStream's subject-mapping
//! `partition()` cannot compute it (docs/decisions.md D19); every partition's consumer reads
//! the stream and this function decides, the same way on every instance and every replay.

/// The partition (`0..partitions`) of an event with this story id. Events without a story
/// (agent registrations) all go to partition 0, which keeps them in stream order too.
///
/// FNV-1a (32 bit) of the id's bytes: fixed forever, since changing it would move stories
/// between partitions whose checkpoints are already stored.
///
/// ```
/// use projections::partition_of;
/// assert_eq!(partition_of(Some("US-1"), 1), 0);
/// assert_eq!(partition_of(None, 16), 0);
/// let p = partition_of(Some("US-1"), 16);
/// assert!(p < 16);
/// assert_eq!(p, partition_of(Some("US-1"), 16));
/// ```
pub fn partition_of(story_id: Option<&str>, partitions: u32) -> u32 {
    match story_id {
        Some(id) if partitions > 1 => fnv1a(id.as_bytes()) % partitions,
        _ => 0,
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv1a_known_vectors() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn stories_spread_over_all_partitions() {
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[partition_of(Some(&format!("US-{i:04}")), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    proptest! {
        #[test]
        fn in_range_and_stable(id in ".{0,40}", n in 1u32..64) {
            let p = partition_of(Some(&id), n);
            prop_assert!(p < n);
            prop_assert_eq!(p, partition_of(Some(&id), n));
        }
    }
}
