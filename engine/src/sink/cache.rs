//! The Valkey writer: story contexts and a Valkey-side checkpoint in one MULTI/EXEC.

use crate::config::ValkeyConfig;
use crate::error::WriteError;
use crate::sink::graph::CheckpointKey;
use projections::context::{context_key, render, StoryContext};
use redis::aio::ConnectionManager;

/// The cache sink. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct CacheSink {
    conn: ConnectionManager,
    url: String,
    prefix: String,
}

impl CacheSink {
    /// Connects (bounded by the client's connect timeout).
    pub async fn connect(cfg: &ValkeyConfig) -> Result<CacheSink, WriteError> {
        let err = |e: redis::RedisError| WriteError::Valkey {
            url: redact(&cfg.url),
            message: e.to_string(),
        };
        let client = redis::Client::open(cfg.url.as_str()).map_err(err)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(10)));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(err)?;
        Ok(CacheSink {
            conn,
            url: redact(&cfg.url),
            prefix: cfg.key_prefix.clone(),
        })
    }

    fn err(&self) -> impl Fn(redis::RedisError) -> WriteError + '_ {
        move |e| WriteError::Valkey {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// Key prefix of a generation's cache entries: none for the live one, so readers of
    /// the seed's `context:{story_id}` find it.
    pub fn gen_prefix(&self, gen: &str, live: bool) -> String {
        if live {
            self.prefix.clone()
        } else {
            format!("{}gen:{gen}:", self.prefix)
        }
    }

    fn checkpoint_key(&self, gen: &str, key: &CheckpointKey) -> String {
        format!("{}projector:checkpoint:{gen}:{}", self.prefix, key.id())
    }

    pub async fn checkpoint(
        &self,
        gen: &str,
        key: &CheckpointKey,
    ) -> Result<Option<u64>, WriteError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = redis::cmd("GET")
            .arg(self.checkpoint_key(gen, key))
            .query_async(&mut c)
            .await
            .map_err(self.err())?;
        Ok(v)
    }

    /// Writes contexts and moves the Valkey checkpoint atomically (MULTI/EXEC). A context is
    /// only written over an older revision: two workers rendering the same story cannot leave
    /// the older render in place.
    pub async fn apply(
        &self,
        gen: &str,
        key_prefix: &str,
        contexts: &[StoryContext],
        ckpt: &CheckpointKey,
        seq: u64,
    ) -> Result<(), WriteError> {
        self.apply_with(gen, key_prefix, contexts, ckpt, seq, false)
            .await
    }

    /// Like [`CacheSink::apply`]; `force` writes whatever revision the cache holds (after
    /// a switch of generation, whose revisions start over).
    pub async fn apply_with(
        &self,
        gen: &str,
        key_prefix: &str,
        contexts: &[StoryContext],
        ckpt: &CheckpointKey,
        seq: u64,
        force: bool,
    ) -> Result<(), WriteError> {
        self.apply_many(gen, key_prefix, contexts, &[(ckpt.clone(), seq)], force)
            .await
    }

    /// Writes contexts and moves several Valkey checkpoints (one per stream of a committed
    /// transaction) in one MULTI/EXEC.
    pub async fn apply_many(
        &self,
        gen: &str,
        key_prefix: &str,
        contexts: &[StoryContext],
        ckpts: &[(CheckpointKey, u64)],
        force: bool,
    ) -> Result<(), WriteError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ctx in contexts {
            put(&mut pipe, key_prefix, ctx, force);
        }
        for (ckpt, seq) in ckpts {
            pipe.set(self.checkpoint_key(gen, ckpt), *seq).ignore();
        }
        let mut c = self.conn.clone();
        let () = pipe.query_async(&mut c).await.map_err(self.err())?;
        Ok(())
    }

    /// Writes contexts without touching any checkpoint (dead-letter retries, repairs).
    pub async fn put_contexts(
        &self,
        key_prefix: &str,
        contexts: &[StoryContext],
        force: bool,
    ) -> Result<(), WriteError> {
        if contexts.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ctx in contexts {
            put(&mut pipe, key_prefix, ctx, force);
        }
        let mut c = self.conn.clone();
        let () = pipe.query_async(&mut c).await.map_err(self.err())?;
        Ok(())
    }

    /// Number of story contexts under a generation's prefix and a hash of them (sorted by
    /// story id), for `projector verify`.
    pub async fn contexts_digest(&self, key_prefix: &str) -> Result<(u64, String), WriteError> {
        use sha2::{Digest, Sha256};
        let mut c = self.conn.clone();
        let pattern = format!("{key_prefix}context:*");
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(self.err())?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut h = Sha256::new();
        for chunk in keys.chunks(500) {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut c)
                .await
                .map_err(self.err())?;
            for (k, v) in chunk.iter().zip(values) {
                // SCAN matched `{key_prefix}*`, so the prefix is always there.
                h.update(k.strip_prefix(key_prefix).unwrap_or(k).as_bytes());
                h.update(b"\x00");
                // A key that expired between SCAN and MGET hashes as empty, as it now is.
                h.update(v.unwrap_or_default());
                h.update(b"\n");
            }
        }
        Ok((keys.len() as u64, format!("{:x}", h.finalize())))
    }

    /// Deletes every key under a prefix (a dropped generation's cache), with SCAN in batches.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, WriteError> {
        let mut c = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(self.err())?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut c)
                    .await
                    .map_err(self.err())?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Reads one cached context (raw bytes) and its revision, if present.
    pub async fn get_context(
        &self,
        key_prefix: &str,
        story_id: &str,
    ) -> Result<Option<(Vec<u8>, i64)>, WriteError> {
        let mut c = self.conn.clone();
        let (body, rev): (Option<Vec<u8>>, Option<i64>) = redis::cmd("MGET")
            .arg(context_key(key_prefix, story_id))
            .arg(rev_key(key_prefix, story_id))
            .query_async(&mut c)
            .await
            .map_err(self.err())?;
        Ok(body.zip(rev))
    }

    pub async fn ping(&self) -> Result<(), WriteError> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(self.err())?;
        Ok(())
    }
}

/// Where a context's revision is kept, next to it (not matched by `context:*`).
fn rev_key(prefix: &str, story_id: &str) -> String {
    format!("{prefix}context-rev:{story_id}")
}

/// Sets context and revision unless the stored revision is newer (or with `force`). An equal
/// revision is the same graph state, so rewriting it is harmless.
const PUT_IF_NEWER: &str = "local cur = tonumber(redis.call('GET', KEYS[2]) or '-1') \
    if ARGV[3] == '1' or cur <= tonumber(ARGV[2]) then \
      redis.call('SET', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[2]) return 1 end \
    return 0";

fn put(pipe: &mut redis::Pipeline, prefix: &str, ctx: &StoryContext, force: bool) {
    pipe.cmd("EVAL")
        .arg(PUT_IF_NEWER)
        .arg(2)
        .arg(context_key(prefix, &ctx.story_id))
        .arg(rev_key(prefix, &ctx.story_id))
        .arg(render(ctx))
        .arg(ctx.rev)
        .arg(if force { "1" } else { "0" })
        .ignore();
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("redis://:s3cret@host:6379"),
            "redis://***@host:6379"
        );
        assert_eq!(super::redact("redis://host:6379"), "redis://host:6379");
    }
}
