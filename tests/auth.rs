//! NATS least privilege (seed 003): projector runs as a NATS user that may only consume the
//! event streams and publish its outbound (`context.>`) and dead-letter subjects; streams are
//! created by an admin. A wrong password is a clear error, not a hang or a retry loop.
//!
//! The test starts its own nats-server (the stack's binary) with an `authorization` block on
//! a free port; Neo4j and Valkey are the shared stack's.

mod common;

use async_nats::jetstream;
use common::*;
use std::process::Output;
use std::time::Duration;

const PROJECTED: [&str; 5] = [
    "PLANNING_EVENTS",
    "CONTEXT_EVENTS",
    "ORCHESTRATOR_EVENTS",
    "AGENT_RESPONSES",
    "PROJECTOR_DLQ",
];

/// The projector user's permissions: the JetStream API calls of `projector run` on its own
/// streams (stream info and message get; consumer create, info, delete, next; acks), its
/// outbound and dead-letter subjects, and replies on its inbox. Nothing else.
/// With partitions, also the lease bucket's subjects: its stream's info, direct gets and
/// consumers (key listings), and the `$KV.<bucket>.>` puts.
fn projector_permissions_with(t: &TestConfig, lease_bucket: Option<&str>) -> String {
    let mut publish = vec!["\"$JS.API.INFO\"".to_string()];
    for base in PROJECTED {
        let s = t.stream(base);
        publish.extend([
            format!("\"$JS.API.STREAM.INFO.{s}\""),
            format!("\"$JS.API.STREAM.MSG.GET.{s}\""),
            format!("\"$JS.API.CONSUMER.*.{s}.>\""),
            format!("\"$JS.API.CONSUMER.DURABLE.CREATE.{s}.*\""),
            format!("\"$JS.API.CONSUMER.MSG.NEXT.{s}.*\""),
            format!("\"$JS.ACK.{s}.>\""),
        ]);
    }
    if let Some(b) = lease_bucket {
        publish.extend([
            format!("\"$JS.API.STREAM.INFO.KV_{b}\""),
            format!("\"$JS.API.STREAM.MSG.GET.KV_{b}\""),
            format!("\"$JS.API.DIRECT.GET.KV_{b}.>\""),
            format!("\"$JS.API.CONSUMER.CREATE.KV_{b}\""),
            format!("\"$JS.API.CONSUMER.*.KV_{b}.>\""),
            format!("\"$JS.FC.KV_{b}.>\""),
            format!("\"$KV.{b}.>\""),
        ]);
    }
    publish.push(format!("\"{}.context.>\"", t.tag));
    publish.push(format!("\"{}.projector.dlq.>\"", t.tag));
    format!(
        "{{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }}",
        publish.join(", ")
    )
}

fn start_server(t: &TestConfig) -> OwnNats {
    start_server_with(t, None)
}

fn start_server_with(t: &TestConfig, lease_bucket: Option<&str>) -> OwnNats {
    OwnNats::start(
        &t.tag,
        &format!(
            "authorization {{ users = [\n\
               {{ user: admin, password: admin-pw }}\n\
               {{ user: projector, password: projector-pw, permissions: {} }}\n\
             ] }}\n",
            projector_permissions_with(t, lease_bucket)
        ),
    )
}

/// Runs the projector binary against the auth server as `user`.
fn projector_as(t: &TestConfig, s: &OwnNats, user: &str, password: &str, args: &[&str]) -> Output {
    s.projector(t, &[("NATS_USER", user), ("NATS_PASSWORD", password)], args)
}

async fn client(s: &OwnNats, user: &str, password: &str) -> jetstream::Context {
    let c = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(&s.url)
        .await
        .expect("connects");
    jetstream::new(c)
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_runs_with_least_privilege_and_cannot_do_more() {
    let t = TestConfig::new();
    let server = start_server(&t);

    // Streams are the admin's job: the projector user may not create them ...
    let out = projector_as(
        &t,
        &server,
        "projector",
        "projector-pw",
        &["streams", "ensure"],
    );
    assert!(!out.status.success(), "the projector user created streams");
    // The first admin request it is denied: since ensure looks for an interrupted migration
    // (`NAME_MIGRATING`) before creating NAME, that is the STREAM.INFO of the copy.
    assert!(
        stderr(&out).contains("Permissions Violation for Publish to \"$JS.API.STREAM.INFO.")
            && stderr(&out).contains("_MIGRATING"),
        "the denial is named in the log:\n{}",
        stderr(&out)
    );
    // ... the admin may.
    let out = projector_as(&t, &server, "admin", "admin-pw", &["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let admin = client(&server, "admin", "admin-pw").await;
    let events = [
        (
            "planning.plan.approved",
            r#"{"event_type":"PLAN_APPROVED","story_id":"US-AUTH","plan_id":"plan-auth","timestamp":"2025-10-16T18:00:00Z"}"#,
        ),
        (
            "orchestration.deliberation.completed",
            r#"{"story_id":"US-AUTH","task_id":"T-A","decisions":[{"id":"D-A","rationale":"r"}]}"#,
        ),
        // Parking needs the dead-letter publish the user is allowed.
        ("planning.story.created", r#"{"story_id": "US-BAD", "title"#),
    ];
    for (subject, payload) in events {
        admin
            .publish(t.subject(subject), payload.as_bytes().to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let out = projector_as(
        &t,
        &server,
        "projector",
        "projector-pw",
        &["run", "--until-caught-up", "--metrics-addr", "off"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let g = neo4j(&t.cfg);
    let gen = t.main_gen();
    assert_eq!(
        count_nodes(&g, &gen, "PlanApproval", "story_id", "US-AUTH").await,
        1
    );
    assert_eq!(count_nodes(&g, &gen, "Decision", "id", "D-A").await, 1);
    let messages = |base: &'static str| {
        let (admin, name) = (admin.clone(), t.stream(base));
        async move { stream_state(&admin, &name).await.messages }
    };
    assert_eq!(
        messages("CONTEXT_EVENTS").await,
        1,
        "context.updated published"
    );
    assert_eq!(
        messages("PROJECTOR_DLQ").await,
        1,
        "the malformed event parked"
    );

    // What the user may not do, it cannot: publish into the planning stream.
    let proj = client(&server, "projector", "projector-pw").await;
    let denied = tokio::time::timeout(Duration::from_secs(15), async {
        proj.publish(
            t.subject("planning.story.created"),
            r#"{"story_id":"US-X"}"#.into(),
        )
        .await?
        .await
    })
    .await;
    assert!(
        !matches!(denied, Ok(Ok(_))),
        "the projector user published to planning.>"
    );
    assert_eq!(
        messages("PLANNING_EVENTS").await,
        2,
        "nothing reached the stream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_a_clear_error() {
    let t = TestConfig::new();
    let server = start_server(&t);
    let started = std::time::Instant::now();
    let out = projector_as(
        &t,
        &server,
        "projector",
        "not-the-password",
        &["run", "--metrics-addr", "off"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refused the credentials of user \"projector\"")
            && err.contains("NATS_PASSWORD"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up after {:?}, not at once",
        started.elapsed()
    );
}

/// With partitions, the instances also need the lease bucket (created by the admin's
/// `streams ensure`): the same user, plus only that bucket's subjects, runs partitioned.
#[tokio::test(flavor = "multi_thread")]
async fn partitioned_run_works_with_least_privilege_plus_the_lease_bucket() {
    let t = TestConfig::with(|x| {
        x.replace("count = 1", "count = 2")
            .replace("lease_ttl = \"10s\"", "lease_ttl = \"3s\"")
    });
    let bucket = t.cfg.partitions.lease_bucket.clone();
    let server = start_server_with(&t, Some(&bucket));
    let out = projector_as(&t, &server, "admin", "admin-pw", &["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("lease bucket for 2 partitions"),
        "{}",
        stdout(&out)
    );
    let admin = client(&server, "admin", "admin-pw").await;
    for story in ["US-P1", "US-P2", "US-P3", "US-P4"] {
        let payload = format!(
            r#"{{"event_type":"PLAN_APPROVED","story_id":"{story}","plan_id":"plan-{story}","timestamp":"2025-10-16T18:00:00Z"}}"#
        );
        admin
            .publish(
                t.subject("planning.plan.approved"),
                payload.into_bytes().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (mut child, log) = server.spawn(
        &t,
        &[
            ("NATS_USER", "projector"),
            ("NATS_PASSWORD", "projector-pw"),
        ],
        &["run", "--instance", "solo", "--metrics-addr", "off"],
    );
    let g = neo4j(&t.cfg);
    let gen = t.main_gen();
    eventually(60, || async {
        let n = count_nodes(&g, &gen, "PlanApproval", "story_id", "US-P1").await
            + count_nodes(&g, &gen, "PlanApproval", "story_id", "US-P2").await
            + count_nodes(&g, &gen, "PlanApproval", "story_id", "US-P3").await
            + count_nodes(&g, &gen, "PlanApproval", "story_id", "US-P4").await;
        if n == 4 {
            Ok(())
        } else {
            Err(format!("{n} of 4 approvals"))
        }
    })
    .await;
    let kv = admin.get_key_value(&bucket).await.unwrap();
    let held = engine::leases::holders(&kv, "graph").await.unwrap();
    assert_eq!(held, vec![(0, "solo".to_string()), (1, "solo".to_string())]);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(!text.contains("Permissions Violation"), "{text}");
    assert!(
        engine::leases::holders(&kv, "graph")
            .await
            .unwrap()
            .is_empty(),
        "leases handed back on SIGTERM"
    );
}
