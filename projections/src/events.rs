//! The event catalog: one typed event per subject of seed 003.
//!
//! The subject decides the type. `event_type`, when present, must agree with it.
//! Unknown extra fields are ignored. See `docs/events.md` for the table.

use crate::decode::{parse_object, DecodeError, Fields, Format};
use serde_json::{Map, Value};

/// A decision as carried by `orchestration.deliberation.completed` and `context.decision.added`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionFields {
    pub id: String,
    pub title: Option<String>,
    pub rationale: Option<String>,
    pub decided_by: Option<String>,
}

/// Every event the projector understands. Field names follow the seeds (snake_case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    StoryCreated {
        story_id: String,
        title: Option<String>,
        description: Option<String>,
        phase: Option<String>,
        created_by: Option<String>,
        time_ms: Option<i64>,
    },
    StoryUpdated {
        story_id: String,
        title: Option<String>,
        description: Option<String>,
        time_ms: Option<i64>,
    },
    StoryTransitioned {
        story_id: String,
        from_phase: Option<String>,
        to_phase: String,
        transitioned_by: Option<String>,
        time_ms: Option<i64>,
    },
    PlanCreated {
        story_id: String,
        plan_id: String,
        version: Option<i64>,
        summary: Option<String>,
        time_ms: Option<i64>,
    },
    PlanApproved {
        story_id: String,
        plan_id: String,
        approved_by: Option<String>,
        /// The approval's own time; it is part of the PlanApproval id (`plan_id:timestamp`).
        time_ms: Option<i64>,
    },
    TaskCreated {
        story_id: String,
        task_id: String,
        title: Option<String>,
        assigned_role: Option<String>,
        phase: Option<String>,
        plan_id: Option<String>,
        time_ms: Option<i64>,
    },
    TaskAssigned {
        story_id: String,
        task_id: String,
        assigned_role: String,
        agent_id: Option<String>,
        time_ms: Option<i64>,
    },
    TaskCompleted {
        story_id: String,
        task_id: String,
        time_ms: Option<i64>,
    },
    ContextUpdated {
        story_id: String,
        version: Option<i64>,
        changes: Vec<String>,
    },
    DecisionAdded {
        story_id: String,
        task_id: Option<String>,
        decision: DecisionFields,
        time_ms: Option<i64>,
    },
    MilestoneReached {
        story_id: String,
        milestone: String,
        time_ms: Option<i64>,
    },
    SnapshotCreated {
        story_id: String,
        snapshot_id: String,
        version: Option<i64>,
        time_ms: Option<i64>,
    },
    DeliberationStarted {
        story_id: String,
        task_id: String,
        deliberation_id: Option<String>,
        role: Option<String>,
        time_ms: Option<i64>,
    },
    DeliberationCompleted {
        story_id: String,
        task_id: String,
        deliberation_id: Option<String>,
        decisions: Vec<DecisionFields>,
        time_ms: Option<i64>,
    },
    AgentRegistered {
        agent_id: String,
        role: Option<String>,
        agent_type: Option<String>,
        time_ms: Option<i64>,
    },
    CouncilFormed {
        council_id: String,
        story_id: Option<String>,
        role: Option<String>,
        agent_ids: Vec<String>,
        time_ms: Option<i64>,
    },
    TaskDispatched {
        story_id: String,
        task_id: String,
        agent_id: Option<String>,
        time_ms: Option<i64>,
    },
    OrchestrationTaskCompleted {
        story_id: String,
        task_id: String,
        agent_id: Option<String>,
        time_ms: Option<i64>,
    },
    /// `agent.cmd.{execute,stop,report}`: requests, not facts; decoded and validated, projected to nothing.
    AgentCommand {
        command: AgentCommandKind,
        task_id: String,
        story_id: Option<String>,
        agent_id: Option<String>,
    },
    /// `agent.response.{started,progress,completed,failed}`.
    AgentResponse {
        status: AgentResponseKind,
        task_id: String,
        story_id: Option<String>,
        agent_id: Option<String>,
        progress: Option<i64>,
        error: Option<String>,
        time_ms: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCommandKind {
    Execute,
    Stop,
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentResponseKind {
    Started,
    Progress,
    Completed,
    Failed,
}

impl AgentResponseKind {
    /// The task status this response reports.
    pub fn task_status(self) -> &'static str {
        match self {
            AgentResponseKind::Started | AgentResponseKind::Progress => "RUNNING",
            AgentResponseKind::Completed => "COMPLETED",
            AgentResponseKind::Failed => "FAILED",
        }
    }
}

/// Every subject in the catalog with its expected `event_type`, in catalog order.
pub const CATALOG: &[(&str, &str)] = &[
    ("planning.story.created", "STORY_CREATED"),
    ("planning.story.updated", "STORY_UPDATED"),
    ("planning.story.transitioned", "STORY_TRANSITIONED"),
    ("planning.plan.created", "PLAN_CREATED"),
    ("planning.plan.approved", "PLAN_APPROVED"),
    ("planning.task.created", "TASK_CREATED"),
    ("planning.task.assigned", "TASK_ASSIGNED"),
    ("planning.task.completed", "TASK_COMPLETED"),
    ("context.updated", "CONTEXT_UPDATED"),
    ("context.decision.added", "DECISION_ADDED"),
    ("context.milestone.reached", "MILESTONE_REACHED"),
    ("context.snapshot.created", "SNAPSHOT_CREATED"),
    ("orchestration.deliberation.started", "DELIBERATION_STARTED"),
    (
        "orchestration.deliberation.completed",
        "DELIBERATION_COMPLETED",
    ),
    ("orchestration.agent.registered", "AGENT_REGISTERED"),
    ("orchestration.council.formed", "COUNCIL_FORMED"),
    ("orchestration.task.dispatched", "TASK_DISPATCHED"),
    ("orchestration.task.completed", "TASK_COMPLETED"),
    ("agent.cmd.execute", "AGENT_CMD_EXECUTE"),
    ("agent.cmd.stop", "AGENT_CMD_STOP"),
    ("agent.cmd.report", "AGENT_CMD_REPORT"),
    ("agent.response.started", "AGENT_RESPONSE_STARTED"),
    ("agent.response.progress", "AGENT_RESPONSE_PROGRESS"),
    ("agent.response.completed", "AGENT_RESPONSE_COMPLETED"),
    ("agent.response.failed", "AGENT_RESPONSE_FAILED"),
];

/// Decodes a payload received on `subject`.
///
/// ```
/// use projections::{decode, Event};
/// let ev = decode("planning.plan.approved", None,
///     br#"{"event_type":"PLAN_APPROVED","story_id":"US-VERIFY-001","plan_id":"plan-verify-v1"}"#).unwrap();
/// assert!(matches!(ev, Event::PlanApproved { ref story_id, .. } if story_id == "US-VERIFY-001"));
///
/// // The seeds' real test message is a typed error, not a panic.
/// let err = decode("planning.plan.approved", None, br#"{"test":"data"}"#).unwrap_err();
/// assert_eq!(err.to_string(),
///     "planning.plan.approved: missing required field `story_id` (expected a non-empty string)");
/// ```
///
/// # Errors
/// [`DecodeError`] for an unknown subject, an oversized or malformed payload, a missing
/// or ill-typed required field, or an `event_type` that contradicts the subject.
pub fn decode(
    subject: &str,
    content_type: Option<&str>,
    payload: &[u8],
) -> Result<Event, DecodeError> {
    let expected_type = CATALOG
        .iter()
        .find(|(s, _)| *s == subject)
        .map(|(_, t)| *t)
        .ok_or_else(|| DecodeError::UnknownSubject {
            subject: subject.to_string(),
        })?;
    let map = parse_object(subject, Format::from_content_type(content_type), payload)?;
    let f = Fields::new(subject, &map);
    if let Some(found) = f.opt_str("event_type")? {
        if found != expected_type {
            return Err(DecodeError::EventTypeMismatch {
                subject: subject.to_string(),
                expected: expected_type,
                found,
            });
        }
    }
    from_fields(subject, &f)
}

fn decision(f: &Fields<'_>) -> Result<DecisionFields, DecodeError> {
    Ok(DecisionFields {
        id: f.req_str("id")?,
        title: f.opt_str("title")?,
        rationale: f.opt_str("rationale")?,
        decided_by: match f.opt_str("decided_by")? {
            Some(who) => Some(who),
            None => f.opt_str("agent_id")?,
        },
    })
}

fn from_fields(subject: &str, f: &Fields<'_>) -> Result<Event, DecodeError> {
    let time = || f.opt_time_ms("timestamp");
    Ok(match subject {
        "planning.story.created" => Event::StoryCreated {
            story_id: f.req_str("story_id")?,
            title: f.opt_str("title")?,
            description: f.opt_str("description")?,
            phase: f.opt_str("phase")?,
            created_by: f.opt_str("created_by")?,
            time_ms: time()?,
        },
        "planning.story.updated" => Event::StoryUpdated {
            story_id: f.req_str("story_id")?,
            title: f.opt_str("title")?,
            description: f.opt_str("description")?,
            time_ms: time()?,
        },
        "planning.story.transitioned" => Event::StoryTransitioned {
            story_id: f.req_str("story_id")?,
            from_phase: f.opt_str("from_phase")?,
            to_phase: f.req_str("to_phase")?,
            transitioned_by: f.opt_str("transitioned_by")?,
            time_ms: time()?,
        },
        "planning.plan.created" => Event::PlanCreated {
            story_id: f.req_str("story_id")?,
            plan_id: f.req_str("plan_id")?,
            version: f.opt_i64("version")?,
            summary: f.opt_str("summary")?,
            time_ms: time()?,
        },
        "planning.plan.approved" => Event::PlanApproved {
            story_id: f.req_str("story_id")?,
            plan_id: f.req_str("plan_id")?,
            approved_by: f.opt_str("approved_by")?,
            time_ms: time()?,
        },
        "planning.task.created" => Event::TaskCreated {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            title: f.opt_str("title")?,
            assigned_role: f.opt_str("assigned_role")?,
            phase: f.opt_str("phase")?,
            plan_id: f.opt_str("plan_id")?,
            time_ms: time()?,
        },
        "planning.task.assigned" => Event::TaskAssigned {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            assigned_role: f.req_str("assigned_role")?,
            agent_id: f.opt_str("agent_id")?,
            time_ms: time()?,
        },
        "planning.task.completed" => Event::TaskCompleted {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            time_ms: time()?,
        },
        "context.updated" => Event::ContextUpdated {
            story_id: f.req_str("story_id")?,
            version: f.opt_i64("version")?,
            changes: f.opt_str_list("changes")?,
        },
        "context.decision.added" => {
            let id = match f.opt_str("decision_id")? {
                Some(id) if !id.trim().is_empty() => id,
                _ => f.req_str("id").map_err(|_| DecodeError::MissingField {
                    subject: subject.to_string(),
                    field: "decision_id".to_string(),
                    expected: "a non-empty string",
                })?,
            };
            Event::DecisionAdded {
                story_id: f.req_str("story_id")?,
                task_id: f.opt_str("task_id")?,
                decision: DecisionFields {
                    id,
                    title: f.opt_str("title")?,
                    rationale: f.opt_str("rationale")?,
                    decided_by: f.opt_str("decided_by")?,
                },
                time_ms: time()?,
            }
        }
        "context.milestone.reached" => Event::MilestoneReached {
            story_id: f.req_str("story_id")?,
            milestone: f.req_str("milestone")?,
            time_ms: time()?,
        },
        "context.snapshot.created" => Event::SnapshotCreated {
            story_id: f.req_str("story_id")?,
            snapshot_id: f.req_str("snapshot_id")?,
            version: f.opt_i64("version")?,
            time_ms: time()?,
        },
        "orchestration.deliberation.started" => Event::DeliberationStarted {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            deliberation_id: f.opt_str("deliberation_id")?,
            role: f.opt_str("role")?,
            time_ms: time()?,
        },
        "orchestration.deliberation.completed" => {
            let items = f.req_objects("decisions")?;
            let decisions = items
                .iter()
                .enumerate()
                .map(|(i, m)| decision(&f.nested("decisions", i, m)))
                .collect::<Result<Vec<_>, _>>()?;
            Event::DeliberationCompleted {
                story_id: f.req_str("story_id")?,
                task_id: f.req_str("task_id")?,
                deliberation_id: f.opt_str("deliberation_id")?,
                decisions,
                time_ms: time()?,
            }
        }
        "orchestration.agent.registered" => Event::AgentRegistered {
            agent_id: f.req_str("agent_id")?,
            role: f.opt_str("role")?,
            agent_type: f.opt_str("agent_type")?,
            time_ms: time()?,
        },
        "orchestration.council.formed" => Event::CouncilFormed {
            council_id: f.req_str("council_id")?,
            story_id: f.opt_str("story_id")?,
            role: f.opt_str("role")?,
            agent_ids: f.opt_str_list("agent_ids")?,
            time_ms: time()?,
        },
        "orchestration.task.dispatched" => Event::TaskDispatched {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            agent_id: f.opt_str("agent_id")?,
            time_ms: time()?,
        },
        "orchestration.task.completed" => Event::OrchestrationTaskCompleted {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            agent_id: f.opt_str("agent_id")?,
            time_ms: time()?,
        },
        s if s.starts_with("agent.cmd.") => Event::AgentCommand {
            command: match s {
                "agent.cmd.execute" => AgentCommandKind::Execute,
                "agent.cmd.stop" => AgentCommandKind::Stop,
                "agent.cmd.report" => AgentCommandKind::Report,
                // A subject added to CATALOG without its kind here is refused, not read
                // as some other kind.
                other => return Err(unmapped(other)),
            },
            task_id: f.req_str("task_id")?,
            story_id: f.opt_str("story_id")?,
            agent_id: f.opt_str("agent_id")?,
        },
        s if s.starts_with("agent.response.") => Event::AgentResponse {
            status: match s {
                "agent.response.started" => AgentResponseKind::Started,
                "agent.response.progress" => AgentResponseKind::Progress,
                "agent.response.completed" => AgentResponseKind::Completed,
                "agent.response.failed" => AgentResponseKind::Failed,
                other => return Err(unmapped(other)),
            },
            task_id: f.req_str("task_id")?,
            story_id: f.opt_str("story_id")?,
            agent_id: f.opt_str("agent_id")?,
            progress: f.opt_i64("progress")?,
            error: f.opt_str("error")?,
            time_ms: time()?,
        },
        // CATALOG and this match are kept in step by the `every_catalog_subject_decodes` test.
        other => return Err(unmapped(other)),
    })
}

fn unmapped(subject: &str) -> DecodeError {
    DecodeError::UnknownSubject {
        subject: subject.to_string(),
    }
}

impl Event {
    /// The story this event belongs to, if any; the unit of ordering and of sequenced dead letters.
    pub fn story_id(&self) -> Option<&str> {
        use Event::*;
        match self {
            StoryCreated { story_id, .. }
            | StoryUpdated { story_id, .. }
            | StoryTransitioned { story_id, .. }
            | PlanCreated { story_id, .. }
            | PlanApproved { story_id, .. }
            | TaskCreated { story_id, .. }
            | TaskAssigned { story_id, .. }
            | TaskCompleted { story_id, .. }
            | ContextUpdated { story_id, .. }
            | DecisionAdded { story_id, .. }
            | MilestoneReached { story_id, .. }
            | SnapshotCreated { story_id, .. }
            | DeliberationStarted { story_id, .. }
            | DeliberationCompleted { story_id, .. }
            | TaskDispatched { story_id, .. }
            | OrchestrationTaskCompleted { story_id, .. } => Some(story_id),
            CouncilFormed { story_id, .. }
            | AgentCommand { story_id, .. }
            | AgentResponse { story_id, .. } => story_id.as_deref(),
            AgentRegistered { .. } => None,
        }
    }
}

/// Best-effort story id of a payload that failed to decode, so a parked message can still
/// hold back the later events of its story.
pub fn sniff_story_id(content_type: Option<&str>, payload: &[u8]) -> Option<String> {
    let map: Map<String, Value> =
        parse_object("", Format::from_content_type(content_type), payload).ok()?;
    match map.get("story_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}
