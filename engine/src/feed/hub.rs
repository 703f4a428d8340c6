//! One tailer of the changelog per process, fanning entries out to every open feed.
//!
//! It blocks on `XREAD` on a connection of its own and broadcasts each entry once; every
//! `[feed] watermark_interval` it reads a watermark, sends whatever the changelog holds up to
//! the watermark's position first, then the watermark, so a feed never sees a watermark
//! ahead of a change it has not been sent. A feed that falls `[feed] client_buffer` items
//! behind is dropped (`sse.rs`): it resumes from its last position, nothing is lost.

use super::{Changelog, Item, Position};
use crate::config::FeedConfig;
use crate::metrics::Metrics;
use crate::sink::{cache::CacheSink, graph::GraphSink};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// `XREAD` of one stream: [(key, [(entry id, [field, value, ...])])].
type XreadReply = Vec<(String, Vec<(String, Vec<String>)>)>;

/// Why this instance closed a feed (`projector_feed_dropped_total{reason}`).
pub const DROP_REASONS: [&str; 2] = ["slow_client", "shutdown"];

/// What every feed connection shares: the fan-out, the changelog, the settings.
#[derive(Clone)]
pub struct Feed {
    pub(super) tx: broadcast::Sender<Arc<Item>>,
    pub(super) log: Changelog,
    pub(super) graph: GraphSink,
    pub(super) cfg: FeedConfig,
    pub(super) metrics: Metrics,
    pub(super) stop: watch::Receiver<bool>,
}

impl Feed {
    /// Starts the tailer; it ends when `stop` turns true, which closes every feed.
    pub fn start(
        graph: GraphSink,
        cache: &CacheSink,
        cfg: FeedConfig,
        metrics: Metrics,
        stop: watch::Receiver<bool>,
    ) -> Feed {
        let (tx, _) = broadcast::channel(cfg.client_buffer);
        let feed = Feed {
            tx,
            log: Changelog::new(cache),
            graph,
            cfg,
            metrics,
            stop,
        };
        let (f, cache) = (feed.clone(), cache.clone());
        tokio::spawn(async move { f.tail(cache).await });
        feed
    }

    /// Counts and logs a failed read; the caller waits a second and tries again.
    pub(super) fn failed(&self, read: &str, e: &crate::error::WriteError) {
        self.metrics.feed_errors.with_label_values(&[read]).inc();
        tracing::warn!(read, error = %e, "change feed: reading the changelog failed; retrying in 1s");
    }

    /// The live generation's watermark.
    pub(super) async fn watermark(&self) -> Result<Item, crate::error::WriteError> {
        let gen = crate::generations::live(&self.graph).await?;
        let (p, w) = self.log.watermark(&gen).await?;
        Ok(Item::Watermark(p, w))
    }

    fn send(&self, item: Item) {
        // Err: no feed is open right now; the entry stays in the changelog for later ones.
        if self.tx.send(Arc::new(item)).is_err() {
            tracing::trace!("change feed: no client");
        }
    }

    async fn tail(self, cache: CacheSink) {
        let mut stop = self.stop.clone();
        let mut conn = None;
        let mut cursor: Option<Position> = None;
        let mut next_mark = Instant::now() + self.cfg.watermark_interval;
        loop {
            if *stop.borrow() {
                break;
            }
            let step = async {
                if conn.is_none() {
                    conn = Some(
                        cache
                            .blocking_connection()
                            .await
                            .map_err(|e| ("connect", e))?,
                    );
                }
                if cursor.is_none() {
                    // Start at the end: a feed catches up from the changelog itself.
                    let p = self.log.last().await.map_err(|e| ("last", e))?;
                    // An empty changelog: from its very start.
                    cursor = Some(p.unwrap_or_default());
                }
                let c = conn.as_mut().expect("connected above");
                let from = cursor.expect("set above");
                let block = next_mark.saturating_duration_since(Instant::now());
                let block_ms = block.as_millis().max(1) as u64;
                let raw: Option<XreadReply> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(self.log.key())
                    .arg(from.to_string())
                    .query_async(c)
                    .await
                    .map_err(|e| {
                        (
                            "tail",
                            crate::error::WriteError::Valkey {
                                url: cache.url().to_string(),
                                message: e.to_string(),
                            },
                        )
                    })?;
                // None: nothing new within the block time.
                for (_, entries) in raw.unwrap_or_default() {
                    // Past every entry read, understood or not: one this reader skips (a
                    // newer writer's kind) must not be read again at once, forever.
                    let newest = entries
                        .iter()
                        .filter_map(|(id, _)| super::Position::parse(id))
                        .max();
                    cursor = newest.max(cursor);
                    for item in super::items(entries) {
                        self.send(item);
                    }
                }
                if Instant::now() >= next_mark {
                    let wm = self.watermark().await.map_err(|e| ("watermark", e))?;
                    // An empty changelog has nothing to flush before its watermark.
                    let upto = wm.position().unwrap_or_default();
                    // What arrived between the last XREAD and the watermark's read goes first.
                    while cursor.expect("set above") < upto {
                        let items = self
                            .log
                            .range(cursor.expect("set above"), upto, 1000)
                            .await
                            .map_err(|e| ("range", e))?;
                        if items.is_empty() {
                            break;
                        }
                        for item in items {
                            cursor = item.position().max(cursor);
                            self.send(item);
                        }
                    }
                    self.send(wm);
                    next_mark = Instant::now() + self.cfg.watermark_interval;
                }
                Ok::<(), (&str, crate::error::WriteError)>(())
            };
            let r = tokio::select! {
                r = step => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            if let Err((read, e)) = r {
                self.failed(read, &e);
                if read == "tail" || read == "connect" {
                    conn = None;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        tracing::debug!("change feed tailer stopped");
    }
}
