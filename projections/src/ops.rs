//! Operations a projection emits: graph writes, cache refreshes, outbound events.
//!
//! Labels, relationship types and property names are Rust enums and constants, never
//! event data: the Cypher the engine builds from them is fixed, and event values only
//! ever travel as parameters.

use std::collections::BTreeMap;
use std::fmt;

/// The total order every write is guarded by: the event's own time, then the stream's
/// timestamp, then stream name, then sequence.
///
/// Comparing versions instead of arrival order makes the result of any redelivery or
/// interleaving of the streams the same: the newest write of each property group wins.
/// The event's time comes first because messages published back to back to different
/// streams can be stored in the other order; the producer's clock says what happened first.
/// The key is a fixed-width string so Cypher can compare it with `<`.
///
/// ```
/// use projections::Version;
/// let a = Version::new(5, 1_000, "PLANNING_EVENTS", 9);
/// let b = Version::new(5, 1_000, "PLANNING_EVENTS", 10);
/// let c = Version::new(6, 0, "AGENT_RESPONSES", 1);
/// assert!(a < b && a.key() < b.key());
/// assert!(b < c && b.key() < c.key());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The event's time in milliseconds (payload `timestamp`, else the stream's).
    pub event_ms: i64,
    pub ts_ns: i64,
    pub stream: String,
    pub seq: u64,
}

impl Version {
    pub fn new(event_ms: i64, ts_ns: i64, stream: &str, seq: u64) -> Self {
        Version {
            event_ms,
            ts_ns,
            stream: stream.to_string(),
            seq,
        }
    }

    /// Sortable text form: event time, stream time, stream, sequence, each fixed-width.
    pub fn key(&self) -> String {
        // Shifted so negative times (before 1970) still sort correctly as text.
        let shift = |v: i64| (v as i128 - i64::MIN as i128) as u128;
        format!(
            "{:020}|{:020}|{}|{:020}",
            shift(self.event_ms),
            shift(self.ts_ns),
            self.stream,
            self.seq
        )
    }
}

/// A property value. Only what Neo4j stores natively; absent values are `Null` (which removes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prop {
    Null,
    Str(String),
    Int(i64),
    StrList(Vec<String>),
}

impl From<Option<String>> for Prop {
    fn from(v: Option<String>) -> Self {
        v.map(Prop::Str).unwrap_or(Prop::Null)
    }
}
impl From<String> for Prop {
    fn from(v: String) -> Self {
        Prop::Str(v)
    }
}
impl From<&str> for Prop {
    fn from(v: &str) -> Self {
        Prop::Str(v.to_string())
    }
}
impl From<i64> for Prop {
    fn from(v: i64) -> Self {
        Prop::Int(v)
    }
}
impl From<Option<i64>> for Prop {
    fn from(v: Option<i64>) -> Self {
        v.map(Prop::Int).unwrap_or(Prop::Null)
    }
}

macro_rules! labels {
    ($($name:ident),* $(,)?) => {
        /// Node labels of the graph model (docs/graph-model.md).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Label { $($name),* }
        impl Label {
            pub const ALL: &'static [Label] = &[$(Label::$name),*];
            pub fn as_str(self) -> &'static str { match self { $(Label::$name => stringify!($name)),* } }
        }
    };
}
labels!(
    Story,
    PhaseChange,
    Plan,
    PlanApproval,
    Task,
    Decision,
    Milestone,
    Deliberation,
    Agent,
    Council,
    StoryEvent,
);

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! groups {
    ($($name:ident => $label:ident [$($prop:literal),* $(,)?]),* $(,)?) => {
        /// A set of node properties always written together and guarded by one version.
        ///
        /// Every write to a group sets all of its properties (absent ones as `Null`), so the
        /// newest write of a group fully decides it, whatever order writes arrive in.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Group { $($name),* }
        impl Group {
            pub const ALL: &'static [Group] = &[$(Group::$name),*];
            /// The label of the nodes this group belongs to.
            pub fn label(self) -> Label { match self { $(Group::$name => Label::$label),* } }
            /// The properties this group writes, in a fixed order.
            pub fn props(self) -> &'static [&'static str] { match self { $(Group::$name => &[$($prop),*]),* } }
            /// Name of the node property holding this group's version key.
            pub fn version_prop(self) -> &'static str { match self { $(Group::$name => concat!("v_", stringify!($name))),* } }
        }
    };
}
groups!(
    StoryTitle => Story ["title"],
    StoryDescription => Story ["description"],
    StoryCreatedBy => Story ["created_by"],
    StoryPhase => Story ["phase", "phase_changed_by"],
    StorySnapshot => Story ["last_snapshot_id", "snapshot_version"],
    StoryActivity => Story ["last_event"],
    PhaseChangeRecord => PhaseChange ["story_id", "from_phase", "to_phase", "changed_by", "at_ms"],
    PlanDetails => Plan ["story_id", "version", "summary", "created_at_ms"],
    ApprovalRecord => PlanApproval ["story_id", "plan_id", "approved_by", "approved_at_ms"],
    TaskDetails => Task ["story_id", "title", "phase", "plan_id"],
    TaskRole => Task ["role"],
    TaskAgent => Task ["agent_id"],
    TaskStatus => Task ["status", "progress", "error"],
    DecisionRecord => Decision ["story_id", "task_id", "title", "rationale", "decided_by", "decided_at_ms"],
    MilestoneRecord => Milestone ["story_id", "name", "reached_at_ms"],
    DeliberationStart => Deliberation ["story_id", "task_id", "role", "started_at_ms"],
    DeliberationEnd => Deliberation ["completed_at_ms", "decision_count"],
    AgentDetails => Agent ["role", "agent_type"],
    CouncilDetails => Council ["story_id", "role", "agent_ids"],
    EventRecord => StoryEvent ["story_id", "subject", "stream", "seq", "event_time_ms", "summary"],
);

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

macro_rules! rels {
    ($($name:ident => $from:ident -[$ty:literal]-> $to:ident),* $(,)?) => {
        /// Relationship types, each with its fixed endpoint labels.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Rel { $($name),* }
        impl Rel {
            pub const ALL: &'static [Rel] = &[$(Rel::$name),*];
            pub fn rel_type(self) -> &'static str { match self { $(Rel::$name => $ty),* } }
            pub fn from_label(self) -> Label { match self { $(Rel::$name => Label::$from),* } }
            pub fn to_label(self) -> Label { match self { $(Rel::$name => Label::$to),* } }
        }
    };
}
rels!(
    StoryPhaseChange => Story -["HAD_PHASE"]-> PhaseChange,
    StoryPlan => Story -["HAS_PLAN"]-> Plan,
    ApprovalOfPlan => PlanApproval -["APPROVES"]-> Plan,
    StoryApproval => Story -["HAS_APPROVAL"]-> PlanApproval,
    StoryTask => Story -["HAS_TASK"]-> Task,
    TaskInPlan => Task -["IN_PLAN"]-> Plan,
    TaskAssignedAgent => Task -["ASSIGNED_TO"]-> Agent,
    StoryDecision => Story -["HAS_DECISION"]-> Decision,
    DecisionForTask => Decision -["FOR_TASK"]-> Task,
    DecisionFromDeliberation => Deliberation -["PRODUCED"]-> Decision,
    TaskDeliberation => Task -["DELIBERATED_IN"]-> Deliberation,
    StoryMilestone => Story -["REACHED"]-> Milestone,
    AgentInCouncil => Agent -["MEMBER_OF"]-> Council,
    CouncilForStory => Council -["FORMED_FOR"]-> Story,
    StoryHasEvent => Story -["HAS_EVENT"]-> StoryEvent,
);

/// Writes one property group of one node (MERGE by id, then a version-guarded SET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWrite {
    pub group: Group,
    pub id: String,
    /// Values in the order of [`Group::props`].
    pub values: Vec<Prop>,
    pub version: Version,
    /// The event's time (payload time, else stream time), milliseconds since the epoch.
    pub event_time_ms: i64,
}

/// Ensures a relationship exists between two nodes (both merged by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelWrite {
    pub rel: Rel,
    pub from: String,
    pub to: String,
    pub version: Version,
    /// The event's time, milliseconds since the epoch.
    pub event_time_ms: i64,
}

/// A graph operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphOp {
    Node(NodeWrite),
    Rel(RelWrite),
}

/// A cache operation, applied after the graph commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOp {
    /// Re-render `context:{story_id}` from the committed graph.
    RefreshContext { story_id: String, version: Version },
}

/// An event the live system owes after the effects are committed; suppressed during replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub subject: String,
    /// Deterministic `Nats-Msg-Id`, so a redelivered source event never publishes twice.
    pub msg_id: String,
    pub payload: Vec<u8>,
}

/// Everything one event projects to, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Projection {
    pub graph: Vec<GraphOp>,
    pub cache: Vec<CacheOp>,
    pub outbound: Vec<Outbound>,
}

/// Rows ready for the writer: per group / relationship, one row per key, the newest write.
///
/// Collapsing a batch this way has the same effect as applying its operations one by one
/// (the newest version wins either way), and lets each group be one UNWIND statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactBatch {
    pub nodes: BTreeMap<Group, BTreeMap<String, NodeWrite>>,
    pub rels: BTreeMap<Rel, BTreeMap<(String, String), RelWrite>>,
}

impl CompactBatch {
    /// Adds operations, keeping the newest write per (group, id) and (rel, from, to).
    pub fn extend<'a>(&mut self, ops: impl IntoIterator<Item = &'a GraphOp>) {
        for op in ops {
            match op {
                GraphOp::Node(w) => {
                    let slot = self.nodes.entry(w.group).or_default();
                    match slot.get(&w.id) {
                        Some(existing) if existing.version >= w.version => {}
                        _ => {
                            slot.insert(w.id.clone(), w.clone());
                        }
                    }
                }
                GraphOp::Rel(r) => {
                    let slot = self.rels.entry(r.rel).or_default();
                    let key = (r.from.clone(), r.to.clone());
                    match slot.get(&key) {
                        Some(existing) if existing.version >= r.version => {}
                        _ => {
                            slot.insert(key, r.clone());
                        }
                    }
                }
            }
        }
    }

    /// Number of rows the writer will send.
    pub fn rows(&self) -> usize {
        self.nodes.values().map(BTreeMap::len).sum::<usize>()
            + self.rels.values().map(BTreeMap::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// The compacted operations: node writes first, then relationships.
    pub fn ops(&self) -> impl Iterator<Item = GraphOp> + '_ {
        let nodes = self
            .nodes
            .values()
            .flat_map(|m| m.values().cloned().map(GraphOp::Node));
        let rels = self
            .rels
            .values()
            .flat_map(|m| m.values().cloned().map(GraphOp::Rel));
        nodes.chain(rels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_key_orders_like_version() {
        let vs = [
            Version::new(-1, 9, "Z", 9),
            Version::new(0, -5, "A", 1),
            Version::new(0, 0, "A", 1),
            Version::new(0, 0, "A", 2),
            Version::new(0, 0, "B", 1),
            Version::new(0, 1_700_000_000_000_000_000, "A", 1),
            Version::new(1_700_000_000_000, 0, "A", 1),
        ];
        for w in vs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].key() < w[1].key(), "{} !< {}", w[0].key(), w[1].key());
        }
    }

    #[test]
    fn every_group_has_props_except_none_and_unique_version_props() {
        let mut seen = std::collections::BTreeSet::new();
        for g in Group::ALL {
            assert!(!g.props().is_empty(), "{g} has no props");
            assert!(seen.insert(g.version_prop()));
        }
    }

    #[test]
    fn compaction_keeps_newest_write() {
        let w = |seq, title: &str| {
            GraphOp::Node(NodeWrite {
                group: Group::StoryTitle,
                id: "US-1".into(),
                values: vec![title.into()],
                version: Version::new(0, 0, "P", seq),
                event_time_ms: 0,
            })
        };
        let mut b = CompactBatch::default();
        b.extend(&[w(2, "two"), w(1, "one"), w(3, "three"), w(3, "dup")]);
        assert_eq!(b.rows(), 1);
        assert_eq!(
            b.nodes[&Group::StoryTitle]["US-1"].values,
            vec![Prop::from("three")]
        );
    }
}
