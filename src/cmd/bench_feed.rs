//! `projector bench feed`: many change-feed clients at once, each timing its `story.changed`
//! events from their changelog entry to their arrival (bench/feed.py drives it).

use super::watch::{authority, follow, Stop};
use super::CliError;
use crate::cli::FeedArgs;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the clients saw, merged.
#[derive(Default)]
struct Seen {
    /// Milliseconds from changelog entry to arrival, one per `story.changed`.
    latencies_ms: Vec<u64>,
    dropped: u64,
    /// Connections that failed or ended before the duration was over, with why.
    lost: Vec<String>,
}

pub async fn run(a: FeedArgs) -> Result<ExitCode, CliError> {
    let (host, port) = authority(&a.url)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let (host, seen, duration) = (host.clone(), seen.clone(), a.duration);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut dropped = 0u64;
            let (mut last, mut connected) = (None, false);
            let mut on_event = |e: &str, id: &str, _: &str| match e {
                "story.changed" => mine.push(since_entry_ms(id)),
                "dropped" => dropped += 1,
                _ => {}
            };
            // A healthy client follows until the time is up; one that ends sooner is lost.
            let r = tokio::time::timeout(
                duration,
                follow(&host, port, &[], &mut last, &mut connected, &mut on_event),
            )
            .await;
            let mut s = seen.lock().expect("no panic while holding the lock");
            s.latencies_ms.extend(mine.into_iter().flatten());
            s.dropped += dropped;
            match r {
                Err(_elapsed) => {}
                Ok(Err(Stop::Refused(m))) | Ok(Err(Stop::Lost(m))) => s.lost.push(m),
                Ok(Ok(())) => s.lost.push("closed by the server".into()),
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| CliError::Failed(format!("a feed client task failed: {e}")))?;
    }
    let s = seen.lock().expect("no panic while holding the lock");
    let mut l = s.latencies_ms.clone();
    l.sort_unstable();
    let q = |p: f64| {
        l.get(((l.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    println!(
        "{}",
        serde_json::json!({
            "clients": a.clients,
            "seconds": a.duration.as_secs_f64(),
            "events": l.len(),
            "dropped": s.dropped,
            "lost": s.lost.len(),
            "lost_reasons": s.lost.iter().take(5).collect::<Vec<_>>(),
            "latency_ms": {"p50": q(0.5), "p99": q(0.99), "max": l.last()},
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Milliseconds since the entry `id` (`<ms>-<n>`, a Valkey stream id) was written; None for
/// an id of another shape (counted out, not guessed).
fn since_entry_ms(id: &str) -> Option<u64> {
    // Another shape is left out of the figures, not guessed at.
    let at: u64 = id.split_once('-')?.0.parse().ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO); // a clock before 1970: every latency reads as 0
    Some((now.as_millis() as u64).saturating_sub(at))
}
