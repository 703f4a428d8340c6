//! Hostile input: Cypher-injection-shaped ids and values are stored as plain strings.
//! Labels and relationship types come from code; event values only travel as parameters.

mod common;

use async_nats::jetstream;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn injection_shaped_ids_and_values_are_plain_strings() {
    let t = TestConfig::new();
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let evil_ids = [
        "US-1'}) DETACH DELETE n //",
        "US-2`) MATCH (m) DETACH DELETE m //",
        "US-3\"; CALL dbms.killQueries() //",
        "US-4\\' OR 1=1 --",
    ];
    let mut events = vec![(
        "planning.story.created",
        serde_json::json!({"story_id": "US-SAFE", "title": "must survive"}).to_string(),
    )];
    for id in evil_ids {
        events.push((
            "planning.story.created",
            serde_json::json!({"story_id": id, "title": "x'}) SET n.pwned = true //", "created_by": "`evil`"}).to_string(),
        ));
        events.push((
            "orchestration.deliberation.completed",
            serde_json::json!({"story_id": id, "task_id": format!("{id}-T"),
                               "decisions": [{"id": format!("{id}-D"), "rationale": "}) DETACH DELETE n //"}]})
            .to_string(),
        ));
    }
    let refs: Vec<(&str, &str)> = events.iter().map(|(s, p)| (*s, p.as_str())).collect();
    t.publish(&js, &refs).await;
    t.run_until_caught_up(&t.tag);

    let g = neo4j(&t.cfg);
    assert_eq!(
        count_nodes(&g, &t.tag, "Story", "id", "US-SAFE").await,
        1,
        "nothing was deleted"
    );
    for id in evil_ids {
        assert_eq!(count_nodes(&g, &t.tag, "Story", "id", id).await, 1, "{id}");
        assert_eq!(
            count_nodes(&g, &t.tag, "Decision", "id", &format!("{id}-D")).await,
            1,
            "{id}"
        );
        let mut rows = g
            .execute(
                neo4rs::query("MATCH (s:Story {gen: $gen, id: $id}) RETURN s.title AS title, s.created_by AS by, s.pwned AS pwned")
                    .param("gen", t.tag.clone())
                    .param("id", id),
            )
            .await
            .unwrap();
        let row = rows.next().await.unwrap().unwrap();
        assert_eq!(
            row.get::<String>("title").unwrap(),
            "x'}) SET n.pwned = true //"
        );
        assert_eq!(row.get::<String>("by").unwrap(), "`evil`");
        assert!(
            row.get::<bool>("pwned").is_err(),
            "no property was injected"
        );
    }
    // The story view renders the same strings back.
    let o = t.projector(&[
        "query",
        "story",
        evil_ids[0],
        "--json",
        "--generation",
        &t.tag,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["story_id"], evil_ids[0]);
    assert_eq!(v["decisions"][0]["rationale"], "}) DETACH DELETE n //");
    // Mermaid output stays well-formed: quotes in ids are written as #34; codes, so a node
    // line has exactly its label's two quotes and an edge line none.
    let m = t.projector(&[
        "query",
        "story",
        evil_ids[2],
        "--format",
        "mermaid",
        "--generation",
        &t.tag,
    ]);
    assert!(m.status.success());
    for line in stdout(&m).lines().skip(1) {
        let quotes = if line.contains("[\"") { 2 } else { 0 };
        assert_eq!(line.matches('"').count(), quotes, "{line}");
    }
}

/// An oversized message (over the decoder's 1 MiB limit) is parked with its reason, and the
/// stream goes on. NATS's default `max_payload` is the same 1 MiB, so such a message cannot
/// reach a stream of a default server; this test's own server accepts up to 4 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_is_parked_with_its_reason_and_the_stream_goes_on() {
    let t = TestConfig::new();
    let server = OwnNats::start(&t.tag, "max_payload: 4MB\n");
    let out = server.projector(&t, &[], &["streams", "ensure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let client = async_nats::connect(&server.url).await.unwrap();
    let js = jetstream::new(client);
    let padding = "x".repeat(1536 * 1024);
    let big = serde_json::json!({"story_id": "US-BIG", "title": padding}).to_string();
    let good =
        serde_json::json!({"story_id": "US-AFTER", "title": "after the big one"}).to_string();
    for payload in [big, good] {
        js.publish(t.subject("planning.story.created"), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let out = server.projector(
        &t,
        &[],
        &["run", "--until-caught-up", "--metrics-addr", "off"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.projector(&t, &[], &["dlq", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let parked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parked = parked.as_array().unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["kind"], "too_large");
    assert!(
        parked[0]["reason"].as_str().unwrap().contains("1048576"),
        "the reason names the limit: {}",
        parked[0]["reason"]
    );
    let g = neo4j(&t.cfg);
    assert_eq!(
        count_nodes(&g, &t.main_gen(), "Story", "id", "US-AFTER").await,
        1
    );
    assert_eq!(
        count_nodes(&g, &t.main_gen(), "Story", "id", "US-BIG").await,
        0
    );
}
