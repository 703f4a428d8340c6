//! `projector watch`: tails `GET /v1/changes` and prints each event.

use super::CliError;
use crate::cli::WatchArgs;
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use std::process::ExitCode;
use std::time::Duration;

/// Follows the feed until Ctrl-C; a dropped connection is resumed after the last id seen.
pub async fn run(a: WatchArgs) -> Result<ExitCode, CliError> {
    let (host, port) = authority(&a.url)?;
    let mut query: Vec<String> = a
        .story
        .iter()
        .map(|s| format!("story={}", enc(s)))
        .collect();
    if let Some(w) = &a.what {
        query.push(format!("what={}", enc(w)));
    }
    let mut last = a.after.clone();
    let mut ever_connected = false;
    loop {
        let mut print_event = |e: &str, id: &str, d: &str| print(a.json, e, id, d);
        let r = tokio::select! {
            r = follow(&host, port, &query, &mut last, &mut ever_connected, &mut print_event) => r,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        match r {
            // A refusal (bad filter, bad position) will not change on retry.
            Err(Stop::Refused(m)) => return Err(CliError::Usage(m)),
            Err(Stop::Lost(m)) if !ever_connected => {
                return Err(CliError::Failed(format!(
                    "cannot reach the change feed at {}: {m} (is `projector run` serving there? see --url)",
                    a.url
                )))
            }
            Err(Stop::Lost(m)) => eprintln!("watch: feed lost ({m}); reconnecting in 2s"),
            Ok(()) => eprintln!("watch: the server closed the feed; reconnecting in 2s"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub(crate) enum Stop {
    Refused(String),
    Lost(String),
}

pub(crate) fn authority(url: &str) -> Result<(String, u16), CliError> {
    let bad = || CliError::Usage(format!("--url {url:?}: use http://HOST:PORT"));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let hostport = rest.split('/').next().unwrap_or_default(); // split yields at least one part
    let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
    Ok((host.to_string(), port.parse().map_err(|_| bad())?))
}

/// Percent-encodes a query value (story ids are plain, but say what is sent).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One connection to the feed: sends every event to `on_event` (event, id, data) until the
/// server closes it; `last` keeps the id to resume after. Also used by `bench feed`.
pub(crate) async fn follow(
    host: &str,
    port: u16,
    query: &[String],
    last: &mut Option<String>,
    ever_connected: &mut bool,
    on_event: &mut (dyn FnMut(&str, &str, &str) + Send),
) -> Result<(), Stop> {
    let lost = |e: &dyn std::fmt::Display| Stop::Lost(e.to_string());
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| lost(&e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| lost(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "feed connection ended");
        }
    });
    let path = if query.is_empty() {
        "/v1/changes".to_string()
    } else {
        format!("/v1/changes?{}", query.join("&"))
    };
    let mut req = hyper::Request::get(path)
        .header("host", format!("{host}:{port}"))
        .header("accept", "text/event-stream");
    if let Some(id) = last.as_deref() {
        req = req.header("last-event-id", id);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| Stop::Refused(e.to_string()))?;
    let resp = send.send_request(req).await.map_err(|e| lost(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.into_body().collect().await.map_err(|e| lost(&e))?;
        let text = String::from_utf8_lossy(&body.to_bytes()).to_string();
        // Not the API's JSON error: show the body as sent.
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok() // not JSON: the body itself is the message
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or(text); // as above
        return Err(if status.is_client_error() {
            Stop::Refused(msg)
        } else {
            Stop::Lost(format!("{status}: {msg}"))
        });
    }
    *ever_connected = true;
    let mut events = resp.into_body().into_data_stream().eventsource();
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| lost(&e))?;
        if !ev.id.is_empty() {
            *last = Some(ev.id.clone());
        }
        on_event(&ev.event, &ev.id, &ev.data);
    }
    Ok(())
}

/// Prints one event: a JSON object (`--json`) or a human line.
fn print(json: bool, event: &str, id: &str, data: &str) {
    let data: serde_json::Value = serde_json::from_str(data).unwrap_or_default(); // not JSON: printed as null
    if json {
        println!(
            "{}",
            serde_json::json!({"event": event, "id": id, "data": data})
        );
    } else {
        println!("{}", line(event, id, &data));
    }
}

/// One human line per event.
fn line(event: &str, id: &str, d: &serde_json::Value) -> String {
    // A field the event lacks prints as `-`, the CLI's unknown.
    let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
    match event {
        "story.changed" => {
            let what: Vec<&str> = d["what"]
                .as_array()
                .map(|a| a.iter().filter_map(|w| w.as_str()).collect())
                .unwrap_or_default(); // no list: nothing named
            format!(
                "{}  {:<14} rev {:<4} {:<28} {id}",
                // No time: the epoch, which reads as unknown.
                crate::fmt::timestamp_ms(d["event_time_ms"].as_i64().unwrap_or(0)),
                s("story_id"),
                d["revision"],
                if what.is_empty() {
                    "-".into()
                } else {
                    what.join(",")
                },
            )
        }
        "watermark" => {
            let n = d["checkpoints"].as_object().map_or(0, |m| m.len());
            format!(
                "-- caught up at {} ({}, generation {})",
                // An empty changelog has no position yet.
                d["position"].as_str().unwrap_or("the start"),
                crate::fmt::count(n, "checkpoint", "checkpoints"),
                s("generation")
            )
        }
        "generation" => format!(
            "-- generation {} is live now: every view was rebuilt ({id})",
            s("generation")
        ),
        "reset" => format!("-- reset: {}", s("reason")),
        "dropped" => format!("-- dropped by the server: {}", s("reason")),
        other => format!("-- {other} {id} {d}"),
    }
}
