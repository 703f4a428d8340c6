//! One decode test and one projection test per subject of the catalog.

use projections::events::{AgentCommandKind, AgentResponseKind};
use projections::{
    decode, project, CacheOp, DecodeError, Envelope, Event, GraphOp, Group, Projection, Prop, Rel,
    CATALOG,
};

const TS: i64 = 1_760_637_601_000_000_000; // stream time, 2025-10-16T18:00:01Z

fn run(subject: &str, payload: &str) -> (Event, Projection) {
    let env = Envelope::new(stream_of(subject), 7, subject, TS, payload.as_bytes());
    let event = decode(subject, None, payload.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let p = project(&env, &event);
    (event, p)
}

fn stream_of(subject: &str) -> &'static str {
    match subject.split('.').next().unwrap() {
        "planning" => "PLANNING_EVENTS",
        "context" => "CONTEXT_EVENTS",
        "orchestration" => "ORCHESTRATOR_EVENTS",
        _ if subject.starts_with("agent.cmd") => "AGENT_COMMANDS",
        _ => "AGENT_RESPONSES",
    }
}

fn node<'a>(p: &'a Projection, group: Group, id: &str) -> &'a [Prop] {
    p.graph
        .iter()
        .find_map(|op| match op {
            GraphOp::Node(w) if w.group == group && w.id == id => Some(w.values.as_slice()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {group} write for {id} in {:#?}", p.graph))
}

fn has_rel(p: &Projection, rel: Rel, from: &str, to: &str) -> bool {
    p.graph
        .iter()
        .any(|op| matches!(op, GraphOp::Rel(r) if r.rel == rel && r.from == from && r.to == to))
}

fn s(v: &str) -> Prop {
    Prop::Str(v.to_string())
}

fn refreshes(p: &Projection, story: &str) -> bool {
    p.cache
        .iter()
        .any(|c| matches!(c, CacheOp::RefreshContext { story_id, .. } if story_id == story))
}

#[test]
fn story_created() {
    let (ev, p) = run(
        "planning.story.created",
        r#"{"event_type":"STORY_CREATED","story_id":"US-1","title":"Login","created_by":"po-ana","timestamp":"2025-10-16T18:00:00Z","extra":{"kept":"ignored"}}"#,
    );
    assert!(
        matches!(ev, Event::StoryCreated { ref title, .. } if title.as_deref() == Some("Login"))
    );
    assert_eq!(node(&p, Group::StoryTitle, "US-1"), &[s("Login")]);
    assert_eq!(
        node(&p, Group::StoryPhase, "US-1"),
        &[s("DRAFT"), Prop::Null]
    );
    assert!(has_rel(&p, Rel::StoryHasEvent, "US-1", "PLANNING_EVENTS:7"));
    assert!(refreshes(&p, "US-1"));
}

#[test]
fn story_updated_touches_only_present_fields() {
    let (_, p) = run(
        "planning.story.updated",
        r#"{"story_id":"US-1","description":"d"}"#,
    );
    assert_eq!(node(&p, Group::StoryDescription, "US-1"), &[s("d")]);
    assert!(!p
        .graph
        .iter()
        .any(|op| matches!(op, GraphOp::Node(w) if w.group == Group::StoryTitle)));
}

#[test]
fn story_transitioned_records_phase_history() {
    let (ev, p) = run(
        "planning.story.transitioned",
        r#"{"story_id":"US-1","from_phase":"DRAFT","to_phase":"BUILD","transitioned_by":"po"}"#,
    );
    assert!(matches!(ev, Event::StoryTransitioned { ref to_phase, .. } if to_phase == "BUILD"));
    assert_eq!(node(&p, Group::StoryPhase, "US-1"), &[s("BUILD"), s("po")]);
    let change = node(&p, Group::PhaseChangeRecord, "US-1:PLANNING_EVENTS:7");
    assert_eq!(change[1], s("DRAFT"));
    assert_eq!(change[2], s("BUILD"));
    // No time in the payload: the stream time is used, never the clock.
    assert_eq!(change[4], Prop::Int(TS / 1_000_000));
    assert!(has_rel(
        &p,
        Rel::StoryPhaseChange,
        "US-1",
        "US-1:PLANNING_EVENTS:7"
    ));
}

#[test]
fn plan_created() {
    let (_, p) = run(
        "planning.plan.created",
        r#"{"story_id":"US-1","plan_id":"plan-1","version":2,"summary":"do it"}"#,
    );
    let v = node(&p, Group::PlanDetails, "plan-1");
    assert_eq!(v[0], s("US-1"));
    assert_eq!(v[1], Prop::Int(2));
    assert!(has_rel(&p, Rel::StoryPlan, "US-1", "plan-1"));
}

#[test]
fn plan_approved_seed_payload() {
    let (_, p) = run(
        "planning.plan.approved",
        r#"{"event_type":"PLAN_APPROVED","story_id":"US-VERIFY-001","plan_id":"plan-verify-v1","timestamp":"2025-10-16T18:00:00Z"}"#,
    );
    let id = "plan-verify-v1:1760637600000";
    assert_eq!(
        node(&p, Group::ApprovalRecord, id),
        &[
            s("US-VERIFY-001"),
            s("plan-verify-v1"),
            Prop::Null,
            Prop::Int(1_760_637_600_000)
        ]
    );
    assert!(has_rel(&p, Rel::ApprovalOfPlan, id, "plan-verify-v1"));
    assert!(has_rel(&p, Rel::StoryApproval, "US-VERIFY-001", id));
    assert!(refreshes(&p, "US-VERIFY-001"));
}

#[test]
fn plan_approved_seed_test_message_is_a_validation_error() {
    let err = decode("planning.plan.approved", None, br#"{"test":"data"}"#).unwrap_err();
    assert_eq!(
        err,
        DecodeError::MissingField {
            subject: "planning.plan.approved".into(),
            field: "story_id".into(),
            expected: "a non-empty string"
        }
    );
}

#[test]
fn task_created() {
    let (_, p) = run(
        "planning.task.created",
        r#"{"story_id":"US-1","task_id":"T-1","title":"API","assigned_role":"DEV","phase":"BUILD","plan_id":"plan-1"}"#,
    );
    assert_eq!(node(&p, Group::TaskRole, "T-1"), &[s("DEV")]);
    assert_eq!(node(&p, Group::TaskStatus, "T-1")[0], s("CREATED"));
    assert!(has_rel(&p, Rel::TaskInPlan, "T-1", "plan-1"));
    assert!(has_rel(&p, Rel::StoryTask, "US-1", "T-1"));
}

#[test]
fn task_assigned() {
    let (_, p) = run(
        "planning.task.assigned",
        r#"{"story_id":"US-1","task_id":"T-1","assigned_role":"QA","agent_id":"agent-7"}"#,
    );
    assert_eq!(node(&p, Group::TaskRole, "T-1"), &[s("QA")]);
    assert_eq!(node(&p, Group::TaskStatus, "T-1")[0], s("ASSIGNED"));
    assert!(has_rel(&p, Rel::TaskAssignedAgent, "T-1", "agent-7"));
}

#[test]
fn task_assigned_requires_role() {
    let err = decode(
        "planning.task.assigned",
        None,
        br#"{"story_id":"US-1","task_id":"T-1"}"#,
    )
    .unwrap_err();
    assert!(matches!(err, DecodeError::MissingField { ref field, .. } if field == "assigned_role"));
}

#[test]
fn task_completed() {
    let (_, p) = run(
        "planning.task.completed",
        r#"{"story_id":"US-1","task_id":"T-1"}"#,
    );
    assert_eq!(node(&p, Group::TaskStatus, "T-1")[0], s("COMPLETED"));
}

#[test]
fn context_updated_projects_nothing() {
    let (ev, p) = run(
        "context.updated",
        r#"{"story_id":"US-1","version":1760637600,"changes":["decisions"]}"#,
    );
    assert!(matches!(ev, Event::ContextUpdated { ref changes, .. } if changes == &["decisions"]));
    assert_eq!(p, Projection::default());
}

#[test]
fn decision_added() {
    let (_, p) = run(
        "context.decision.added",
        r#"{"story_id":"US-1","decision_id":"D-1","task_id":"T-1","title":"Use Postgres","rationale":"ACID","decided_by":"architect"}"#,
    );
    let v = node(&p, Group::DecisionRecord, "D-1");
    assert_eq!(v[3], s("ACID"));
    assert_eq!(v[4], s("architect"));
    assert!(has_rel(&p, Rel::DecisionForTask, "D-1", "T-1"));
    assert!(p.outbound.is_empty());
}

#[test]
fn milestone_reached() {
    let (_, p) = run(
        "context.milestone.reached",
        r#"{"story_id":"US-1","milestone":"MVP"}"#,
    );
    assert_eq!(node(&p, Group::MilestoneRecord, "US-1:MVP")[1], s("MVP"));
    assert!(has_rel(&p, Rel::StoryMilestone, "US-1", "US-1:MVP"));
}

#[test]
fn snapshot_created() {
    let (_, p) = run(
        "context.snapshot.created",
        r#"{"story_id":"US-1","snapshot_id":"snap-3","version":3}"#,
    );
    assert_eq!(
        node(&p, Group::StorySnapshot, "US-1"),
        &[s("snap-3"), Prop::Int(3)]
    );
}

#[test]
fn deliberation_started() {
    let (_, p) = run(
        "orchestration.deliberation.started",
        r#"{"story_id":"US-1","task_id":"T-1","role":"DEV"}"#,
    );
    assert_eq!(node(&p, Group::DeliberationStart, "T-1")[2], s("DEV"));
    assert!(has_rel(&p, Rel::TaskDeliberation, "T-1", "T-1"));
}

#[test]
fn deliberation_completed_seed_payload_publishes_context_updated() {
    let (_, p) = run(
        "orchestration.deliberation.completed",
        r#"{"story_id":"US-1","task_id":"T-1","decisions":[{"id":"D-1","rationale":"r1","agent_id":"a1"},{"id":"D-2"}]}"#,
    );
    assert_eq!(node(&p, Group::DecisionRecord, "D-1")[4], s("a1"));
    assert!(has_rel(&p, Rel::DecisionFromDeliberation, "T-1", "D-2"));
    assert_eq!(node(&p, Group::DeliberationEnd, "T-1")[1], Prop::Int(2));
    assert_eq!(p.outbound.len(), 1);
    let out = &p.outbound[0];
    assert_eq!(out.subject, "context.updated");
    assert_eq!(
        out.msg_id,
        "projector:ORCHESTRATOR_EVENTS:7:context.updated"
    );
    let body: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
    assert_eq!(body["story_id"], "US-1");
    assert_eq!(body["changes"], serde_json::json!(["decisions"]));
    // The updated event decodes under our own catalog.
    decode("context.updated", None, &out.payload).unwrap();
}

#[test]
fn deliberation_completed_names_the_bad_nested_field() {
    let err = decode(
        "orchestration.deliberation.completed",
        None,
        br#"{"story_id":"US-1","task_id":"T-1","decisions":[{"id":"D-1"},{"rationale":"no id"}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(err, DecodeError::MissingField { ref field, .. } if field == "decisions[1].id"),
        "{err}"
    );
}

#[test]
fn agent_registered() {
    let (ev, p) = run(
        "orchestration.agent.registered",
        r#"{"agent_id":"agent-7","role":"DEV","agent_type":"vllm"}"#,
    );
    assert_eq!(ev.story_id(), None);
    assert_eq!(
        node(&p, Group::AgentDetails, "agent-7"),
        &[s("DEV"), s("vllm")]
    );
    assert!(p.cache.is_empty());
}

#[test]
fn council_formed() {
    let (_, p) = run(
        "orchestration.council.formed",
        r#"{"council_id":"c-1","story_id":"US-1","role":"DEV","agent_ids":["a1","a2"]}"#,
    );
    assert_eq!(
        node(&p, Group::CouncilDetails, "c-1")[2],
        Prop::StrList(vec!["a1".into(), "a2".into()])
    );
    assert!(has_rel(&p, Rel::AgentInCouncil, "a2", "c-1"));
    assert!(has_rel(&p, Rel::CouncilForStory, "c-1", "US-1"));
}

#[test]
fn task_dispatched() {
    let (_, p) = run(
        "orchestration.task.dispatched",
        r#"{"story_id":"US-1","task_id":"T-1","agent_id":"a1"}"#,
    );
    assert_eq!(node(&p, Group::TaskStatus, "T-1")[0], s("DISPATCHED"));
    assert_eq!(node(&p, Group::TaskAgent, "T-1"), &[s("a1")]);
}

#[test]
fn orchestration_task_completed() {
    let (_, p) = run(
        "orchestration.task.completed",
        r#"{"story_id":"US-1","task_id":"T-1"}"#,
    );
    assert_eq!(node(&p, Group::TaskStatus, "T-1")[0], s("COMPLETED"));
}

#[test]
fn agent_commands_decode_and_project_nothing() {
    for (subject, kind) in [
        ("agent.cmd.execute", AgentCommandKind::Execute),
        ("agent.cmd.stop", AgentCommandKind::Stop),
        ("agent.cmd.report", AgentCommandKind::Report),
    ] {
        let (ev, p) = run(subject, r#"{"task_id":"T-1","agent_type":"vllm"}"#);
        assert!(matches!(ev, Event::AgentCommand { command, .. } if command == kind));
        assert_eq!(p, Projection::default());
    }
}

#[test]
fn agent_responses_set_task_status() {
    for (subject, kind, status) in [
        (
            "agent.response.started",
            AgentResponseKind::Started,
            "RUNNING",
        ),
        (
            "agent.response.progress",
            AgentResponseKind::Progress,
            "RUNNING",
        ),
        (
            "agent.response.completed",
            AgentResponseKind::Completed,
            "COMPLETED",
        ),
        ("agent.response.failed", AgentResponseKind::Failed, "FAILED"),
    ] {
        let (ev, p) = run(
            subject,
            r#"{"task_id":"T-1","story_id":"US-1","progress":40,"error":"boom"}"#,
        );
        assert!(matches!(ev, Event::AgentResponse { status, .. } if status == kind));
        assert_eq!(
            node(&p, Group::TaskStatus, "T-1"),
            &[s(status), Prop::Int(40), s("boom")]
        );
    }
}

#[test]
fn every_catalog_subject_decodes_a_minimal_payload() {
    let full = r#"{"story_id":"US-1","plan_id":"p","task_id":"t","to_phase":"BUILD","assigned_role":"DEV",
        "decision_id":"d","milestone":"m","snapshot_id":"s","decisions":[],"agent_id":"a","council_id":"c"}"#;
    for (subject, _) in CATALOG {
        decode(subject, None, full.as_bytes()).unwrap_or_else(|e| panic!("{subject}: {e}"));
    }
}

#[test]
fn event_type_must_match_subject() {
    let err = decode(
        "planning.plan.approved",
        None,
        br#"{"event_type":"STORY_CREATED","story_id":"US-1","plan_id":"p"}"#,
    )
    .unwrap_err();
    assert_eq!(err.kind(), "event_type_mismatch");
}

#[test]
fn unknown_subject_is_typed() {
    let err = decode("planning.phase.completed", None, b"{}").unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownSubject {
            subject: "planning.phase.completed".into()
        }
    );
}

#[test]
fn wrong_types_name_field_and_expectation() {
    let err = decode(
        "planning.plan.created",
        None,
        br#"{"story_id":"US-1","plan_id":"p","version":"two"}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "planning.plan.created: field `version` has the wrong type or value (expected an integer, found a string)"
    );
    let err = decode("planning.story.created", None, br#"{"story_id":42}"#).unwrap_err();
    assert_eq!(err.kind(), "invalid_field");
}

#[test]
fn messagepack_payload_decodes_like_json() {
    let value = serde_json::json!({"story_id":"US-1","plan_id":"plan-1"});
    let packed = rmp_serde::to_vec_named(&value).unwrap();
    let a = decode(
        "planning.plan.approved",
        Some("application/msgpack"),
        &packed,
    )
    .unwrap();
    let b = decode("planning.plan.approved", None, value.to_string().as_bytes()).unwrap();
    assert_eq!(a, b);
    // MessagePack bytes without the header are refused as JSON, not guessed.
    assert_eq!(
        decode("planning.plan.approved", None, &packed)
            .unwrap_err()
            .kind(),
        "malformed"
    );
}

/// #17 item 8: a time outside what RFC 3339 can write (years 0000-9999) is an invalid field,
/// never a clamped or wrapped value (`1e300` used to store i64::MAX, i64::MIN became 1970).
#[test]
fn out_of_range_times_are_invalid_fields() {
    for raw in [
        "1e300",
        "-1e300",
        "-9223372036854775808",
        "9223372036854775807",
        "253402300800000",
        "-62167219200001",
        "1e16",
    ] {
        let payload = format!(r#"{{"story_id":"US-1","plan_id":"plan-1","timestamp":{raw}}}"#);
        let err = decode("planning.plan.approved", None, payload.as_bytes())
            .expect_err(&format!("timestamp {raw} must be refused"));
        assert!(
            matches!(err, DecodeError::InvalidField { ref field, .. } if field == "timestamp"),
            "timestamp {raw}: {err}"
        );
    }
    // The edges of the range are accepted, as seconds and as milliseconds.
    for (raw, ms) in [
        ("253402300799999", 253_402_300_799_999_i64),
        ("-62167219200000", -62_167_219_200_000),
        ("99999999999", 99_999_999_999_000),
        ("1760637600.5", 1_760_637_600_500),
        // Python's `time.time() * 1000`: a float of milliseconds.
        ("1760637600000.25", 1_760_637_600_000),
    ] {
        let payload = format!(r#"{{"story_id":"US-1","plan_id":"plan-1","timestamp":{raw}}}"#);
        let (_, p) = run("planning.plan.approved", &payload);
        let id = format!("plan-1:{ms}");
        assert_eq!(
            node(&p, Group::ApprovalRecord, &id)[3],
            Prop::Int(ms),
            "{raw}"
        );
    }
}
