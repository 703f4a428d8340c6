//! Gaps healed from the archive: when a stream no longer holds a range the worker still
//! needs (its limits removed it while the projector was down) and the stream's archive
//! mirror does, the source reads that range from the archive, then goes back to the live
//! stream. A mirror keeps the stream's sequences and times, so the events project exactly
//! as if the live stream had delivered them (same versions, same checkpoint key); only a
//! range neither holds is a gap (`--on-gap`).

use super::{Worker, WorkerError};
use crate::source;

impl Worker {
    /// Whether `from..=to` of a stream can be read from its archive; if so, the source
    /// switches to it (the caller positions it). Logged either way.
    pub(super) async fn heal_from_archive(
        &mut self,
        src: usize,
        from: u64,
        to: u64,
    ) -> Result<bool, WorkerError> {
        let (js, stream) = (self.sh.js.clone(), self.sources[src].stream.clone());
        let archive = crate::config::archive_name(&stream);
        let bounds = self
            .retrier(src)
            .run("read the archive's bounds", || {
                source::bounds_if_exists(&js, &archive)
            })
            .await
            .map_err(|e| self.fatal(src, e))?;
        let name = &self.sources[src].name;
        match bounds {
            Some((first, last)) if first <= from && last >= to && first > 0 => {
                tracing::warn!(worker = %name, from, to, %archive, "the stream no longer holds this range; reading it from the archive, then the live stream again");
                self.sources[src].archive_until = Some(to);
                Ok(true)
            }
            Some((first, last)) => {
                tracing::error!(worker = %name, from, to, %archive, archive_first = first, archive_last = last, "the archive does not hold the whole range either");
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Opens the archive reader of a source in archive mode at its checkpoint + 1.
    pub(super) async fn position_archive(&mut self, src: usize) -> Result<(), WorkerError> {
        let js = self.sh.js.clone();
        let s = &self.sources[src];
        let archive = crate::config::archive_name(&s.stream);
        let name = archive_reader_name(&s.key.id());
        let (from, settings, batch) = (s.checkpoint + 1, self.cfg.consumer, self.cfg.batch_size);
        let messages = self
            .retrier(src)
            .run("position the archive reader", || async {
                let consumer = source::archive_reader(&js, &archive, &name, from, settings).await?;
                source::messages(&consumer, batch, &format!("{archive}/{name}")).await
            })
            .await
            .map_err(|e| self.fatal(src, e))?;
        self.sources[src].messages = Some(messages);
        Ok(())
    }

    /// The archived range is committed: delete the archive reader and go back to the live
    /// stream (its durable is positioned at the checkpoint by the caller).
    pub(super) async fn leave_archive(&mut self, src: usize) -> Result<(), WorkerError> {
        let s = &mut self.sources[src];
        let Some(to) = s.archive_until else {
            return Ok(());
        };
        if s.checkpoint < to {
            // Part of the range is not committed yet: read it from the archive again.
            return Ok(());
        }
        s.archive_until = None;
        s.messages = None;
        let (js, archive, name) = (
            self.sh.js.clone(),
            crate::config::archive_name(&s.stream),
            archive_reader_name(&s.key.id()),
        );
        tracing::info!(worker = %s.name, to, checkpoint = s.checkpoint, "the range missing from the stream was read from the archive; back on the live stream");
        self.retrier(src)
            .run("delete the archive reader", || {
                source::delete_archive_reader(&js, &archive, &name)
            })
            .await
            .map_err(|e| self.fatal(src, e))
    }
}

/// The archive reader's name: one per checkpoint (projector, stream, partition) and
/// generation-independent, as the checkpoint id is unique per generation's worker.
fn archive_reader_name(checkpoint_id: &str) -> String {
    format!("projector-archive-{}", checkpoint_id.replace('/', "-"))
}
