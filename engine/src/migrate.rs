//! Memory -> file storage for a stream, as a resumable state machine.
//!
//! A mirror keeps sequence numbers and timestamps, so stored checkpoints stay valid. Stream
//! names cannot change, so the move takes two hops: NAME (memory) -> NAME_MIGRATING (file
//! mirror) -> NAME (file mirror of the copy, then promoted). Between the deletion of NAME and
//! the final mirror, NAME_MIGRATING is the only copy of the data. So every step is chosen
//! from what the server holds ([`stage`]), never from what this process remembers: a
//! migration killed at any point continues from where it stopped, and a plain `ensure`
//! recognises every intermediate state and refuses to create an empty NAME beside a copy.

use crate::streams::{lookup, StreamError, StreamSpec};
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// Where a migration stands, read from the server. Each stage names the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// NAME in memory, no copy yet. Next: create NAME_MIGRATING as a file mirror of NAME.
    Start,
    /// NAME_MIGRATING mirrors NAME, NAME still takes publishes. Next: stop intake.
    CopyMade,
    /// NAME moved off its subjects (publishers get no responders). Next: wait until the copy
    /// holds everything, then delete NAME.
    IntakeStopped,
    /// NAME deleted: NAME_MIGRATING (a mirror of the deleted NAME) is the only copy. Next:
    /// detach it.
    OriginDeleted,
    /// NAME_MIGRATING is a plain file stream holding everything. Next: create NAME as its mirror.
    CopyDetached,
    /// NAME is a file mirror of NAME_MIGRATING. Next: wait for it, then promote NAME.
    FinalMirror,
    /// NAME promoted (file, own subjects). Next: delete NAME_MIGRATING.
    Promoted,
}

impl Stage {
    /// The stage's name as `ensure` prints it.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Start => "not started",
            Stage::CopyMade => "file copy made, intake not yet stopped",
            Stage::IntakeStopped => "intake stopped, memory stream not yet deleted",
            Stage::OriginDeleted => "memory stream deleted, _MIGRATING is the only copy",
            Stage::CopyDetached => "_MIGRATING detached, final stream not yet created",
            Stage::FinalMirror => "final file stream mirroring _MIGRATING, not yet promoted",
            Stage::Promoted => "final stream promoted, _MIGRATING not yet deleted",
        }
    }
}

/// The temporary copy's name.
pub fn temp_name(name: &str) -> String {
    format!("{name}_MIGRATING")
}

fn intake_subject(name: &str) -> String {
    format!("projector.migrating.{name}")
}

fn mirror_name(c: &stream::Config) -> Option<&str> {
    c.mirror.as_ref().map(|m| m.name.as_str())
}

async fn info(js: &jetstream::Context, name: &str) -> Result<Option<stream::Info>, StreamError> {
    match lookup(js, name).await? {
        None => Ok(None),
        Some(mut s) => s
            .info()
            .await
            .cloned()
            .map(Some)
            .map_err(|e| StreamError::Request {
                stream: name.to_string(),
                message: e.to_string(),
            }),
    }
}

/// The migration stage of `name`, or `None` when no migration is under way or needed (NAME
/// absent with no copy, or NAME in file storage with no copy).
///
/// # Errors
/// A JetStream request that fails, or a pair of streams that no step of this migration leaves
/// behind (then an operator must look; nothing is touched).
pub async fn stage(js: &jetstream::Context, name: &str) -> Result<Option<Stage>, StreamError> {
    let tmp = temp_name(name);
    let unexpected = |what: String| {
        StreamError::Migration {
        stream: name.to_string(),
        step: "read state",
        message: format!("{what}; this is not a state a migration leaves behind, inspect both streams (`nats stream info`) before changing anything"),
    }
    };
    let (n, t) = (info(js, name).await?, info(js, &tmp).await?);
    Ok(match (n, t) {
        (None, None) => None,
        (Some(n), None) => {
            (n.config.storage == stream::StorageType::Memory).then_some(Stage::Start)
        }
        (None, Some(t)) => Some(if t.config.mirror.is_some() {
            Stage::OriginDeleted
        } else {
            Stage::CopyDetached
        }),
        (Some(n), Some(t)) => {
            if n.config.storage == stream::StorageType::Memory {
                if mirror_name(&t.config) != Some(name) {
                    return Err(unexpected(format!(
                        "{name} is in memory and {tmp} exists but does not mirror it"
                    )));
                }
                Some(if n.config.subjects == vec![intake_subject(name)] {
                    Stage::IntakeStopped
                } else {
                    Stage::CopyMade
                })
            } else if mirror_name(&n.config) == Some(tmp.as_str()) {
                Some(Stage::FinalMirror)
            } else if n.config.mirror.is_none() && t.config.mirror.is_none() {
                Some(Stage::Promoted)
            } else {
                return Err(unexpected(format!(
                    "{name} is in file storage and {tmp} exists, but {name} does not mirror it"
                )));
            }
        }
    })
}

/// Test hook: `PROJECTOR_MIGRATE_STOP_AFTER=N` stops the migration (as a kill would, with an
/// error) after N steps of this process. Unset in production; read here so that the tests
/// can stop it between any two steps against a real server.
fn stop_after() -> Option<u32> {
    // Unset (production) or not a number: no stop; only the tests set it.
    std::env::var("PROJECTOR_MIGRATE_STOP_AFTER")
        .ok() // unset: no stop
        .and_then(|v| v.parse().ok()) // not a count: no stop
}

/// Runs the migration of `spec` from whatever stage the server shows to the end.
///
/// # Errors
/// A failed step (the next run continues from the stage it left), or an unexpected state.
pub async fn run(
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<(u64, u64, u64), StreamError> {
    let name = spec.name.as_str();
    let tmp = temp_name(name);
    let limit = stop_after();
    let mut steps = 0u32;
    while let Some(st) = stage(js, name).await? {
        if limit.is_some_and(|l| steps >= l) {
            return Err(StreamError::Migration {
                stream: name.to_string(),
                step: "test stop",
                message: format!(
                    "stopped by PROJECTOR_MIGRATE_STOP_AFTER={steps} at stage '{}'",
                    st.describe()
                ),
            });
        }
        tracing::info!(stream = name, stage = st.describe(), "migration step");
        step(js, spec, &tmp, st).await?;
        steps += 1;
    }
    let i = info(js, name)
        .await?
        .ok_or_else(|| StreamError::Migration {
            stream: name.to_string(),
            step: "finish",
            message: format!("{name} is missing after the migration"),
        })?;
    tracing::info!(
        stream = name,
        messages = i.state.messages,
        first_seq = i.state.first_sequence,
        last_seq = i.state.last_sequence,
        "migrated to file storage"
    );
    Ok((
        i.state.messages,
        i.state.first_sequence,
        i.state.last_sequence,
    ))
}

async fn step(
    js: &jetstream::Context,
    spec: &StreamSpec,
    tmp: &str,
    st: Stage,
) -> Result<(), StreamError> {
    let name = spec.name.as_str();
    let fail = |step: &'static str| {
        move |message: String| StreamError::Migration {
            stream: name.to_string(),
            step,
            message,
        }
    };
    let mirror_of = |origin: &str, target: &str| stream::Config {
        name: target.to_string(),
        subjects: vec![],
        mirror: Some(stream::Source {
            name: origin.to_string(),
            ..Default::default()
        }),
        ..spec.config()
    };
    match st {
        Stage::Start => {
            js.create_stream(mirror_of(name, tmp))
                .await
                .map_err(|e| fail("create file mirror")(e.to_string()))?;
        }
        Stage::CopyMade => {
            // Stop intake: move the old stream off its subjects so publishers get an error
            // instead of writing into a stream about to be deleted.
            let mut old = info(js, name)
                .await?
                .ok_or_else(|| fail("stop intake")(format!("{name} vanished")))?
                .config;
            old.subjects = vec![intake_subject(name)];
            js.update_stream(old)
                .await
                .map_err(|e| fail("stop intake")(e.to_string()))?;
        }
        Stage::IntakeStopped => {
            wait_mirrored(js, name, tmp, "first mirror", name).await?;
            js.delete_stream(name)
                .await
                .map_err(|e| fail("delete memory stream")(e.to_string()))?;
        }
        Stage::OriginDeleted => {
            // Detach the copy from its (deleted) origin, or mirroring it back is a cycle.
            js.update_stream(stream::Config {
                name: tmp.to_string(),
                subjects: vec![format!("{}.copy", intake_subject(name))],
                ..spec.config()
            })
            .await
            .map_err(|e| fail("detach file copy")(e.to_string()))?;
        }
        Stage::CopyDetached => {
            js.create_stream(mirror_of(tmp, name))
                .await
                .map_err(|e| fail("create final mirror")(e.to_string()))?;
        }
        Stage::FinalMirror => {
            wait_mirrored(js, tmp, name, "second mirror", name).await?;
            js.update_stream(spec.config())
                .await
                .map_err(|e| fail("promote")(e.to_string()))?;
        }
        Stage::Promoted => {
            same_tail(js, name, tmp).await?;
            js.delete_stream(tmp)
                .await
                .map_err(|e| fail("delete temporary copy")(e.to_string()))?;
        }
    }
    Ok(())
}

/// Refuses to delete the copy unless NAME holds the copy's last message (same sequence and
/// time): a NAME created empty beside the copy (by an older projector's plain `ensure`)
/// looks promoted, and deleting the copy then would lose the data.
async fn same_tail(js: &jetstream::Context, name: &str, tmp: &str) -> Result<(), StreamError> {
    let fail = |message: String| StreamError::Migration {
        stream: name.to_string(),
        step: "check before deleting the copy",
        message,
    };
    let t = state(js, tmp).await.map_err(fail)?;
    if t.state.messages == 0 {
        return Ok(());
    }
    let last = t.state.last_sequence;
    let at = |stream: String| async move {
        let s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
        s.get_raw_message(last)
            .await
            .map(|m| m.time)
            .map_err(|e| format!("{stream} seq {last}: {e}"))
    };
    let (a, b) = (
        at(name.to_string()).await,
        at(tmp.to_string()).await.map_err(fail)?,
    );
    match a {
        Ok(a) if a == b => Ok(()),
        other => Err(fail(format!(
            "{name} does not hold {tmp}'s last message (seq {last}: {other:?}); {tmp} may be the only copy of the data, so it is kept. Inspect both streams; if {name} was created empty, delete it and run `projector streams ensure --migrate` again"
        ))),
    }
}

async fn state(js: &jetstream::Context, name: &str) -> Result<stream::Info, String> {
    let mut s = js.get_stream(name).await.map_err(|e| e.to_string())?;
    s.info().await.cloned().map_err(|e| e.to_string())
}

/// Waits until `mirror` holds exactly what `origin` holds (same last sequence and count).
async fn wait_mirrored(
    js: &jetstream::Context,
    origin: &str,
    mirror: &str,
    step: &'static str,
    stream: &str,
) -> Result<stream::Info, StreamError> {
    let fail = |message: String| StreamError::Migration {
        stream: stream.to_string(),
        step,
        message,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let o = state(js, origin).await.map_err(fail)?;
        let m = state(js, mirror).await.map_err(fail)?;
        if m.state.last_sequence == o.state.last_sequence && m.state.messages == o.state.messages {
            return Ok(m);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(fail(format!(
                "mirror {mirror} still behind after 300s: {} of {} messages, last seq {} of {}",
                m.state.messages, o.state.messages, m.state.last_sequence, o.state.last_sequence
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
