//! Start-up of each stream of the partition (and again after a reposition): resolve the live
//! generation, read the stored checkpoint, check the stream was not recreated under it,
//! bring Valkey up to Neo4j, publish what an earlier run left in the outbox, then position
//! the durable consumer right after the checkpoint.

use super::{Worker, WorkerError};
use crate::error::WriteError;
use crate::source;
use std::time::Instant;

impl Worker {
    /// Starts (or restarts) every stream of the partition.
    pub(super) async fn start(&mut self) -> Result<(), WorkerError> {
        if self.cfg.follow_live {
            let graph = &self.sh.graph;
            let live = self
                .group_retrier()
                .run("resolve the live generation", || {
                    crate::generations::live(graph)
                })
                .await
                .map_err(|e| WorkerError::Fatal {
                    stream: self.name.clone(),
                    error: e.to_string(),
                })?;
            if live != self.cfg.generation {
                // Fence of upgrades: a promotion to a generation of another projection
                // version ends this worker's writes; the commit's live fence stops every
                // batch to the old one, so nothing of this version lands in the new one.
                let version = self
                    .group_retrier()
                    .run("read the live generation's version", || {
                        crate::generations::projection_version(graph, &live)
                    })
                    .await
                    .map_err(|e| WorkerError::Fatal {
                        stream: self.name.clone(),
                        error: e.to_string(),
                    })?;
                if version != Some(i64::from(projections::PROJECTION_VERSION)) {
                    tracing::error!(worker = %self.name, generation = %live, live_version = ?version, ours = projections::PROJECTION_VERSION, "fenced out: the live generation is of another projection version");
                    return Err(WorkerError::Fenced {
                        generation: live,
                        live_version: version,
                        ours: projections::PROJECTION_VERSION,
                    });
                }
                tracing::info!(worker = %self.name, from = %self.cfg.generation, to = %live, "writing the live generation");
                self.cfg.generation = live;
            }
        }
        self.load_parking().await?;
        for src in 0..self.sources.len() {
            self.sources[src].messages = None;
            self.start_source(src).await?;
        }
        Ok(())
    }

    /// Reads the parking rule's state for this worker's streams and partition from the
    /// generation it writes (also after a reposition or a promotion, so a rebuilt
    /// generation's parked events keep their stories blocked): the blocks of its parked
    /// records, the lifts and the rulings (D58, D59).
    async fn load_parking(&mut self) -> Result<(), WorkerError> {
        let (graph, gen, projector) = (&self.sh.graph, &self.cfg.generation, &self.cfg.projector);
        let fatal = |e: crate::error::WriteError| WorkerError::Fatal {
            stream: self.name.clone(),
            error: e.to_string(),
        };
        let r = self.group_retrier();
        let blocked = r
            .run("read the blocked stories", || {
                graph.blocked_stories(gen, projector)
            })
            .await
            .map_err(fatal)?;
        let lifts = r
            .run("read the lifted blocks", || graph.lifts(projector))
            .await
            .map_err(fatal)?;
        let rulings = r
            .run("read the rulings", || graph.rulings(projector))
            .await
            .map_err(fatal)?;
        let (parts, part) = (self.cfg.partitions, self.cfg.partition);
        let mine =
            |story: &str| parts <= 1 || projections::partition_of(Some(story), parts) == part;
        let mut b = self.sh.blocked.lock().unwrap_or_else(|e| e.into_inner());
        for src in &self.sources {
            b.clear_stream(&src.stream, |story| !mine(story));
        }
        for (story, stream, blocker) in blocked {
            if mine(&story) && self.sources.iter().any(|s| s.stream == stream) {
                b.block(&stream, &story, blocker);
            }
        }
        for (stream, story, at) in lifts {
            b.lift(&stream, &story, at);
        }
        for r in rulings {
            b.rule(&r.stream, r.seq, r.ruling);
        }
        Ok(())
    }

    async fn start_source(&mut self, src: usize) -> Result<(), WorkerError> {
        let (gen, key) = (self.cfg.generation.clone(), self.sources[src].key.clone());
        let (graph, js) = (self.sh.graph.clone(), self.sh.js.clone());
        let stream = self.sources[src].stream.clone();
        let r = self.retrier(src);
        let stored = r
            .run("read checkpoint", || graph.checkpoint(&gen, &key))
            .await
            .map_err(|e| self.fatal(src, e))?;
        let checkpoint_read = Instant::now();
        let (first, last) = r
            .run("stream bounds", || source::bounds(&js, &stream))
            .await
            .map_err(|e| self.fatal(src, e))?;
        let checkpoint = match stored {
            Some(c) => c,
            None => {
                if first > 1 {
                    tracing::info!(worker = %self.sources[src].name, first, "no checkpoint yet; the stream starts at {first} (earlier messages were removed before this projector existed)");
                }
                first.saturating_sub(1)
            }
        };
        self.sources[src].checkpoint = checkpoint;
        self.sources[src].stored = checkpoint;
        if checkpoint > last {
            self.stream_reset(src, first, last, None).await?;
        } else if stored.is_some() && checkpoint >= first.max(1) {
            // A recreated stream that already grew past the checkpoint: the message at
            // the checkpoint is not the one committed (another stream time). A mirror
            // migration keeps times, so it passes.
            let recorded = r
                .run("read checkpoint time", || graph.checkpoint_ts(&gen, &key))
                .await
                .map_err(|e| self.fatal(src, e))?;
            if let Some(recorded) = recorded {
                let found = r
                    .run("read the message at the checkpoint", || {
                        source::time_ns_at(&js, &stream, checkpoint)
                    })
                    .await
                    .map_err(|e| self.fatal(src, e))?;
                if found.is_some_and(|t| t != recorded) {
                    self.stream_reset(src, first, last, found.map(|f| (recorded, f)))
                        .await?;
                }
            }
        }
        let checkpoint = self.sources[src].checkpoint;
        tracing::info!(worker = %self.sources[src].name, generation = %gen, checkpoint, stream_last = last, "starting from stored checkpoint");
        self.repair_cache(src, checkpoint_read)
            .await
            .map_err(|e| self.fatal(src, e))?;
        self.drain_outbox(src)
            .await
            .map_err(|e| self.fatal(src, e))?;
        self.position(src).await?;
        self.set_lag(src, last.saturating_sub(checkpoint));
        Ok(())
    }

    /// Positions a stream's durable right after its checkpoint and opens its messages.
    pub(super) async fn position(&mut self, src: usize) -> Result<(), WorkerError> {
        if self.sources[src].archive_until.is_some() {
            return self.position_archive(src).await;
        }
        let js = self.sh.js.clone();
        let s = &self.sources[src];
        let stream = s.stream.clone();
        // Live workers keep one durable whatever generation is live.
        let consumer_gen = (!self.cfg.follow_live).then_some(self.cfg.generation.as_str());
        let cname = source::consumer_name(&self.cfg.projector, consumer_gen, self.cfg.partition);
        let (ckpt, settings, batch) = (s.checkpoint, self.cfg.consumer, self.cfg.batch_size);
        let messages = self
            .retrier(src)
            .run("position consumer", || async {
                let consumer = source::position(&js, &stream, &cname, ckpt, settings).await?;
                source::messages(&consumer, batch, &format!("{stream}/{cname}")).await
            })
            .await
            .map_err(|e| self.fatal(src, e))?;
        self.sources[src].messages = Some(messages);
        self.sh
            .health
            .update(&self.sources[src].name, |h| h.connected = true);
        Ok(())
    }

    /// Publishes what a previous run committed to the outbox but did not confirm as
    /// published (a crash or a failed publish between the Neo4j commit and the outbox
    /// delete). Without this, those outbound events would be lost: their input is
    /// already checkpointed.
    async fn drain_outbox(&mut self, src: usize) -> Result<(), WriteError> {
        let (graph, gen, key) = (&self.sh.graph, &self.cfg.generation, &self.sources[src].key);
        let pending = self
            .retrier(src)
            .run("read pending outbox", || graph.outbox_pending(gen, key))
            .await?;
        if pending.is_empty() {
            return Ok(());
        }
        tracing::warn!(worker = %self.sources[src].name, pending = pending.len(), "publishing outbound events committed by an earlier run but not confirmed as published");
        let entries: Vec<_> = pending
            .into_iter()
            .map(|event| crate::sink::graph::OutboxEntry {
                stream: self.sources[src].stream.clone(),
                event,
            })
            .collect();
        self.publish_outbox(&entries, &[]).await
    }

    /// Brings a stream's Valkey checkpoint to its Neo4j checkpoint (read at
    /// `checkpoint_read`), rendering every story context unless a render that started after
    /// that read already did.
    async fn repair_cache(
        &mut self,
        src: usize,
        checkpoint_read: Instant,
    ) -> Result<(), WriteError> {
        let (gen, prefix) = (&self.cfg.generation, &self.cfg.cache_prefix);
        let (graph, cache) = (&self.sh.graph, &self.sh.cache);
        let (key, ckpt) = (&self.sources[src].key, self.sources[src].checkpoint);
        let r = self.retrier(src);
        let valkey = r
            .run("read Valkey checkpoint", || cache.checkpoint(gen, key))
            .await?;
        if valkey == Some(ckpt) || (valkey.is_none() && ckpt == 0) {
            return Ok(());
        }
        let name = &self.sources[src].name;
        let mut renders = self.sh.renders.lock().await;
        let render_key = (gen.clone(), prefix.clone());
        if renders
            .get(&render_key)
            .is_some_and(|started| *started >= checkpoint_read)
        {
            tracing::info!(worker = %name, valkey_checkpoint = ?valkey, neo4j_checkpoint = ckpt, "Valkey behind Neo4j, but every story context was rendered after this checkpoint was read; moving the Valkey checkpoint only");
            return r
                .run("move the Valkey checkpoint", || {
                    cache.apply(gen, prefix, &[], key, ckpt)
                })
                .await;
        }
        match valkey {
            None => {
                tracing::info!(worker = %name, neo4j_checkpoint = ckpt, "no Valkey checkpoint yet (a new generation or partition); rendering this generation's story contexts")
            }
            Some(v) => {
                tracing::warn!(worker = %name, valkey_checkpoint = v, neo4j_checkpoint = ckpt, "Valkey is not at Neo4j's checkpoint (a crash between the two commits); re-rendering this generation's story contexts")
            }
        }
        let started = Instant::now();
        r.run("repair Valkey", || async {
            let ids = graph.story_ids(gen).await?;
            for chunk in ids.chunks(500) {
                let contexts = graph.story_contexts(gen, chunk).await?;
                // Forced: after a switch of generation the cached revisions are another's.
                cache
                    .apply_with(gen, prefix, &contexts, key, ckpt, true)
                    .await?;
            }
            cache.apply(gen, prefix, &[], key, ckpt).await
        })
        .await?;
        renders.insert(render_key, started);
        Ok(())
    }
}
