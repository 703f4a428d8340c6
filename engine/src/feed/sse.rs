//! `GET /v1/changes`: the change feed over Server-Sent Events.
//!
//! A connection subscribes to the hub first, then catches up from the changelog (from its
//! `Last-Event-ID` or `?after=`, else from now) up to a watermark it reads itself, then
//! follows the hub, skipping what it already sent: no entry is missed between the catch-up
//! and the live part, and none is sent twice. Its events wait in a buffer of `[feed]
//! client_buffer`; a client that lets it fill is sent `event: dropped` and closed (it resumes
//! from its last id, losing nothing).

use super::hub::Feed;
use super::{Item, Notice, Position};
use crate::api::ErrorBody;
use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use projections::sections::Section;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// What a client asked for.
#[derive(Debug, Default, Clone)]
struct Filter {
    stories: BTreeSet<String>,
    what: BTreeSet<&'static str>,
}

impl Filter {
    fn passes(&self, item: &Item) -> bool {
        match item {
            Item::Change(_, c) => {
                (self.stories.is_empty() || self.stories.contains(&c.story_id))
                    && (self.what.is_empty()
                        || c.what.iter().any(|w| self.what.contains(w.as_str())))
            }
            // Progress and switches concern every client.
            Item::Generation(..) | Item::Watermark(..) => true,
        }
    }
}

fn bad(status: StatusCode, message: String) -> Response {
    let code = if status == StatusCode::BAD_REQUEST {
        "bad_request"
    } else {
        "unavailable"
    };
    (
        status,
        Json(ErrorBody {
            code: code.into(),
            message,
        }),
    )
        .into_response()
}

/// Reads `story` (repeatable), `what` (repeatable, comma-separated) and `after`.
fn parse(pairs: Vec<(String, String)>) -> Result<(Filter, Option<Position>), String> {
    let mut f = Filter::default();
    let mut after = None;
    for (k, v) in pairs {
        match k.as_str() {
            "story" => {
                f.stories.insert(v);
            }
            "what" => {
                for w in v.split(',').filter(|w| !w.is_empty()) {
                    let s = Section::parse(w).ok_or_else(|| {
                        let all: Vec<_> = Section::ALL.iter().map(|s| s.as_str()).collect();
                        format!("what={w} is not one of {}", all.join(", "))
                    })?;
                    f.what.insert(s.as_str());
                }
            }
            "after" => {
                after = Some(Position::parse(&v).ok_or_else(|| {
                    format!("after={v:?} is not a feed position (<ms>-<n>, an event id)")
                })?);
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}; use story, what or after (see /openapi.json)"
                ))
            }
        }
    }
    Ok((f, after))
}

/// The change feed of the live generation's story views (Server-Sent Events).
///
/// Events: `story.changed` (id: its position; data: [`super::Change`]), `watermark` (every
/// `[feed] watermark_interval`, and once caught up; data: [`super::Watermark`]),
/// `generation` (a rebuild went live: read every view again), `reset` (the position asked
/// for is not in the changelog any more: read every view again, then follow), `dropped` (the
/// server closes the feed: a slow client, or shutdown); a `:` comment after `[feed]
/// heartbeat` of silence. A read of `/v1/stories/{id}` after `story.changed` serves at least
/// its revision.
#[utoipa::path(get, path = "/v1/changes", tag = "views",
    params(
        ("story" = Option<Vec<String>>, Query, description = "Only these stories' changes (repeatable)", explode = true),
        ("what" = Option<String>, Query, description = "Only changes touching one of these parts, comma-separated: story, phase, plans, approvals, tasks, decisions, milestones", example = "decisions,tasks"),
        ("after" = Option<String>, Query, description = "Resume right after this position (an event id); the `Last-Event-ID` header wins over it", example = "1764650000000-0"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume right after this position (browsers send it on reconnect)")),
    responses(
        (status = 200, description = "The feed, until the client or the server closes it", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad filter or position", body = ErrorBody),
        (status = 503, description = "Too many feeds open on this instance", body = ErrorBody)))]
pub(crate) async fn changes(
    State(feed): State<Feed>,
    headers: HeaderMap,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let pairs = match q {
        Ok(Query(p)) => p,
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("bad query: {}", e.body_text()),
            )
        }
    };
    let (filter, mut after) = match parse(pairs) {
        Ok(x) => x,
        Err(m) => return bad(StatusCode::BAD_REQUEST, m),
    };
    if let Some(h) = headers.get("last-event-id") {
        let v = h.to_str().unwrap_or_default(); // not ASCII: no position, refused below
        match Position::parse(v) {
            Some(p) => after = Some(p),
            None if v.trim().is_empty() => {}
            None => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID {v:?} is not a feed position (<ms>-<n>)"),
                )
            }
        }
    }
    if feed.metrics.feed_clients.get() >= feed.cfg.max_clients as i64 {
        return bad(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} change feeds are open on this instance ([feed] max_clients); try another or later",
                feed.cfg.max_clients
            ),
        );
    }
    let (tx, rx) = mpsc::channel(feed.cfg.client_buffer);
    let rx_hub = feed.tx.subscribe();
    let heartbeat = feed.cfg.heartbeat;
    feed.metrics.feed_clients.inc();
    tokio::spawn(Conn { feed, filter, tx }.run(rx_hub, after));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<Event, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response()
}

/// One open feed.
struct Conn {
    feed: Feed,
    filter: Filter,
    tx: mpsc::Sender<Event>,
}

/// Why a connection's task ended.
enum End {
    /// The client went away.
    Gone,
    /// This side closes it, saying why.
    Drop(&'static str),
}

fn event(item: &Item) -> Event {
    let (name, id, data) = match item {
        Item::Change(p, c) => ("story.changed", Some(*p), serde_json::to_string(c)),
        Item::Generation(p, g) => ("generation", Some(*p), serde_json::to_string(g)),
        Item::Watermark(p, w) => ("watermark", *p, serde_json::to_string(w)),
    };
    let e = Event::default()
        .event(name)
        .data(data.expect("feed payloads always serialize"));
    match id {
        Some(p) => e.id(p.to_string()),
        None => e,
    }
}

impl Conn {
    async fn run(mut self, mut hub: broadcast::Receiver<Arc<Item>>, after: Option<Position>) {
        let end = self.serve(&mut hub, after).await;
        if let End::Drop(reason) = end {
            self.feed
                .metrics
                .feed_dropped
                .with_label_values(&[reason])
                .inc();
            tracing::info!(reason, "change feed closed by the server");
            let n = Notice {
                position: None,
                reason: match reason {
                    "slow_client" => format!(
                        "more than {} events waiting for this client; reconnect with Last-Event-ID to resume",
                        self.feed.cfg.client_buffer
                    ),
                    _ => "the server is shutting down; reconnect (with Last-Event-ID) to another instance or later".into(),
                },
            };
            let e = Event::default()
                .event("dropped")
                .data(serde_json::to_string(&n).expect("notices serialize"));
            // Past the full buffer: a client that reads again within a second still learns why.
            if tokio::time::timeout(Duration::from_secs(1), self.tx.send(e))
                .await
                .is_err()
            {
                tracing::debug!("change feed: the closing notice could not be queued");
            }
        }
        self.feed.metrics.feed_clients.dec();
    }

    fn push(&self, e: Event) -> Result<(), End> {
        self.tx.try_send(e).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => End::Drop("slow_client"),
            mpsc::error::TrySendError::Closed(_) => End::Gone,
        })
    }

    /// Retries a changelog read every second while the client is connected.
    async fn read<T, F, Fut>(&self, what: &str, f: F) -> Result<T, End>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::error::WriteError>>,
    {
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => self.feed.failed(what, &e),
            }
            if *self.feed.stop.borrow() {
                return Err(End::Drop("shutdown"));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.tx.closed() => return Err(End::Gone),
            }
        }
    }

    async fn serve(
        &mut self,
        hub: &mut broadcast::Receiver<Arc<Item>>,
        after: Option<Position>,
    ) -> End {
        match self.follow(hub, after).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn follow(
        &mut self,
        hub: &mut broadcast::Receiver<Arc<Item>>,
        after: Option<Position>,
    ) -> Result<std::convert::Infallible, End> {
        let log = self.feed.log.clone();
        let mut cursor = match after {
            Some(p) if self.read("holds", || log.holds(p)).await? => p,
            asked => {
                let last = self.read("last", || log.last()).await?;
                if let Some(p) = asked {
                    let n = Notice {
                        position: last.map(|l| l.to_string()),
                        reason: format!("position {p} is not in the changelog any more (or never was): read the views again, then follow"),
                    };
                    let mut e = Event::default()
                        .event("reset")
                        .data(serde_json::to_string(&n).expect("notices serialize"));
                    if let Some(l) = last {
                        e = e.id(l.to_string());
                    }
                    self.push(e)?;
                }
                // An empty changelog: everything in it is new to this client.
                last.unwrap_or_default()
            }
        };
        // Catch up to a watermark read now, then send it: the client knows it is current.
        let feed = self.feed.clone();
        let wm = self.read("watermark", || feed.watermark()).await?;
        // An empty changelog: nothing to catch up.
        let upto = wm.position().unwrap_or_default();
        while cursor < upto {
            let items = self.read("range", || log.range(cursor, upto, 1000)).await?;
            if items.is_empty() {
                break;
            }
            for item in items {
                // Every changelog entry has a position; only watermarks may lack one.
                cursor = item.position().unwrap_or(cursor).max(cursor);
                if self.filter.passes(&item) {
                    self.push(event(&item))?;
                }
            }
        }
        cursor = cursor.max(upto);
        self.push(event(&wm))?;
        let mut stop = self.feed.stop.clone();
        loop {
            let item = tokio::select! {
                r = hub.recv() => match r {
                    Ok(item) => item,
                    Err(broadcast::error::RecvError::Lagged(_)) => return Err(End::Drop("slow_client")),
                    Err(broadcast::error::RecvError::Closed) => return Err(End::Drop("shutdown")),
                },
                _ = stop.wait_for(|s| *s) => return Err(End::Drop("shutdown")),
                _ = self.tx.closed() => return Err(End::Gone),
            };
            match item.position() {
                // Sent during the catch-up already.
                Some(p) if p <= cursor && !matches!(*item, Item::Watermark(..)) => continue,
                Some(p) if p < cursor => continue,
                Some(p) => cursor = p,
                None => {}
            }
            if self.filter.passes(&item) {
                self.push(event(&item))?;
            }
        }
    }
}
