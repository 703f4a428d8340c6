//! Stream sources: one pull consumer per stream, positioned at the stored checkpoint. They
//! fetch and hand over, nothing else: a group is what every stream already has once the
//! first message of any stream arrived, and each stream's part is checked for sequence
//! (a redelivery of what is committed, a message out of order, a hole).

use super::{ack, Worker, WorkerError};
use crate::sink::graph::CheckpointKey;
use async_nats::jetstream::{self, consumer::pull};
use futures::{FutureExt, StreamExt};
use std::time::Duration;

/// One stream of the partition.
pub(super) struct Source {
    pub stream: String,
    pub key: CheckpointKey,
    /// `projector/stream/partition`: its health entry and log name.
    pub name: String,
    /// Position: the last sequence committed or skipped as another partition's.
    pub checkpoint: u64,
    /// The checkpoint as stored in Neo4j (behind `checkpoint` while only other partitions'
    /// events were read); the expected value of the next optimistic move.
    pub stored: u64,
    /// The consumer's messages; `None` until positioned, or after its stream broke.
    pub messages: Option<pull::Stream>,
    /// Reading a range the stream no longer holds from its archive, up to this sequence
    /// (`worker/archive.rs`); `None`: reading the live stream.
    pub archive_until: Option<u64>,
}

impl Source {
    pub fn new(projector: &str, stream: &str, partition: u32) -> Source {
        Source {
            stream: stream.to_string(),
            key: CheckpointKey::new(projector, stream, partition),
            name: format!("{projector}/{stream}/{partition}"),
            checkpoint: 0,
            stored: 0,
            messages: None,
            archive_until: None,
        }
    }
}

/// Why a stream's messages stopped before the end of what was fetched.
pub(super) enum Anomaly {
    /// A later message came first while the expected one is still in the stream.
    OutOfOrder { expected: u64, got: u64 },
    /// The expected messages are gone.
    Gap { from: u64, to: u64 },
    /// The consumer's message stream failed or ended.
    Broken(String),
    /// The archive reader passed the end of the range read from the archive.
    ArchiveDone,
}

/// One stream's messages of a group, in delivery order.
pub(super) struct Fetched {
    pub src: usize,
    pub raw: Vec<jetstream::Message>,
    pub broken: Option<String>,
}

/// A message that passed the sequence check, with its JetStream metadata.
pub(super) struct Checked {
    pub src: usize,
    pub msg: jetstream::Message,
    pub seq: u64,
    pub ts_ns: i64,
    pub delivered: i64,
    pub pending: u64,
}

/// The outcome of one poll of a consumer's message stream.
enum Polled {
    Message(Box<jetstream::Message>),
    /// Nothing this time (an idle heartbeat notice).
    Nothing,
    Broken(String),
}

fn classify(next: Option<Result<jetstream::Message, pull::MessagesError>>) -> Polled {
    use pull::MessagesErrorKind as K;
    match next {
        Some(Ok(m)) => Polled::Message(Box::new(m)),
        Some(Err(e)) if e.kind() == K::MissingHeartbeat => Polled::Nothing,
        Some(Err(e)) => Polled::Broken(e.to_string()),
        None => Polled::Broken("consumer stream ended".into()),
    }
}

impl Worker {
    /// Waits for a first message of any stream (up to `idle`), then takes whatever every
    /// stream already has, up to the batch size per stream: low latency when idle, one
    /// transaction for every stream's messages under load.
    pub(super) async fn gather(&mut self) -> Vec<Fetched> {
        let mut out: Vec<Fetched> = (0..self.sources.len())
            .map(|src| Fetched {
                src,
                raw: Vec::new(),
                broken: None,
            })
            .collect();
        let first = {
            let waits: Vec<_> = self
                .sources
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| s.messages.as_mut().map(|m| (i, m)))
                .map(|(i, m)| async move { (i, m.next().await) }.boxed())
                .collect();
            if waits.is_empty() {
                // No source has a message stream (each is positioned at start and after an
                // anomaly, so this only lasts while stopping): wait, do not spin.
                tokio::time::sleep(self.cfg.idle).await;
                return Vec::new();
            }
            let mut sd = self.shutdown.clone();
            tokio::select! {
                ((i, next), _, _) = futures::future::select_all(waits) => Some((i, next)),
                _ = tokio::time::sleep(self.cfg.idle) => None,
                _ = sd.changed() => None,
            }
        };
        let Some((hot, next)) = first else {
            return Vec::new();
        };
        match classify(next) {
            Polled::Message(m) => out[hot].raw.push(*m),
            Polled::Nothing => {}
            Polled::Broken(e) => out[hot].broken = Some(e),
        }
        let batch = self.cfg.batch_size;
        for (i, s) in self.sources.iter_mut().enumerate() {
            let Some(messages) = s.messages.as_mut() else {
                continue;
            };
            let f = &mut out[i];
            while f.broken.is_none() && f.raw.len() < batch {
                // The stream that woke us lingers 2 ms for the rest of its pull (catch-up
                // batches) while the consumer says more is pending; the others, and a hot
                // stream with nothing pending (live load: the next event is not published
                // yet), give what they already hold.
                let more = f
                    .raw
                    .last()
                    // No metadata: no linger; the sequence check reports the message.
                    .and_then(|m| m.info().ok())
                    .is_some_and(|info| info.pending > 0);
                let next = if i == hot && more {
                    match tokio::time::timeout(Duration::from_millis(2), messages.next()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    }
                } else {
                    match messages.next().now_or_never() {
                        Some(n) => n,
                        None => break,
                    }
                };
                match classify(next) {
                    Polled::Message(m) => f.raw.push(*m),
                    Polled::Nothing => break,
                    Polled::Broken(e) => f.broken = Some(e),
                }
            }
        }
        out.retain(|f| !f.raw.is_empty() || f.broken.is_some());
        out
    }

    /// Checks one stream's part of a group against its checkpoint: redeliveries of what is
    /// committed are acked as duplicates and dropped; the first message out of sequence ends
    /// the part with an anomaly (the caller repositions that stream or handles the hole).
    pub(super) async fn check_sequence(
        &mut self,
        f: Fetched,
    ) -> Result<(Vec<Checked>, Option<Anomaly>), WorkerError> {
        let src = f.src;
        let mut out = Vec::with_capacity(f.raw.len());
        let mut expected = self.sources[src].checkpoint + 1;
        for msg in f.raw {
            let (seq, delivered, pending, ts_ns) = match msg.info() {
                Ok(i) => (
                    i.stream_sequence,
                    i.delivered,
                    i.pending,
                    i.published.unix_timestamp_nanos() as i64,
                ),
                Err(e) => {
                    let why = format!("message without JetStream metadata: {e}");
                    return Ok((out, Some(Anomaly::Broken(why))));
                }
            };
            if self.sources[src]
                .archive_until
                .is_some_and(|until| seq > until)
            {
                // Past the archived range: the live stream holds the rest.
                return Ok((out, Some(Anomaly::ArchiveDone)));
            }
            if seq < expected {
                // Already committed (a redelivery after a crash between commit and ack).
                self.sh
                    .metrics
                    .events
                    .with_label_values(&[
                        &self.cfg.projector,
                        &self.sources[src].stream,
                        "-",
                        "duplicate",
                    ])
                    .inc();
                ack::duplicate(self, src, &msg, seq).await;
                continue;
            }
            if seq > expected {
                let js = self.sh.js.clone();
                // The archive's own hole, while reading from it.
                let stream = match self.sources[src].archive_until {
                    Some(_) => crate::config::archive_name(&self.sources[src].stream),
                    None => self.sources[src].stream.clone(),
                };
                let still_there = self
                    .retrier(src)
                    .run("check gap", || {
                        crate::source::exists(&js, &stream, expected)
                    })
                    .await
                    .map_err(|e| self.fatal(src, e))?;
                let anomaly = if still_there {
                    Anomaly::OutOfOrder { expected, got: seq }
                } else {
                    Anomaly::Gap {
                        from: expected,
                        to: seq - 1,
                    }
                };
                return Ok((out, Some(anomaly)));
            }
            expected = seq + 1;
            if self.sources[src].archive_until.is_some() {
                self.sh
                    .metrics
                    .archive_reads
                    .with_label_values(&[&self.cfg.projector, &self.sources[src].stream])
                    .inc();
            }
            out.push(Checked {
                src,
                msg,
                seq,
                ts_ns,
                delivered,
                pending,
            });
        }
        Ok((out, f.broken.map(Anomaly::Broken)))
    }
}
