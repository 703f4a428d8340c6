//! The cached story view (`context:{story_id}` in Valkey): its shape and rendering.
//!
//! The engine reads the committed graph, fills a [`StoryContext`] and stores [`render`]'s
//! bytes; `projector query story` and `GET /v1/stories/{id}` serve the same shape. JSON, not
//! MessagePack: the seeds' Python services and an operator with `valkey-cli GET` can read it
//! as is, and at a few kilobytes per story size is moot.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseView {
    pub from: Option<String>,
    pub to: Option<String>,
    pub by: Option<String>,
    pub at_ms: Option<i64>,
    pub seq: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalView {
    pub approved_by: Option<String>,
    pub approved_at_ms: Option<i64>,
}

/// A plan with its approvals (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanView {
    pub plan_id: String,
    pub version: Option<i64>,
    pub summary: Option<String>,
    pub created_at_ms: Option<i64>,
    pub approvals: Vec<ApprovalView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    pub task_id: String,
    pub title: Option<String>,
    pub role: Option<String>,
    pub status: Option<String>,
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecisionView {
    pub decision_id: String,
    pub task_id: Option<String>,
    pub title: Option<String>,
    pub rationale: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MilestoneView {
    pub name: String,
    pub reached_at_ms: Option<i64>,
}

/// Why a story's view stops short: one of its events is parked (it did not decode, or the
/// graph refused it), and every later event of the story is parked behind it until an
/// operator retries or discards it (`projector dlq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlockedView {
    /// The parked event holding the story up, as `projector dlq list` names it
    /// (`projector:stream:seq`): the story's first parked event in stream order.
    pub by: String,
    /// Why it is parked (`dlq list`'s KIND and REASON).
    pub kind: String,
    pub reason: String,
    /// How many later events of the story are parked behind it.
    pub behind: i64,
}

/// Everything about a story, in one read: what was decided and when.
///
/// `last_v` is the newest version key among the story's writes: a reader compares it with the
/// graph's to rule out a stale entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoryContext {
    pub story_id: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub phase: Option<String>,
    pub created_by: Option<String>,
    pub phase_history: Vec<PhaseView>,
    pub plans: Vec<PlanView>,
    pub tasks: Vec<TaskView>,
    pub decisions: Vec<DecisionView>,
    pub milestones: Vec<MilestoneView>,
    pub last_v: String,
    /// Set while the story is held up by a parked event (absent otherwise, so a healthy
    /// story's entry is what it always was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockedView>,
    /// How many commits have touched the story in this generation (`StoryRev`): the cache's
    /// freshness token. Not part of the JSON, which stays a pure function of the events.
    #[serde(skip)]
    pub rev: i64,
    /// The time of the newest event written to the story node (ms since the epoch; 0 if
    /// unknown), for the change feed. Not part of the JSON either.
    #[serde(skip)]
    pub event_time_ms: i64,
}

impl StoryContext {
    /// The plan in effect: the one most recently approved. `None` while no plan is approved
    /// (a newer unapproved plan is a proposal, not the plan in effect).
    pub fn current_plan(&self) -> Option<&PlanView> {
        let approved = |p: &PlanView| p.approvals.iter().filter_map(|a| a.approved_at_ms).max();
        self.plans
            .iter()
            .filter(|p| !p.approvals.is_empty())
            .max_by_key(|p| (approved(p), p.created_at_ms, p.plan_id.clone()))
    }

    /// Tasks still to finish: neither COMPLETED nor FAILED (a failed task is over; it is
    /// counted apart, see [`StoryContext::failed_tasks`]).
    pub fn open_tasks(&self) -> impl Iterator<Item = &TaskView> {
        self.tasks
            .iter()
            .filter(|t| !matches!(t.status.as_deref(), Some("COMPLETED") | Some("FAILED")))
    }

    /// Tasks whose last status is FAILED.
    pub fn failed_tasks(&self) -> impl Iterator<Item = &TaskView> {
        self.tasks
            .iter()
            .filter(|t| t.status.as_deref() == Some("FAILED"))
    }
}

/// The Valkey key of a story's context (the seed's key).
pub fn context_key(prefix: &str, story_id: &str) -> String {
    format!("{prefix}context:{story_id}")
}

/// Canonical bytes of a context: lists sorted, so equal contexts give equal bytes.
pub fn render(ctx: &StoryContext) -> Vec<u8> {
    let mut c = ctx.clone();
    c.phase_history.sort_by_key(|a| (a.at_ms, a.seq));
    c.plans.sort_by(|a, b| a.plan_id.cmp(&b.plan_id));
    c.tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    c.decisions
        .sort_by(|a, b| (a.decided_at_ms, &a.decision_id).cmp(&(b.decided_at_ms, &b.decision_id)));
    c.milestones
        .sort_by(|a, b| (a.reached_at_ms, &a.name).cmp(&(b.reached_at_ms, &b.name)));
    serde_json::to_vec(&c).expect("StoryContext always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story(tasks: &[&str], plans: Vec<PlanView>) -> StoryContext {
        StoryContext {
            story_id: "US-1".into(),
            title: None,
            description: None,
            phase: None,
            created_by: None,
            phase_history: vec![],
            plans,
            tasks: tasks
                .iter()
                .enumerate()
                .map(|(i, s)| TaskView {
                    task_id: format!("T-{i}"),
                    title: None,
                    role: None,
                    status: Some(s.to_string()),
                    agent_id: None,
                })
                .collect(),
            decisions: vec![],
            milestones: vec![],
            last_v: String::new(),
            blocked: None,
            rev: 0,
            event_time_ms: 0,
        }
    }

    fn plan(id: &str, created: i64, approved: Option<i64>) -> PlanView {
        PlanView {
            plan_id: id.into(),
            version: None,
            summary: None,
            created_at_ms: Some(created),
            approvals: approved
                .map(|at| ApprovalView {
                    approved_by: None,
                    approved_at_ms: Some(at),
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_failed_task_is_not_open() {
        let s = story(&["COMPLETED", "FAILED", "RUNNING"], vec![]);
        assert_eq!(s.open_tasks().count(), 1);
        assert_eq!(s.failed_tasks().count(), 1);
    }

    #[test]
    fn the_plan_in_effect_is_the_approved_one_never_a_newer_proposal() {
        let s = story(&[], vec![plan("old", 1, Some(2)), plan("new", 3, None)]);
        assert_eq!(s.current_plan().map(|p| p.plan_id.as_str()), Some("old"));
        let none = story(&[], vec![plan("only", 1, None)]);
        assert!(none.current_plan().is_none());
    }
}
