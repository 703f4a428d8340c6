//! The projection: (envelope, event) -> ordered graph, cache and outbound operations.

use crate::envelope::Envelope;
use crate::events::{DecisionFields, Event};
use crate::ops::{
    CacheOp, GraphOp, Group, NodeWrite, Outbound, Projection, Prop, Rel, RelWrite, Version,
};

/// Projects one decoded event. Pure: the same inputs always give the same operations.
///
/// ```
/// use projections::{decode, project, Envelope, GraphOp, Group};
/// let payload = br#"{"story_id":"US-VERIFY-001","plan_id":"plan-verify-v1","timestamp":"2025-10-16T18:00:00Z"}"#;
/// let env = Envelope::new("PLANNING_EVENTS", 42, "planning.plan.approved", 1_760_637_601_000_000_000, payload);
/// let event = decode(env.subject, env.content_type, env.payload).unwrap();
/// let p = project(&env, &event);
/// // The seed's PlanApproval id is `plan_id:timestamp` (event time, milliseconds).
/// assert!(p.graph.iter().any(|op| matches!(op,
///     GraphOp::Node(w) if w.group == Group::ApprovalRecord && w.id == "plan-verify-v1:1760637600000")));
/// ```
pub fn project(env: &Envelope<'_>, event: &Event) -> Projection {
    let mut b = Builder::new(env, event);
    use Event::*;
    match event {
        StoryCreated {
            story_id,
            title,
            description,
            phase,
            created_by,
            ..
        } => {
            let title = title.as_deref().map(crate::version::story_title);
            b.node(Group::StoryTitle, story_id, vec![title.into()]);
            if description.is_some() {
                b.node(
                    Group::StoryDescription,
                    story_id,
                    vec![description.clone().into()],
                );
            }
            b.node(
                Group::StoryCreatedBy,
                story_id,
                vec![created_by.clone().into()],
            );
            let phase = phase.clone().unwrap_or_else(|| "DRAFT".to_string());
            b.node(Group::StoryPhase, story_id, vec![phase.into(), Prop::Null]);
            b.record(story_id, "story created");
        }
        StoryUpdated {
            story_id,
            title,
            description,
            ..
        } => {
            // An update only touches the fields it carries.
            if title.is_some() {
                b.node(Group::StoryTitle, story_id, vec![title.clone().into()]);
            }
            if description.is_some() {
                b.node(
                    Group::StoryDescription,
                    story_id,
                    vec![description.clone().into()],
                );
            }
            b.record(story_id, "story updated");
        }
        StoryTransitioned {
            story_id,
            from_phase,
            to_phase,
            transitioned_by,
            ..
        } => {
            b.node(
                Group::StoryPhase,
                story_id,
                vec![to_phase.as_str().into(), transitioned_by.clone().into()],
            );
            let change_id = format!("{story_id}:{}:{}", env.stream, env.seq);
            b.node(
                Group::PhaseChangeRecord,
                &change_id,
                vec![
                    story_id.as_str().into(),
                    from_phase.clone().into(),
                    to_phase.as_str().into(),
                    transitioned_by.clone().into(),
                    b.event_time_ms.into(),
                ],
            );
            b.rel(Rel::StoryPhaseChange, story_id, &change_id);
            b.record(
                story_id,
                &format!(
                    "phase {} -> {to_phase}",
                    from_phase.as_deref().unwrap_or("?")
                ),
            );
        }
        PlanCreated {
            story_id,
            plan_id,
            version,
            summary,
            ..
        } => {
            b.node(
                Group::PlanDetails,
                plan_id,
                vec![
                    story_id.as_str().into(),
                    (*version).into(),
                    summary.clone().into(),
                    b.event_time_ms.into(),
                ],
            );
            b.rel(Rel::StoryPlan, story_id, plan_id);
            b.record(story_id, &format!("plan {plan_id} created"));
        }
        PlanApproved {
            story_id,
            plan_id,
            approved_by,
            ..
        } => {
            let approval_id = format!("{plan_id}:{}", b.event_time_ms);
            b.node(
                Group::ApprovalRecord,
                &approval_id,
                vec![
                    story_id.as_str().into(),
                    plan_id.as_str().into(),
                    approved_by.clone().into(),
                    b.event_time_ms.into(),
                ],
            );
            b.rel(Rel::StoryPlan, story_id, plan_id);
            b.rel(Rel::StoryApproval, story_id, &approval_id);
            b.rel(Rel::ApprovalOfPlan, &approval_id, plan_id);
            b.record(story_id, &format!("plan {plan_id} approved"));
        }
        TaskCreated {
            story_id,
            task_id,
            title,
            assigned_role,
            phase,
            plan_id,
            ..
        } => {
            b.node(
                Group::TaskDetails,
                task_id,
                vec![
                    story_id.as_str().into(),
                    title.clone().into(),
                    phase.clone().into(),
                    plan_id.clone().into(),
                ],
            );
            if assigned_role.is_some() {
                b.node(Group::TaskRole, task_id, vec![assigned_role.clone().into()]);
            }
            b.task_status(task_id, "CREATED", None, None);
            b.rel(Rel::StoryTask, story_id, task_id);
            if let Some(plan_id) = plan_id {
                b.rel(Rel::TaskInPlan, task_id, plan_id);
            }
            b.record(story_id, &format!("task {task_id} created"));
        }
        TaskAssigned {
            story_id,
            task_id,
            assigned_role,
            agent_id,
            ..
        } => {
            b.node(
                Group::TaskRole,
                task_id,
                vec![assigned_role.as_str().into()],
            );
            b.task_status(task_id, "ASSIGNED", None, None);
            b.rel(Rel::StoryTask, story_id, task_id);
            if let Some(agent) = agent_id {
                b.task_agent(task_id, agent);
            }
            b.record(
                story_id,
                &format!("task {task_id} assigned to {assigned_role}"),
            );
        }
        TaskCompleted {
            story_id, task_id, ..
        } => {
            b.task_status(task_id, "COMPLETED", None, None);
            b.rel(Rel::StoryTask, story_id, task_id);
            b.record(story_id, &format!("task {task_id} completed"));
        }
        // Derived from decisions this projector (or the Context service) already recorded:
        // projecting it again would loop our own outbound events back into the graph.
        ContextUpdated { .. } => return Projection::default(),
        DecisionAdded {
            story_id,
            task_id,
            decision,
            ..
        } => {
            b.decision(story_id, task_id.as_deref(), decision);
            b.record(story_id, &format!("decision {} added", decision.id));
        }
        MilestoneReached {
            story_id,
            milestone,
            ..
        } => {
            let id = format!("{story_id}:{milestone}");
            b.node(
                Group::MilestoneRecord,
                &id,
                vec![
                    story_id.as_str().into(),
                    milestone.as_str().into(),
                    b.event_time_ms.into(),
                ],
            );
            b.rel(Rel::StoryMilestone, story_id, &id);
            b.record(story_id, &format!("milestone {milestone} reached"));
        }
        SnapshotCreated {
            story_id,
            snapshot_id,
            version,
            ..
        } => {
            b.node(
                Group::StorySnapshot,
                story_id,
                vec![snapshot_id.as_str().into(), (*version).into()],
            );
            b.record(story_id, &format!("snapshot {snapshot_id} created"));
        }
        DeliberationStarted {
            story_id,
            task_id,
            deliberation_id,
            role,
            ..
        } => {
            let id = deliberation_id.clone().unwrap_or_else(|| task_id.clone());
            b.node(
                Group::DeliberationStart,
                &id,
                vec![
                    story_id.as_str().into(),
                    task_id.as_str().into(),
                    role.clone().into(),
                    b.event_time_ms.into(),
                ],
            );
            b.rel(Rel::StoryTask, story_id, task_id);
            b.rel(Rel::TaskDeliberation, task_id, &id);
            b.record(story_id, &format!("deliberation {id} started"));
        }
        DeliberationCompleted {
            story_id,
            task_id,
            deliberation_id,
            decisions,
            ..
        } => {
            let id = deliberation_id.clone().unwrap_or_else(|| task_id.clone());
            b.node(
                Group::DeliberationEnd,
                &id,
                vec![b.event_time_ms.into(), (decisions.len() as i64).into()],
            );
            b.rel(Rel::StoryTask, story_id, task_id);
            b.rel(Rel::TaskDeliberation, task_id, &id);
            for d in decisions {
                b.decision(story_id, Some(task_id), d);
                b.rel(Rel::DecisionFromDeliberation, &id, &d.id);
            }
            b.record(
                story_id,
                &format!(
                    "deliberation {id} completed with {} decision(s)",
                    decisions.len()
                ),
            );
            b.context_updated(story_id, decisions);
        }
        AgentRegistered {
            agent_id,
            role,
            agent_type,
            ..
        } => {
            b.node(
                Group::AgentDetails,
                agent_id,
                vec![role.clone().into(), agent_type.clone().into()],
            );
        }
        CouncilFormed {
            council_id,
            story_id,
            role,
            agent_ids,
            ..
        } => {
            b.node(
                Group::CouncilDetails,
                council_id,
                vec![
                    story_id.clone().into(),
                    role.clone().into(),
                    Prop::StrList(agent_ids.clone()),
                ],
            );
            for agent in agent_ids {
                b.rel(Rel::AgentInCouncil, agent, council_id);
            }
            if let Some(story_id) = story_id {
                b.rel(Rel::CouncilForStory, council_id, story_id);
                b.record(story_id, &format!("council {council_id} formed"));
            }
        }
        TaskDispatched {
            story_id,
            task_id,
            agent_id,
            ..
        } => {
            b.task_status(task_id, "DISPATCHED", None, None);
            b.rel(Rel::StoryTask, story_id, task_id);
            if let Some(agent) = agent_id {
                b.task_agent(task_id, agent);
            }
            b.record(story_id, &format!("task {task_id} dispatched"));
        }
        OrchestrationTaskCompleted {
            story_id,
            task_id,
            agent_id,
            ..
        } => {
            b.task_status(task_id, "COMPLETED", None, None);
            b.rel(Rel::StoryTask, story_id, task_id);
            if let Some(agent) = agent_id {
                b.task_agent(task_id, agent);
            }
            b.record(story_id, &format!("task {task_id} completed by agent"));
        }
        // Commands are requests, not facts: the responses say what happened.
        AgentCommand { .. } => return Projection::default(),
        AgentResponse {
            status,
            task_id,
            story_id,
            agent_id,
            progress,
            error,
            ..
        } => {
            b.task_status(task_id, status.task_status(), *progress, error.clone());
            if let Some(agent) = agent_id {
                b.task_agent(task_id, agent);
            }
            if let Some(story_id) = story_id {
                b.rel(Rel::StoryTask, story_id, task_id);
                b.record(
                    story_id,
                    &format!("task {task_id} {}", status.task_status().to_lowercase()),
                );
            }
        }
    }
    b.finish()
}

struct Builder<'e> {
    env: &'e Envelope<'e>,
    version: Version,
    event_time_ms: i64,
    out: Projection,
    stories: Vec<String>,
}

/// The event's own time if it carries one, else the stream's timestamp; never the clock.
fn event_time_ms(env: &Envelope<'_>, event: &Event) -> i64 {
    use Event::*;
    let own = match event {
        StoryCreated { time_ms, .. }
        | StoryUpdated { time_ms, .. }
        | StoryTransitioned { time_ms, .. }
        | PlanCreated { time_ms, .. }
        | PlanApproved { time_ms, .. }
        | TaskCreated { time_ms, .. }
        | TaskAssigned { time_ms, .. }
        | TaskCompleted { time_ms, .. }
        | DecisionAdded { time_ms, .. }
        | MilestoneReached { time_ms, .. }
        | SnapshotCreated { time_ms, .. }
        | DeliberationStarted { time_ms, .. }
        | DeliberationCompleted { time_ms, .. }
        | AgentRegistered { time_ms, .. }
        | CouncilFormed { time_ms, .. }
        | TaskDispatched { time_ms, .. }
        | OrchestrationTaskCompleted { time_ms, .. }
        | AgentResponse { time_ms, .. } => *time_ms,
        ContextUpdated { .. } | AgentCommand { .. } => None,
    };
    own.unwrap_or(env.stream_ts_ns.div_euclid(1_000_000))
}

impl<'e> Builder<'e> {
    fn new(env: &'e Envelope<'e>, event: &Event) -> Self {
        Builder {
            env,
            version: Version::new(
                event_time_ms(env, event),
                env.stream_ts_ns,
                env.stream,
                env.seq,
            ),
            event_time_ms: event_time_ms(env, event),
            out: Projection::default(),
            stories: Vec::new(),
        }
    }

    fn node(&mut self, group: Group, id: &str, values: Vec<Prop>) {
        debug_assert_eq!(values.len(), group.props().len(), "{group}");
        self.out.graph.push(GraphOp::Node(NodeWrite {
            group,
            id: id.to_string(),
            values,
            version: self.version.clone(),
            event_time_ms: self.event_time_ms,
        }));
    }

    fn rel(&mut self, rel: Rel, from: &str, to: &str) {
        self.out.graph.push(GraphOp::Rel(RelWrite {
            rel,
            from: from.to_string(),
            to: to.to_string(),
            version: self.version.clone(),
            event_time_ms: self.event_time_ms,
        }));
    }

    fn task_status(
        &mut self,
        task_id: &str,
        status: &str,
        progress: Option<i64>,
        error: Option<String>,
    ) {
        self.node(
            Group::TaskStatus,
            task_id,
            vec![status.into(), progress.into(), error.into()],
        );
    }

    fn task_agent(&mut self, task_id: &str, agent_id: &str) {
        self.node(Group::TaskAgent, task_id, vec![agent_id.into()]);
        self.rel(Rel::TaskAssignedAgent, task_id, agent_id);
    }

    fn decision(&mut self, story_id: &str, task_id: Option<&str>, d: &DecisionFields) {
        self.node(
            Group::DecisionRecord,
            &d.id,
            vec![
                story_id.into(),
                task_id.map(str::to_string).into(),
                d.title.clone().into(),
                d.rationale.clone().into(),
                d.decided_by.clone().into(),
                self.event_time_ms.into(),
            ],
        );
        self.rel(Rel::StoryDecision, story_id, &d.id);
        if let Some(task_id) = task_id {
            self.rel(Rel::DecisionForTask, &d.id, task_id);
        }
    }

    /// One timeline entry per projected event of a story, keyed by its stream position.
    fn record(&mut self, story_id: &str, summary: &str) {
        let id = format!("{}:{}", self.env.stream, self.env.seq);
        self.node(
            Group::EventRecord,
            &id,
            vec![
                story_id.into(),
                self.env.subject.into(),
                self.env.stream.into(),
                (self.env.seq as i64).into(),
                self.event_time_ms.into(),
                summary.into(),
            ],
        );
        self.rel(Rel::StoryHasEvent, story_id, &id);
        // Keeps the story's `last_v` at its newest event: the cache's staleness check.
        self.node(Group::StoryActivity, story_id, vec![id.as_str().into()]);
        if !self.stories.iter().any(|s| s == story_id) {
            self.stories.push(story_id.to_string());
        }
    }

    fn context_updated(&mut self, story_id: &str, decisions: &[DecisionFields]) {
        // Seed 003: after decisions are recorded the Context service publishes context.updated.
        // The seed used int(time.time()) as version; the source position is deterministic.
        let payload = serde_json::json!({
            "event_type": "CONTEXT_UPDATED",
            "story_id": story_id,
            "version": self.env.seq,
            "changes": ["decisions"],
            "decision_ids": decisions.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            "source_stream": self.env.stream,
            "source_seq": self.env.seq,
        });
        self.out.outbound.push(Outbound {
            subject: "context.updated".to_string(),
            msg_id: format!(
                "projector:{}:{}:context.updated",
                self.env.stream, self.env.seq
            ),
            payload: serde_json::to_vec(&payload).expect("a json! value always serializes"),
        });
    }

    fn finish(mut self) -> Projection {
        for story_id in std::mem::take(&mut self.stories) {
            self.out.cache.push(CacheOp::RefreshContext {
                story_id,
                version: self.version.clone(),
            });
        }
        self.out
    }
}
