//! In-process locks on the shared nodes of a batch: the stream workers of one process never
//! commit the same story or agent at the same time.
//!
//! Every event writes its story (`StoryActivity`, `HAS_EVENT`, the revision), and tasks of
//! many stories point at the same agents (`ASSIGNED_TO` locks both ends), so stream workers
//! committing side by side met on those nodes inside Neo4j: a transaction waited for
//! another's commit, or two of them deadlocked and both paid a rollback and a back-off
//! (13-16 `DeadlockDetected` in 45 s of load at 200 events/s on the bench stack; with the
//! stories locked here, the rest were all on `Agent` nodes). Taking them here first, in one
//! global order, turns that into a short wait in this process. Stories of other partitions
//! are held by other processes and never meet these; agents can still meet another
//! process's in Neo4j, where a deadlock is retried as before.

use projections::{CompactBatch, Label};
use std::collections::BTreeSet;
use tokio::sync::{Mutex, MutexGuard};

/// The nodes of a batch that other workers' batches write too: its stories and agents, as
/// `Label:id`, whether written as nodes or as an end of a relationship.
pub fn shared_nodes(batch: &CompactBatch) -> BTreeSet<String> {
    let shared = |l: Label| matches!(l, Label::Story | Label::Agent);
    let mut out = BTreeSet::new();
    for (group, writes) in &batch.nodes {
        if shared(group.label()) {
            out.extend(writes.keys().map(|id| format!("{}:{id}", group.label())));
        }
    }
    for (rel, writes) in &batch.rels {
        for (from, to) in writes.keys() {
            if shared(rel.from_label()) {
                out.insert(format!("{}:{from}", rel.from_label()));
            }
            if shared(rel.to_label()) {
                out.insert(format!("{}:{to}", rel.to_label()));
            }
        }
    }
    out
}

/// Stripes: a node maps to one of them by a hash of its key. Enough that two batches of a
/// few dozen stories rarely share one by chance (~0.6 shared stripes for 50 and 50).
const STRIPES: usize = 4096;

/// A fixed set of striped locks over node keys.
pub struct NodeLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for NodeLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl NodeLocks {
    /// Locks every stripe of these nodes, in ascending stripe order (so two callers never
    /// wait on each other in a cycle); the locks are held until the guards drop.
    pub async fn lock<'a, I>(&self, stories: I) -> Vec<MutexGuard<'_, ()>>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut idx: Vec<usize> = stories.into_iter().map(stripe).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }
}

/// FNV-1a of the id: stable and cheap; only the spread matters.
fn stripe(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_shared_nodes_are_the_stories_and_agents_a_batch_writes() {
        use projections::{GraphOp, Group, NodeWrite, Prop, Rel, RelWrite, Version};
        let v = Version::new(0, 0, "S", 1);
        let batch = {
            let mut b = CompactBatch::default();
            b.extend(&[
                GraphOp::Node(NodeWrite {
                    group: Group::StoryActivity,
                    id: "s-1".into(),
                    values: vec![Prop::Str("x".into())],
                    version: v.clone(),
                    event_time_ms: 0,
                }),
                GraphOp::Node(NodeWrite {
                    group: Group::TaskStatus,
                    id: "t-1".into(),
                    values: vec![Prop::Null, Prop::Null, Prop::Null],
                    version: v.clone(),
                    event_time_ms: 0,
                }),
                GraphOp::Rel(RelWrite {
                    rel: Rel::TaskAssignedAgent,
                    from: "t-1".into(),
                    to: "agent-1".into(),
                    version: v,
                    event_time_ms: 0,
                }),
            ]);
            b
        };
        let keys: Vec<String> = shared_nodes(&batch).into_iter().collect();
        assert_eq!(keys, ["Agent:agent-1", "Story:s-1"]);
    }

    #[tokio::test]
    async fn a_story_is_committed_by_one_worker_at_a_time() {
        let locks = Arc::new(NodeLocks::default());
        let held = locks.lock(["s-1", "s-2"]).await;
        let other = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock(["s-2", "s-3"]).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !other.is_finished(),
            "s-2 is held: the second batch must wait"
        );
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), other)
            .await
            .expect("released: the second batch goes on")
            .expect("no panic");
    }

    #[tokio::test]
    async fn batches_of_other_stories_do_not_wait() {
        let locks = NodeLocks::default();
        let _a = locks.lock(["s-1"]).await;
        let b = tokio::time::timeout(Duration::from_secs(5), locks.lock(["s-2"])).await;
        assert!(b.is_ok());
        assert_ne!(stripe("s-1"), stripe("s-2"));
    }

    #[tokio::test]
    async fn opposite_orders_do_not_deadlock() {
        let locks = Arc::new(NodeLocks::default());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let locks = locks.clone();
            tasks.push(tokio::spawn(async move {
                let ids = if i % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
                let _g = locks.lock(ids).await;
                tokio::task::yield_now().await;
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("no deadlock")
                .expect("no panic");
        }
    }
}
