//! `projector verify [--against-rebuild]`.

use super::CliError;
use crate::cli::VerifyArgs;
use engine::config::Config;
use engine::sink::{cache::CacheSink, graph::GraphSink};
use std::process::ExitCode;

pub async fn run(cfg: &Config, a: VerifyArgs) -> Result<ExitCode, CliError> {
    let sink = GraphSink::for_config(cfg)?;
    super::known_generation(&sink, a.generation.as_deref()).await?;
    let gen = match a.generation {
        Some(g) => g,
        None => engine::generations::live(&sink).await?,
    };
    let d = replay::hash::graph_digest(&sink, &gen).await?;
    if !a.against_rebuild {
        let cache = CacheSink::connect(&cfg.valkey).await?;
        let live = engine::generations::live(&sink).await?;
        let (cache_keys, cache_hash) = cache
            .contexts_digest(&cache.gen_prefix(&gen, gen == live))
            .await?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"generation": gen, "hash": d.hash, "nodes": d.nodes, "relationships": d.relationships,
                                   "cache_keys": cache_keys, "cache_hash": cache_hash})
            );
        } else {
            println!(
                "generation {gen}: {} nodes, {} relationships, hash {}\ncache: {cache_keys} story contexts, hash {cache_hash}",
                d.nodes, d.relationships, d.hash
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Unique even for two verifications started in the same second.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        // A clock before 1970: the process id still tells two runs apart.
        .unwrap_or(0);
    let tmp = format!("verify-{}-{nanos}", std::process::id());
    // SIGINT/SIGTERM stop the build gracefully (it listens too); this flag only tells the
    // end that the comparison did not finish.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            engine::runner::shutdown_signal().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let result = compare_with_rebuild(cfg, &sink, &gen, &d.hash, &tmp, a.json).await;
    // The temporary generation and its durables go on every path: success, error, signal.
    let cleanup = drop_temporary(cfg, &sink, &tmp).await;
    watcher.abort();
    if let Err(e) = &cleanup {
        eprintln!("error: could not drop the temporary generation {tmp}: {e}; drop it with `projector generations drop {tmp} --yes`");
    }
    // Interrupted first: the build's own "run the same command to resume" is not meant
    // for verify, whose temporary generation is gone.
    if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        cleanup?;
        return Err(CliError::Failed(format!(
            "interrupted; the temporary generation {tmp} was dropped"
        )));
    }
    let (fresh, diffs) = result?;
    cleanup?;
    let same = fresh.hash == d.hash;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"generation": gen, "hash": d.hash, "nodes": d.nodes, "relationships": d.relationships,
                               "rebuild_hash": fresh.hash, "equal": same, "differences": diffs})
        );
    } else if same {
        println!(
            "generation {gen} equals a fresh rebuild: {} nodes, {} relationships, hash {}",
            d.nodes, d.relationships, d.hash
        );
    } else {
        println!(
            "generation {gen} DIFFERS from a fresh rebuild ({} vs {}):",
            d.hash, fresh.hash
        );
        for x in &diffs {
            println!("  {x}");
        }
    }
    Ok(if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn compare_with_rebuild(
    cfg: &Config,
    sink: &GraphSink,
    gen: &str,
    hash: &str,
    tmp: &str,
    json: bool,
) -> Result<(replay::hash::GraphDigest, Vec<String>), CliError> {
    let mut diffs = Vec::new();
    for p in &cfg.projectors {
        let shown = crate::progress::show(cfg, &p.name, tmp, json).await?;
        let built = replay::generation::build_generation(cfg, &p.name, tmp, None, 2000).await;
        shown.finish();
        built?;
    }
    let fresh = replay::hash::graph_digest(sink, tmp).await?;
    if fresh.hash != hash {
        let a_labels = replay::hash::label_digests(sink, gen).await?;
        let b_labels = replay::hash::label_digests(sink, tmp).await?;
        for (label, (n, h)) in &b_labels {
            match a_labels.get(label) {
                Some((_, g)) if g == h => {}
                Some((m, _)) => diffs.push(format!(
                    "{label}: {m} nodes in {gen}, {n} in the rebuild, contents differ"
                )),
                None => diffs.push(format!("{label}: none in {gen}, {n} in the rebuild")),
            }
        }
        for (label, (m, _)) in &a_labels {
            if !b_labels.contains_key(label) {
                diffs.push(format!("{label}: {m} nodes in {gen}, none in the rebuild"));
            }
        }
        // The nodes themselves, named (first few per label), with their differing properties.
        let named = replay::hash::node_differences(sink, gen, tmp).await?;
        let any_named = !named.is_empty();
        diffs.extend(named.into_iter().map(|d| d.replace(tmp, "the rebuild")));
        if !any_named {
            diffs.push("relationships differ".into());
        }
    }
    Ok((fresh, diffs))
}

/// Drops verify's temporary generation and any durable made for it.
async fn drop_temporary(cfg: &Config, sink: &GraphSink, tmp: &str) -> Result<(), CliError> {
    let client = engine::nats::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(client);
    for p in &cfg.projectors {
        engine::source::delete_generation_consumers(
            &js,
            &p.name,
            tmp,
            &p.streams,
            cfg.partitions.count,
        )
        .await?;
    }
    let cache = CacheSink::connect(&cfg.valkey).await?;
    engine::generations::drop_generation(sink, &cache, tmp).await?;
    Ok(())
}
