//! `projector bench feed`: many change feeds at once, and how late their events arrive.

use super::CliError;
use crate::cli::FeedArgs;
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Milliseconds from position to arrival, per change.
    latencies: Vec<u32>,
    dropped: usize,
    failed: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

async fn client(host: String, port: u16, until: Instant, seen: Arc<Mutex<Seen>>) {
    let r = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/v1/changes")
            .header("host", format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let mut events = resp.into_body().into_data_stream().eventsource();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(next) = tokio::time::timeout(left, events.next()).await else {
                return Ok(()); // the measurement is over
            };
            let Some(ev) = next else {
                return Err("the server closed the feed".into());
            };
            let ev = ev.map_err(|e| e.to_string())?;
            match ev.event.as_str() {
                "story.changed" => {
                    let ms: Option<u64> = ev.id.split('-').next().and_then(|m| m.parse().ok()); // not a position: not counted
                    if let Some(ms) = ms {
                        let late = now_ms().saturating_sub(ms) as u32;
                        seen.lock().expect("not poisoned").latencies.push(late);
                    }
                }
                "dropped" => seen.lock().expect("not poisoned").dropped += 1,
                _ => {}
            }
        }
    }
    .await;
    if let Err(e) = r {
        seen.lock().expect("not poisoned").failed = Some(e);
    }
}

/// Opens the feeds, listens for `--duration`, prints one JSON line.
pub async fn run(a: FeedArgs) -> Result<ExitCode, CliError> {
    let bad = || CliError::Usage(format!("--url {:?}: use http://HOST:PORT", a.url));
    let hostport = a.url.strip_prefix("http://").ok_or_else(bad)?;
    let (host, port) = hostport
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let until = Instant::now() + a.duration;
    let seen: Vec<Arc<Mutex<Seen>>> = (0..a.clients).map(|_| Default::default()).collect();
    let tasks: Vec<_> = seen
        .iter()
        .map(|s| tokio::spawn(client(host.to_string(), port, until, s.clone())))
        .collect();
    for t in tasks {
        t.await
            .map_err(|e| CliError::Failed(format!("a feed client panicked: {e}")))?;
    }
    let mut all: Vec<u32> = Vec::new();
    let (mut dropped, mut failed, mut first_error) = (0, 0, None);
    for s in &seen {
        let s = s.lock().expect("not poisoned");
        all.extend(&s.latencies);
        dropped += s.dropped;
        if let Some(e) = &s.failed {
            failed += 1;
            first_error.get_or_insert_with(|| e.clone());
        }
    }
    all.sort_unstable();
    let q = |p: f64| -> Option<u32> {
        (!all.is_empty()).then(|| all[((all.len() - 1) as f64 * p).round() as usize])
    };
    println!(
        "{}",
        serde_json::json!({
            "clients": a.clients,
            "seconds": a.duration.as_secs_f64(),
            "events": all.len(),
            "p50_ms": q(0.50),
            "p99_ms": q(0.99),
            "max_ms": all.last(),
            "dropped": dropped,
            "failed": failed,
            "first_error": first_error,
        })
    );
    Ok(ExitCode::SUCCESS)
}
