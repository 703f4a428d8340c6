//! A generation's digest read while none of its writers committed: the background rebuild's
//! check that the old generation did not change behind its checkpoints' back
//! (`upgrade::build_and_switch`).
//!
//! Neo4j reads are read-committed, not snapshots, so "the digest, then the checkpoint sum"
//! pairs a digest from before a commit with a sum from after it whenever another instance
//! commits in between: in a rolling upgrade the old instances keep projecting the old
//! generation while the new one builds, and such a pair made the first new instance refuse
//! to switch (docs/decisions.md D78). Every writer moves its checkpoints in the transaction
//! of its writes, so a sum that is the same before and after the digest brackets a digest
//! that no commit interleaved with: a seqlock read.

use std::future::Future;

/// A digest and the checkpoint sum that stood still around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled<D> {
    pub checkpoints: u64,
    pub digest: D,
}

/// What the old generation did between two [`Settled`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldGeneration {
    /// Same checkpoints, same digest.
    Unchanged,
    /// Its writers committed (or kept committing, so no read settled): a changed digest is
    /// theirs, nothing to hold against the switch.
    Moved,
    /// Same checkpoints, another digest: something wrote it without moving a checkpoint.
    ChangedBehindCheckpoints,
}

/// Reads the checkpoint sum, the digest, and the sum again, up to `tries` times, until the
/// two sums agree; `None` when they never did (writers committing throughout).
pub async fn read<D, E, C, CF, H, HF>(
    mut checkpoints: C,
    mut digest: H,
    tries: usize,
) -> Result<Option<Settled<D>>, E>
where
    C: FnMut() -> CF,
    CF: Future<Output = Result<u64, E>>,
    H: FnMut() -> HF,
    HF: Future<Output = Result<D, E>>,
{
    for _ in 0..tries {
        let before = checkpoints().await?;
        let d = digest().await?;
        if checkpoints().await? == before {
            return Ok(Some(Settled {
                checkpoints: before,
                digest: d,
            }));
        }
    }
    Ok(None)
}

/// Compares a read before the build with one after it.
pub fn compare<D: PartialEq>(
    before: Option<&Settled<D>>,
    after: Option<&Settled<D>>,
) -> OldGeneration {
    match (before, after) {
        (Some(b), Some(a)) if b.checkpoints == a.checkpoints => {
            if b.digest == a.digest {
                OldGeneration::Unchanged
            } else {
                OldGeneration::ChangedBehindCheckpoints
            }
        }
        _ => OldGeneration::Moved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// Scripted reads: each call takes the next value.
    fn script<T: Copy>(v: &[T]) -> RefCell<VecDeque<T>> {
        RefCell::new(v.iter().copied().collect())
    }

    async fn run(ckpts: &[u64], digests: &[char], tries: usize) -> Option<Settled<char>> {
        let (c, d) = (script(ckpts), script(digests));
        read::<_, (), _, _, _, _>(
            || {
                let v = c
                    .borrow_mut()
                    .pop_front()
                    .expect("a scripted checkpoint read");
                async move { Ok(v) }
            },
            || {
                let v = d.borrow_mut().pop_front().expect("a scripted digest read");
                async move { Ok(v) }
            },
            tries,
        )
        .await
        .unwrap()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_commit_during_the_digest_makes_the_read_start_over() {
        // The rolling upgrade's case: another instance commits (sum 10 -> 11) while the
        // digest 'A' is read; 'A' is not paired with 11, the second try settles on 'B'.
        let got = block_on(run(&[10, 11, 11, 11], &['A', 'B'], 5));
        assert_eq!(
            got,
            Some(Settled {
                checkpoints: 11,
                digest: 'B'
            })
        );
    }

    #[test]
    fn writers_that_never_pause_give_no_read() {
        assert_eq!(block_on(run(&[1, 2, 3, 4], &['A', 'B'], 2)), None);
    }

    #[test]
    fn the_verdict_table() {
        let s = |checkpoints, digest| {
            Some(Settled {
                checkpoints,
                digest,
            })
        };
        use OldGeneration::*;
        for (before, after, want) in [
            (s(5, 'A'), s(5, 'A'), Unchanged),
            (s(5, 'A'), s(5, 'B'), ChangedBehindCheckpoints),
            (s(5, 'A'), s(6, 'B'), Moved),
            (s(5, 'A'), s(6, 'A'), Moved),
            (None, s(6, 'A'), Moved),
            (s(5, 'A'), None, Moved),
            (None, None, Moved),
        ] {
            assert_eq!(
                compare(before.as_ref(), after.as_ref()),
                want,
                "{before:?} -> {after:?}"
            );
        }
    }
}
