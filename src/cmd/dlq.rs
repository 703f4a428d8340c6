//! `projector dlq list|show|retry|discard`.

use super::CliError;
use crate::cli::DlqCommand;
use engine::config::Config;
use engine::dlq::{RetryTarget, Selection};
use engine::sink::{cache::CacheSink, graph::GraphSink};
use std::process::ExitCode;

pub async fn run(cfg: &Config, cmd: DlqCommand) -> Result<ExitCode, CliError> {
    let graph = GraphSink::for_config(cfg)?;
    let live = engine::generations::live(&graph).await?;
    let target_gen =
        |t: &crate::cli::DlqTarget| t.generation.clone().unwrap_or_else(|| live.clone());
    let target = match &cmd {
        DlqCommand::List { target, .. }
        | DlqCommand::Show { target, .. }
        | DlqCommand::Retry { target, .. }
        | DlqCommand::Discard { target, .. } => target,
    };
    super::known_generation(&graph, target.generation.as_deref()).await?;
    match cmd {
        DlqCommand::List { target, json } => {
            let generation = target_gen(&target);
            let mut parked = graph.parked(&generation, Some(&target.projector)).await?;
            let rulings = graph.rulings(&target.projector).await?;
            engine::dlq::current_reasons(&mut parked, &rulings);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&parked).expect("serializable")
                );
            } else if parked.is_empty() {
                println!(
                    "no parked events for projector {} in generation {}",
                    target.projector, generation
                );
            } else {
                print!(
                    "{}",
                    crate::fmt::table(
                        &["ID", "STORY", "KIND", "REASON"],
                        parked.iter().map(|p| vec![
                            p.id.clone(),
                            crate::fmt::or_unknown(p.story_id.as_deref()).into(),
                            p.kind.clone(),
                            p.reason.clone(),
                        ])
                    )
                );
                println!(
                    "{}",
                    crate::fmt::count(parked.len(), "parked event", "parked events")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, target, json } => {
            let generation = target_gen(&target);
            let parked = graph.parked(&generation, Some(&target.projector)).await?;
            let Some(p) = parked.into_iter().find(|p| p.id == id) else {
                return Err(CliError::Usage(format!("no parked event {id} for projector {} in generation {generation} (see `projector dlq list`)", target.projector)));
            };
            let client = engine::nats::connect(&cfg.nats).await?;
            let js = async_nats::jetstream::new(client);
            let message = engine::dlq::stored_message(&js, &cfg.dead_letters.stream, p.dlq_seq)
                .await
                .map_err(|e| match e {
                    // Said as before, without the "NATS: " of the error's own display.
                    engine::error::WriteError::Nats { message } => CliError::Failed(message),
                    e => e.into(),
                })?;
            show(&p, message, &cfg.dead_letters.stream, json);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Retry {
            ids,
            story,
            all,
            target,
            json,
        } => {
            let generation = target_gen(&target);
            let sel = match (all, story, ids.is_empty()) {
                (true, _, true) => Selection::All,
                (false, Some(s), true) => Selection::Story(s),
                (false, None, false) => {
                    unknown_ids(&graph, &generation, &target.projector, &ids).await?;
                    Selection::Ids(ids)
                }
                _ => {
                    return Err(CliError::Usage(
                        "give parked event ids, or --story S, or --all".into(),
                    ))
                }
            };
            let client = engine::nats::connect(&cfg.nats).await?;
            let js = async_nats::jetstream::new(client);
            let cache = CacheSink::connect(&cfg.valkey).await?;
            let cache_prefix = cache.gen_prefix(&generation, generation == live);
            let report = engine::dlq::retry(
                &RetryTarget {
                    js: &js,
                    graph: &graph,
                    cache: &cache,
                    generation: &generation,
                    projector: &target.projector,
                    subject_prefix: &cfg.subject_prefix,
                    dlq_stream: &cfg.dead_letters.stream,
                    cache_prefix: &cache_prefix,
                    publish_outbound: generation == live,
                    by: &operator(&target),
                },
                &sel,
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serializable")
                );
            } else {
                println!(
                    "re-projected {} event(s), published {} outbound event(s)",
                    report.projected.len(),
                    report.outbound
                );
                for (id, why) in &report.still_failing {
                    println!("still failing: {id}: {why}");
                }
                for id in &report.held_back {
                    println!("held back behind an earlier failure of its story: {id}");
                }
            }
            Ok(if report.still_failing.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        DlqCommand::Discard { ids, target, json } => {
            let generation = target_gen(&target);
            unknown_ids(&graph, &generation, &target.projector, &ids).await?;
            let client = engine::nats::connect(&cfg.nats).await?;
            let js = async_nats::jetstream::new(client);
            let cache = CacheSink::connect(&cfg.valkey).await?;
            let cache_prefix = cache.gen_prefix(&generation, generation == live);
            let report = engine::dlq::discard(
                &RetryTarget {
                    js: &js,
                    graph: &graph,
                    cache: &cache,
                    generation: &generation,
                    projector: &target.projector,
                    subject_prefix: &cfg.subject_prefix,
                    dlq_stream: &cfg.dead_letters.stream,
                    cache_prefix: &cache_prefix,
                    publish_outbound: false,
                    by: &operator(&target),
                },
                &ids,
            )
            .await?;
            let n = report.discarded.len();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"discarded": n, "asked": ids.len(), "generation": generation, "lifted": report.lifted})
                );
            } else {
                println!("discarded {n} parked event(s)");
                for (stream, story, at) in &report.lifted {
                    println!("story {story} unblocked on {stream} after sequence {at}");
                }
            }
            Ok(if n == ids.len() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Who decides: `--by`, else the user running the command.
fn operator(t: &crate::cli::DlqTarget) -> String {
    t.by.clone()
        // No USER (or not Unicode): the next fallback names nobody.
        .or_else(|| std::env::var("USER").ok())
        // Nobody named: the decision is still recorded, with who unknown.
        .unwrap_or_else(|| "-".into())
}

/// Prints a parked event: its record, its headers sorted by name, and its payload as text
/// when it is UTF-8 (else its size and, with `--json`, its bytes in hex).
fn show(
    p: &engine::sink::graph::ParkedView,
    message: engine::dlq::Stored,
    dlq_stream: &str,
    json: bool,
) {
    let (headers, payload, missing) = match message {
        engine::dlq::Stored::Held(m) => {
            let mut h: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (k, v) in m.headers.iter() {
                h.insert(
                    k.to_string(),
                    v.iter().map(|v| v.as_str().to_string()).collect(),
                );
            }
            (h, Some(m.payload), None)
        }
        engine::dlq::Stored::Gone(e) => (
            Default::default(),
            None,
            Some(format!("payload not available in {dlq_stream}: {e}")),
        ),
    };
    let text = payload
        .as_ref()
        // Not UTF-8: shown as binary (its size, or hex with --json), not as text.
        .and_then(|b| std::str::from_utf8(b).ok().map(str::to_string));
    if json {
        let v = serde_json::json!({
            "parked": p,
            "headers": headers,
            "payload": text,
            "payload_hex": match (&payload, &text) {
                (Some(b), None) => Some(hex::encode(b)),
                _ => None,
            },
            "payload_missing": missing,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serializable")
        );
        return;
    }
    let record = serde_json::to_value(p).expect("serializable");
    let mut rows: Vec<Vec<String>> = record
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            vec![
                k.clone(),
                match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => crate::fmt::UNKNOWN.into(),
                    other => other.to_string(),
                },
            ]
        })
        .collect();
    // The stream time as people read it, next to its raw nanoseconds.
    rows.push(vec![
        "stream_time".into(),
        crate::fmt::timestamp_ms(p.ts_ns / 1_000_000),
    ]);
    rows.sort();
    print!("{}", crate::fmt::table(&["FIELD", "VALUE"], rows));
    println!();
    print!(
        "{}",
        crate::fmt::table(
            &["HEADER", "VALUE"],
            headers
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| vec![k.clone(), v.clone()]))
        )
    );
    println!();
    match (missing, text, payload) {
        (Some(why), _, _) => println!("({why})"),
        (None, Some(t), _) => println!("{t}"),
        (None, None, Some(b)) => println!(
            "({} bytes of binary payload, not UTF-8; `--json` gives them in hex)",
            b.len()
        ),
        (None, None, None) => println!("(no payload)"),
    }
}

/// Refuses ids that are not parked (exit 2, naming them): a typo must not pass for
/// "re-projected 0 events".
async fn unknown_ids(
    graph: &GraphSink,
    generation: &str,
    projector: &str,
    ids: &[String],
) -> Result<(), CliError> {
    let unknown = engine::dlq::not_parked(graph, generation, projector, ids).await?;
    if unknown.is_empty() {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "no parked event {} for projector {projector} in generation {generation} (see `projector dlq list`)",
        unknown.join(", ")
    )))
}
