//! The cached story context (`context:{story_id}` in Valkey): its shape and rendering.
//!
//! The engine reads the committed graph, fills a [`StoryContext`] and stores [`render`]'s
//! bytes. JSON, not MessagePack: the seeds' Python services and an operator with
//! `valkey-cli GET` can read it as is, and at a few hundred bytes per story size is moot.

use serde::{Deserialize, Serialize};

/// A plan with its latest approval, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanView {
    pub plan_id: String,
    pub version: Option<i64>,
    pub approved: bool,
    pub approved_by: Option<String>,
    pub approved_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub task_id: String,
    pub title: Option<String>,
    pub role: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    pub decision_id: String,
    pub title: Option<String>,
    pub rationale: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneView {
    pub name: String,
    pub reached_at_ms: Option<i64>,
}

/// What the Context service needs about a story, in one read.
///
/// `last_v` is the newest version key among the story's writes: a reader compares it with the
/// graph's to rule out a stale entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryContext {
    pub story_id: String,
    pub title: Option<String>,
    pub phase: Option<String>,
    pub current_plan: Option<PlanView>,
    pub open_tasks: Vec<TaskView>,
    pub latest_decisions: Vec<DecisionView>,
    pub milestones: Vec<MilestoneView>,
    pub last_v: String,
}

/// How many decisions the cached context keeps (newest first).
pub const LATEST_DECISIONS: usize = 10;

/// The Valkey key of a story's context (the seed's key).
pub fn context_key(prefix: &str, story_id: &str) -> String {
    format!("{prefix}context:{story_id}")
}

/// Canonical bytes of a context: lists sorted, so equal contexts give equal bytes.
pub fn render(ctx: &StoryContext) -> Vec<u8> {
    let mut c = ctx.clone();
    c.open_tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    c.milestones
        .sort_by(|a, b| (a.reached_at_ms, &a.name).cmp(&(b.reached_at_ms, &b.name)));
    c.latest_decisions
        .sort_by(|a, b| (b.decided_at_ms, &b.decision_id).cmp(&(a.decided_at_ms, &a.decision_id)));
    c.latest_decisions.truncate(LATEST_DECISIONS);
    serde_json::to_vec(&c).expect("StoryContext always serializes")
}
