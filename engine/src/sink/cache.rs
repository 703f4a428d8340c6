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
    /// For connections of their own (the change feed's blocking reads).
    client: redis::Client,
    url: String,
    prefix: String,
    changelog: Caps,
}

/// How long the changelog (`{prefix}projector:changes`) grows: at most `max_len` entries,
/// and none older than `max_age_ms` (0: no age limit).
#[derive(Debug, Clone, Copy)]
struct Caps {
    max_len: u64,
    max_age_ms: u64,
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
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(err)?;
        Ok(CacheSink {
            conn,
            client,
            url: redact(&cfg.url),
            prefix: cfg.key_prefix.clone(),
            changelog: Caps {
                max_len: cfg.changelog_max_len,
                max_age_ms: cfg.changelog_max_age.as_millis() as u64,
            },
        })
    }

    /// The changelog of the live generation's views: a Valkey stream written in the same
    /// MULTI as the contexts it reports (`crate::feed`).
    pub fn changelog_key(&self) -> String {
        format!("{}projector:changes", self.prefix)
    }

    /// The Valkey checkpoint keys of a generation start with this.
    pub fn checkpoint_prefix(&self, gen: &str) -> String {
        format!("{}projector:checkpoint:{gen}:", self.prefix)
    }

    /// The shared connection (multiplexed, reconnecting; 10 s response timeout).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own without a response timeout, for blocking reads (`XREAD
    /// BLOCK`), which would hold up every other command on the shared one.
    pub async fn blocking_connection(
        &self,
    ) -> Result<redis::aio::MultiplexedConnection, WriteError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(self.err())
    }

    /// Redacted URL, for errors of callers using [`CacheSink::conn`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Appends a generation switch to the changelog: feed clients are told to read every
    /// view again (their revisions start over in the new generation).
    pub async fn log_generation(&self, gen: &str) -> Result<(), WriteError> {
        let mut c = self.conn.clone();
        let _id: String = redis::cmd("XADD")
            .arg(self.changelog_key())
            .arg("MAXLEN")
            .arg(self.changelog.max_len)
            .arg("*")
            .arg("kind")
            .arg("generation")
            .arg("gen")
            .arg(gen)
            .query_async(&mut c)
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// Only the live generation's contexts (under the bare prefix) feed the changelog.
    fn log_for(&self, key_prefix: &str, gen: &str) -> Option<Log> {
        (key_prefix == self.prefix).then(|| Log {
            key: self.changelog_key(),
            gen: gen.to_string(),
            caps: self.changelog,
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
        let log = self.log_for(key_prefix, gen);
        for ctx in contexts {
            put(&mut pipe, key_prefix, ctx, force, log.as_ref());
        }
        for (ckpt, seq) in ckpts {
            pipe.set(self.checkpoint_key(gen, ckpt), *seq).ignore();
        }
        let mut c = self.conn.clone();
        let () = pipe.query_async(&mut c).await.map_err(self.err())?;
        Ok(())
    }

    /// Writes contexts of generation `gen` without touching any checkpoint (dead-letter
    /// retries, repairs, the re-render after a switch).
    pub async fn put_contexts(
        &self,
        gen: &str,
        key_prefix: &str,
        contexts: &[StoryContext],
        force: bool,
    ) -> Result<(), WriteError> {
        if contexts.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let log = self.log_for(key_prefix, gen);
        for ctx in contexts {
            put(&mut pipe, key_prefix, ctx, force, log.as_ref());
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

/// Where a context's section digests are kept (`projections::sections`).
fn sections_key(prefix: &str, story_id: &str) -> String {
    format!("{prefix}context-sections:{story_id}")
}

/// The changelog a live write appends to.
struct Log {
    key: String,
    gen: String,
    caps: Caps,
}

/// Sets context and revision unless the stored revision is newer (or with `force`). An equal
/// revision is the same graph state, so rewriting it is harmless.
///
/// With a changelog (`ARGV[4]` = 1), a write at a newer revision also appends a `change`
/// entry naming the sections whose digest moved (from an empty view's, for a first render):
/// in the same script, so inside the same MULTI as the context and the checkpoints, never
/// without them, never twice for one revision. The digests hash also keeps the generation
/// (`gen`) that wrote them. A forced write appends only when that generation wrote the
/// cached revision: the repair after a crash between the Neo4j commit and this step renders
/// the same generation at a newer revision, and its changes must reach the feed; a
/// generation switch renders another generation's revisions, which the `generation` marker
/// announces instead (D68). An equal revision appends nothing. Trimming is exact
/// (`MAXLEN =`, `MINID =`), so the oldest position still held is plain.
const PUT_IF_NEWER: &str = "local cur = tonumber(redis.call('GET', KEYS[2]) or '-1') \
    local rev = tonumber(ARGV[2]) \
    if ARGV[3] ~= '1' and cur > rev then return 0 end \
    redis.call('SET', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[2]) \
    if ARGV[4] ~= '1' then return 1 end \
    local names = {'story', 'phase', 'plans', 'approvals', 'tasks', 'decisions', 'milestones'} \
    local old = redis.call('HMGET', KEYS[3], unpack(names)) \
    local same_gen = redis.call('HGET', KEYS[3], 'gen') == ARGV[6] \
    local what, set = {}, {'gen', ARGV[6]} \
    for i, n in ipairs(names) do \
      if (old[i] or ARGV[16 + i]) ~= ARGV[9 + i] then table.insert(what, n) end \
      table.insert(set, n) table.insert(set, ARGV[9 + i]) end \
    redis.call('HSET', KEYS[3], unpack(set)) \
    if cur >= rev then return 1 end \
    if ARGV[3] == '1' and not same_gen then return 1 end \
    redis.call('XADD', KEYS[4], 'MAXLEN', '=', ARGV[8], '*', 'kind', 'change', 'story', ARGV[5], \
      'rev', ARGV[2], 'what', table.concat(what, ','), 'ts', ARGV[7], 'gen', ARGV[6]) \
    if ARGV[9] ~= '0' then \
      local t = redis.call('TIME') \
      local min = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[9]) \
      redis.call('XTRIM', KEYS[4], 'MINID', '=', string.format('%d', min)) end \
    return 1";

fn put(
    pipe: &mut redis::Pipeline,
    prefix: &str,
    ctx: &StoryContext,
    force: bool,
    log: Option<&Log>,
) {
    let cmd = pipe
        .cmd("EVAL")
        .arg(PUT_IF_NEWER)
        .arg(4)
        .arg(context_key(prefix, &ctx.story_id))
        .arg(rev_key(prefix, &ctx.story_id))
        .arg(sections_key(prefix, &ctx.story_id))
        .arg(log.map_or_else(|| format!("{prefix}projector:changes"), |l| l.key.clone()))
        .arg(render(ctx))
        .arg(ctx.rev)
        .arg(if force { "1" } else { "0" })
        .arg(if log.is_some() { "1" } else { "0" })
        .arg(&ctx.story_id)
        .arg(log.map_or("", |l| l.gen.as_str()))
        .arg(ctx.event_time_ms)
        .arg(log.map_or(0, |l| l.caps.max_len))
        .arg(log.map_or(0, |l| l.caps.max_age_ms));
    if log.is_some() {
        for d in projections::sections::digests(ctx) {
            cmd.arg(d);
        }
        // A story's first render compares with an empty view: `what` names what it has.
        static EMPTY: std::sync::OnceLock<[String; 7]> = std::sync::OnceLock::new();
        for d in EMPTY.get_or_init(projections::sections::empty_digests) {
            cmd.arg(d);
        }
    }
    cmd.ignore();
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
