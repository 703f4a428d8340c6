//! The source side: a durable pull consumer per (projector, stream, partition), positioned at
//! the stored checkpoint, never wherever the durable happens to be.

use crate::error::WriteError;
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use std::time::Duration;

/// The message stream a worker reads from a positioned consumer: up to `batch` messages a
/// pull, a heartbeat every 5 s (a silent server is noticed), pulls that expire after 30 s.
/// The live durable and the archive reader read the same way.
pub async fn messages(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    batch: usize,
    what: &str,
) -> Result<pull::Stream, WriteError> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| WriteError::Nats {
            message: format!("open the message stream of {what}: {e}"),
        })
}

/// The durable's name: one per projector and partition on each stream for the live
/// workers (`projector-graph-p0`, whatever generation is live), and one per fixed generation.
pub fn consumer_name(projector: &str, generation: Option<&str>, partition: u32) -> String {
    match generation {
        None => format!("projector-{projector}-p{partition}"),
        Some(g) => format!("projector-{projector}-{g}-p{partition}"),
    }
}

fn nats_err(stream: &str, what: &str) -> impl Fn(String) -> WriteError {
    let prefix = format!("{what} on stream {stream}");
    move |e| WriteError::Nats {
        message: format!("{prefix}: {e}"),
    }
}

/// Settings of the durable consumers projector creates.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    /// The server deletes the durable after this long without a pull (zero: never).
    pub inactive_threshold: Duration,
}

/// Returns the durable, positioned so that its next message is `checkpoint + 1`.
///
/// An existing durable that is elsewhere (a restored Neo4j backup, a crash with unacked
/// deliveries, a manual edit) is recreated at `checkpoint + 1`, and the log says so.
pub async fn position(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    checkpoint: u64,
    settings: ConsumerSettings,
) -> Result<jetstream::consumer::Consumer<pull::Config>, WriteError> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| nats_err(stream, "get stream")(e.to_string()))?;
    let next = checkpoint + 1;
    let wanted = pull::Config {
        durable_name: Some(name.to_string()),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: next,
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // Unlimited: projector parks poison messages itself; a server-side max_deliver
        // would skip them in silence.
        max_deliver: -1,
        max_ack_pending: settings.max_ack_pending,
        inactive_threshold: settings.inactive_threshold,
        description: Some("projector durable; positioned from the Neo4j checkpoint".into()),
        ..Default::default()
    };
    if let Ok(mut existing) = s.get_consumer::<pull::Config>(name).await {
        let info = existing
            .info()
            .await
            .map_err(|e| nats_err(stream, "consumer info")(e.to_string()))?
            .clone();
        let delivered = info.delivered.stream_sequence;
        let fresh_at_next = delivered == 0
            && matches!(info.config.deliver_policy, DeliverPolicy::ByStartSequence { start_sequence } if start_sequence == next);
        let caught_at_checkpoint =
            delivered == checkpoint && info.num_ack_pending == 0 && delivered > 0;
        // A durable made for a one-off pass (with an inactivity threshold) must not serve a
        // long-running worker, nor the reverse: recreate it with the wanted setting.
        let same_lifetime = info.config.inactive_threshold == settings.inactive_threshold;
        if (fresh_at_next || caught_at_checkpoint) && same_lifetime {
            return Ok(existing);
        }
        tracing::warn!(
            stream,
            consumer = name,
            consumer_delivered = delivered,
            ack_pending = info.num_ack_pending,
            checkpoint,
            "durable consumer disagrees with the stored checkpoint; moving it to checkpoint + 1"
        );
        s.delete_consumer(name)
            .await
            .map_err(|e| nats_err(stream, "delete consumer")(e.to_string()))?;
    }
    s.create_consumer(wanted)
        .await
        .map_err(|e| nats_err(stream, "create consumer")(e.to_string()))
}

/// Last sequence and first sequence of a stream.
pub async fn bounds(js: &jetstream::Context, stream: &str) -> Result<(u64, u64), WriteError> {
    let mut s = js
        .get_stream(stream)
        .await
        .map_err(|e| nats_err(stream, "get stream")(e.to_string()))?;
    let info = s
        .info()
        .await
        .map_err(|e| nats_err(stream, "stream info")(e.to_string()))?;
    Ok((info.state.first_sequence, info.state.last_sequence))
}

/// A consumer on `archive` (a stream's archive mirror, which keeps the stream's sequences)
/// whose first message is `from`: what the live worker reads a range from that its stream
/// no longer holds. Explicitly acked like the durable (acks stay in one place and are
/// confirmed); not durable: the server removes it a minute after its last pull, and the
/// worker deletes it once the range is read ([`delete_archive_reader`]).
pub async fn archive_reader(
    js: &jetstream::Context,
    archive: &str,
    name: &str,
    from: u64,
    settings: ConsumerSettings,
) -> Result<jetstream::consumer::Consumer<pull::Config>, WriteError> {
    let s = js
        .get_stream(archive)
        .await
        .map_err(|e| nats_err(archive, "get stream")(e.to_string()))?;
    // One left by an earlier attempt may start elsewhere: a new one starts at `from`.
    delete_archive_reader(js, archive, name).await?;
    let config = pull::Config {
        name: Some(name.to_string()),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: from,
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: -1,
        max_ack_pending: settings.max_ack_pending,
        inactive_threshold: Duration::from_secs(60),
        description: Some(
            "projector: a range its stream no longer holds, read from the archive".into(),
        ),
        ..Default::default()
    };
    s.create_consumer(config)
        .await
        .map_err(|e| nats_err(archive, "create archive reader")(e.to_string()))
}

/// Deletes the archive reader `name` of `archive`; one that is not there is fine.
pub async fn delete_archive_reader(
    js: &jetstream::Context,
    archive: &str,
    name: &str,
) -> Result<(), WriteError> {
    let s = js
        .get_stream(archive)
        .await
        .map_err(|e| nats_err(archive, "get stream")(e.to_string()))?;
    match s.delete_consumer(name).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            jetstream::stream::ConsumerErrorKind::JetStream(err)
                if err.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
            {
                Ok(())
            }
            _ => Err(nats_err(archive, "delete archive reader")(e.to_string())),
        },
    }
}

/// First and last sequence of a stream, or `None` if it does not exist.
pub async fn bounds_if_exists(
    js: &jetstream::Context,
    stream: &str,
) -> Result<Option<(u64, u64)>, WriteError> {
    match js.get_stream(stream).await {
        Ok(mut s) => {
            let info = s
                .info()
                .await
                .map_err(|e| nats_err(stream, "stream info")(e.to_string()))?;
            Ok(Some((info.state.first_sequence, info.state.last_sequence)))
        }
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(err)
                if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(nats_err(stream, "get stream")(e.to_string())),
        },
    }
}

/// Whether the message at `seq` is still in the stream.
pub async fn exists(js: &jetstream::Context, stream: &str, seq: u64) -> Result<bool, WriteError> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| nats_err(stream, "get stream")(e.to_string()))?;
    use jetstream::stream::LastRawMessageErrorKind as K;
    match s.get_raw_message(seq).await {
        Ok(_) => Ok(true),
        Err(e) => match e.kind() {
            K::NoMessageFound => Ok(false),
            K::JetStream(err) if err.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND => {
                Ok(false)
            }
            _ => Err(nats_err(stream, "get message")(e.to_string())),
        },
    }
}

/// Deletes the durables of `generation` (every partition below `partitions`) on `streams`:
/// a one-off pass into a fixed generation (a rebuild's catch-up, verify's temporary
/// generation) is done with them. Missing ones are fine.
pub async fn delete_generation_consumers(
    js: &jetstream::Context,
    projector: &str,
    generation: &str,
    streams: &[String],
    partitions: u32,
) -> Result<(), WriteError> {
    for stream in streams {
        let s = match js.get_stream(stream).await {
            Ok(s) => s,
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(err)
                    if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    continue
                }
                _ => return Err(nats_err(stream, "get stream")(e.to_string())),
            },
        };
        for p in 0..partitions.max(1) {
            let name = consumer_name(projector, Some(generation), p);
            match s.delete_consumer(&name).await {
                Ok(_) => tracing::debug!(stream, consumer = %name, "deleted the one-off durable"),
                Err(e) => match e.kind() {
                    jetstream::stream::ConsumerErrorKind::JetStream(err)
                        if err.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND => {}
                    _ => return Err(nats_err(stream, "delete consumer")(e.to_string())),
                },
            }
        }
    }
    Ok(())
}

/// The stream time (ns) of the message at `seq`, or `None` if it is not in the stream.
pub async fn time_ns_at(
    js: &jetstream::Context,
    stream: &str,
    seq: u64,
) -> Result<Option<i64>, WriteError> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| nats_err(stream, "get stream")(e.to_string()))?;
    use jetstream::stream::LastRawMessageErrorKind as K;
    match s.get_raw_message(seq).await {
        Ok(m) => Ok(Some(m.time.unix_timestamp_nanos() as i64)),
        Err(e) => match e.kind() {
            K::NoMessageFound => Ok(None),
            K::JetStream(err) if err.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND => {
                Ok(None)
            }
            _ => Err(nats_err(stream, "get message")(e.to_string())),
        },
    }
}
