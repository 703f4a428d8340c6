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

/// Declares the catalog once: the [`Subject`] enum, [`Subject::ALL`], each subject's text
/// and `event_type`, and [`CATALOG`]. Nothing can be in one and missing from another, and
/// `from_fields` matches on `Subject` without a catch-all, so a subject added here does
/// not compile until it is mapped to its event.
macro_rules! catalog {
    ($($variant:ident = $subject:literal, $event_type:literal;)*) => {
        /// A subject of the catalog (without the deployment's prefix).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Subject {
            $($variant),*
        }

        impl Subject {
            /// Every subject, in catalog order.
            pub const ALL: &'static [Subject] = &[$(Subject::$variant),*];

            /// The subject as published (without the deployment's prefix).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Subject::$variant => $subject),*
                }
            }

            /// The `event_type` a payload on this subject may carry.
            pub const fn event_type(self) -> &'static str {
                match self {
                    $(Subject::$variant => $event_type),*
                }
            }
        }

        /// Every subject in the catalog with its expected `event_type`, in catalog order.
        pub const CATALOG: &[(&str, &str)] = &[$(($subject, $event_type)),*];
    };
}

catalog! {
    StoryCreated = "planning.story.created", "STORY_CREATED";
    StoryUpdated = "planning.story.updated", "STORY_UPDATED";
    StoryTransitioned = "planning.story.transitioned", "STORY_TRANSITIONED";
    PlanCreated = "planning.plan.created", "PLAN_CREATED";
    PlanApproved = "planning.plan.approved", "PLAN_APPROVED";
    TaskCreated = "planning.task.created", "TASK_CREATED";
    TaskAssigned = "planning.task.assigned", "TASK_ASSIGNED";
    TaskCompleted = "planning.task.completed", "TASK_COMPLETED";
    ContextUpdated = "context.updated", "CONTEXT_UPDATED";
    DecisionAdded = "context.decision.added", "DECISION_ADDED";
    MilestoneReached = "context.milestone.reached", "MILESTONE_REACHED";
    SnapshotCreated = "context.snapshot.created", "SNAPSHOT_CREATED";
    DeliberationStarted = "orchestration.deliberation.started", "DELIBERATION_STARTED";
    DeliberationCompleted = "orchestration.deliberation.completed", "DELIBERATION_COMPLETED";
    AgentRegistered = "orchestration.agent.registered", "AGENT_REGISTERED";
    CouncilFormed = "orchestration.council.formed", "COUNCIL_FORMED";
    TaskDispatched = "orchestration.task.dispatched", "TASK_DISPATCHED";
    OrchestrationTaskCompleted = "orchestration.task.completed", "TASK_COMPLETED";
    AgentCmdExecute = "agent.cmd.execute", "AGENT_CMD_EXECUTE";
    AgentCmdStop = "agent.cmd.stop", "AGENT_CMD_STOP";
    AgentCmdReport = "agent.cmd.report", "AGENT_CMD_REPORT";
    AgentResponseStarted = "agent.response.started", "AGENT_RESPONSE_STARTED";
    AgentResponseProgress = "agent.response.progress", "AGENT_RESPONSE_PROGRESS";
    AgentResponseCompleted = "agent.response.completed", "AGENT_RESPONSE_COMPLETED";
    AgentResponseFailed = "agent.response.failed", "AGENT_RESPONSE_FAILED";
}

impl Subject {
    /// The catalog subject `s` names, if any.
    ///
    /// ```
    /// use projections::events::Subject;
    /// assert_eq!(Subject::parse("planning.plan.approved"), Some(Subject::PlanApproved));
    /// assert_eq!(Subject::parse("planning.story.exploded"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Subject> {
        Subject::ALL.iter().copied().find(|x| x.as_str() == s)
    }
}

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
    let known = Subject::parse(subject).ok_or_else(|| unmapped(subject))?;
    let expected_type = known.event_type();
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
    from_fields(known, &f)
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

fn from_fields(subject: Subject, f: &Fields<'_>) -> Result<Event, DecodeError> {
    let time = || f.opt_time_ms("timestamp");
    Ok(match subject {
        Subject::StoryCreated => Event::StoryCreated {
            story_id: f.req_str("story_id")?,
            title: f.opt_str("title")?,
            description: f.opt_str("description")?,
            phase: f.opt_str("phase")?,
            created_by: f.opt_str("created_by")?,
            time_ms: time()?,
        },
        Subject::StoryUpdated => Event::StoryUpdated {
            story_id: f.req_str("story_id")?,
            title: f.opt_str("title")?,
            description: f.opt_str("description")?,
            time_ms: time()?,
        },
        Subject::StoryTransitioned => Event::StoryTransitioned {
            story_id: f.req_str("story_id")?,
            from_phase: f.opt_str("from_phase")?,
            to_phase: f.req_str("to_phase")?,
            transitioned_by: f.opt_str("transitioned_by")?,
            time_ms: time()?,
        },
        Subject::PlanCreated => Event::PlanCreated {
            story_id: f.req_str("story_id")?,
            plan_id: f.req_str("plan_id")?,
            version: f.opt_i64("version")?,
            summary: f.opt_str("summary")?,
            time_ms: time()?,
        },
        Subject::PlanApproved => Event::PlanApproved {
            story_id: f.req_str("story_id")?,
            plan_id: f.req_str("plan_id")?,
            approved_by: f.opt_str("approved_by")?,
            time_ms: time()?,
        },
        Subject::TaskCreated => Event::TaskCreated {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            title: f.opt_str("title")?,
            assigned_role: f.opt_str("assigned_role")?,
            phase: f.opt_str("phase")?,
            plan_id: f.opt_str("plan_id")?,
            time_ms: time()?,
        },
        Subject::TaskAssigned => Event::TaskAssigned {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            assigned_role: f.req_str("assigned_role")?,
            agent_id: f.opt_str("agent_id")?,
            time_ms: time()?,
        },
        Subject::TaskCompleted => Event::TaskCompleted {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            time_ms: time()?,
        },
        Subject::ContextUpdated => Event::ContextUpdated {
            story_id: f.req_str("story_id")?,
            version: f.opt_i64("version")?,
            changes: f.opt_str_list("changes")?,
        },
        Subject::DecisionAdded => {
            let id = match f.opt_str("decision_id")? {
                Some(id) if !id.trim().is_empty() => id,
                _ => f.req_str("id").map_err(|_| DecodeError::MissingField {
                    subject: subject.as_str().to_string(),
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
        Subject::MilestoneReached => Event::MilestoneReached {
            story_id: f.req_str("story_id")?,
            milestone: f.req_str("milestone")?,
            time_ms: time()?,
        },
        Subject::SnapshotCreated => Event::SnapshotCreated {
            story_id: f.req_str("story_id")?,
            snapshot_id: f.req_str("snapshot_id")?,
            version: f.opt_i64("version")?,
            time_ms: time()?,
        },
        Subject::DeliberationStarted => Event::DeliberationStarted {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            deliberation_id: f.opt_str("deliberation_id")?,
            role: f.opt_str("role")?,
            time_ms: time()?,
        },
        Subject::DeliberationCompleted => {
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
        Subject::AgentRegistered => Event::AgentRegistered {
            agent_id: f.req_str("agent_id")?,
            role: f.opt_str("role")?,
            agent_type: f.opt_str("agent_type")?,
            time_ms: time()?,
        },
        Subject::CouncilFormed => Event::CouncilFormed {
            council_id: f.req_str("council_id")?,
            story_id: f.opt_str("story_id")?,
            role: f.opt_str("role")?,
            agent_ids: f.opt_str_list("agent_ids")?,
            time_ms: time()?,
        },
        Subject::TaskDispatched => Event::TaskDispatched {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            agent_id: f.opt_str("agent_id")?,
            time_ms: time()?,
        },
        Subject::OrchestrationTaskCompleted => Event::OrchestrationTaskCompleted {
            story_id: f.req_str("story_id")?,
            task_id: f.req_str("task_id")?,
            agent_id: f.opt_str("agent_id")?,
            time_ms: time()?,
        },
        Subject::AgentCmdExecute => agent_command(f, AgentCommandKind::Execute)?,
        Subject::AgentCmdStop => agent_command(f, AgentCommandKind::Stop)?,
        Subject::AgentCmdReport => agent_command(f, AgentCommandKind::Report)?,
        Subject::AgentResponseStarted => agent_response(f, AgentResponseKind::Started)?,
        Subject::AgentResponseProgress => agent_response(f, AgentResponseKind::Progress)?,
        Subject::AgentResponseCompleted => agent_response(f, AgentResponseKind::Completed)?,
        Subject::AgentResponseFailed => agent_response(f, AgentResponseKind::Failed)?,
    })
}

fn agent_command(f: &Fields<'_>, command: AgentCommandKind) -> Result<Event, DecodeError> {
    Ok(Event::AgentCommand {
        command,
        task_id: f.req_str("task_id")?,
        story_id: f.opt_str("story_id")?,
        agent_id: f.opt_str("agent_id")?,
    })
}

fn agent_response(f: &Fields<'_>, status: AgentResponseKind) -> Result<Event, DecodeError> {
    Ok(Event::AgentResponse {
        status,
        task_id: f.req_str("task_id")?,
        story_id: f.opt_str("story_id")?,
        agent_id: f.opt_str("agent_id")?,
        progress: f.opt_i64("progress")?,
        error: f.opt_str("error")?,
        time_ms: f.opt_time_ms("timestamp")?,
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
