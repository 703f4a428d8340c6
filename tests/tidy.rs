//! Tidy tests (rust-analyzer's model): plain tests that read the source tree and fail, with a
//! `file:line` list, when an invariant written in docs/architecture.md or the project's
//! standards breaks. No servers. Add a check as one more `#[test]` using the helpers below.

use std::path::{Path, PathBuf};

/// Files being split right now, exempt from the size and silent-drop checks until they are.
/// The lead empties this list; `no_source_file_over_600_lines` says when an entry is stale.
const PENDING: &[&str] = &[];

/// The source folders of the engine, the replay crate and the binary.
const RUST_DIRS: &[&str] = &["engine/src", "replay/src", "src"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file below `dir` (relative to the repository), sorted, with its text; the
/// paths are relative to the repository, with `/` separators.
fn rust_files(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("readable directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text =
                    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                let rel = p
                    .strip_prefix(root)
                    .expect("below the repository")
                    .to_path_buf();
                out.push((rel, text));
            }
        }
    }
    let root = repo();
    let mut out = Vec::new();
    walk(&root, &root.join(dir), &mut out);
    out
}

/// The files of [`RUST_DIRS`] that are not [`PENDING`].
fn checked_files() -> Vec<(PathBuf, String)> {
    RUST_DIRS
        .iter()
        .flat_map(|d| rust_files(d))
        .filter(|(p, _)| !PENDING.contains(&slashed(p).as_str()))
        .collect()
}

fn slashed(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

/// The lines (1-based number, text) outside `#[cfg(test)]` items: the attribute, and the
/// item after it up to its closing brace (or its `;`), are skipped.
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push((i + 1, line));
            continue;
        }
        // Skip the item: until the braces it opens close, or a `;` before any brace.
        let mut depth = 0i64;
        let mut opened = false;
        for (_, l) in lines.by_ref() {
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// Fails with the list when it is not empty.
fn assert_none(what: &str, found: &[String]) {
    assert!(
        found.is_empty(),
        "{what}:\n  {}\n({} found)",
        found.join("\n  "),
        found.len()
    );
}

#[test]
fn projections_has_no_io_dependency() {
    const CRATES: &[&str] = &[
        "tokio",
        "async-nats",
        "neo4rs",
        "redis",
        "reqwest",
        "hyper",
        "axum",
        "rand",
    ];
    const USES: &[&str] = &[
        "std::net",
        "std::fs",
        "std::time::SystemTime",
        "SystemTime::now",
        "Instant::now",
        "rand::",
        "tokio::",
    ];
    let mut found = Vec::new();
    let manifest = std::fs::read_to_string(repo().join("projections/Cargo.toml")).unwrap();
    let mut in_deps = false;
    for (i, line) in manifest.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_deps = t == "[dependencies]";
            continue;
        }
        let name = t.split(['=', '.', ' ']).next().unwrap_or("").trim();
        if in_deps && CRATES.contains(&name) {
            found.push(format!("projections/Cargo.toml:{}: {t}", i + 1));
        }
    }
    for (path, text) in rust_files("projections/src") {
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if let Some(u) = USES.iter().find(|u| code.contains(*u)) {
                found.push(format!("{}:{}: {u}: {}", slashed(&path), n + 1, code));
            }
        }
    }
    assert_none(
        "projections is pure (docs/architecture.md): no I/O, clock or randomness",
        &found,
    );
}

#[test]
fn no_source_file_over_600_lines() {
    const MAX: usize = 600;
    let mut found: Vec<String> = checked_files()
        .iter()
        .filter(|(_, text)| text.lines().count() > MAX)
        .map(|(p, text)| format!("{}: {} lines", slashed(p), text.lines().count()))
        .collect();
    for p in PENDING {
        match std::fs::read_to_string(repo().join(p)) {
            Err(_) => found.push(format!("{p}: in PENDING but gone; remove it from PENDING")),
            Ok(t) if t.lines().count() <= MAX => found.push(format!(
                "{p}: {} lines, in PENDING; remove it from PENDING",
                t.lines().count()
            )),
            Ok(_) => {}
        }
    }
    assert_none(
        &format!("source files over {MAX} lines (split them by what they do)"),
        &found,
    );
}

/// Acknowledgements happen in one module, after the commit (docs/architecture.md, engine
/// invariants): an ack written anywhere else could run before the effects are committed.
#[test]
fn acks_only_in_the_ack_module() {
    const ACKS: &[&str] = &[".ack()", "double_ack", "ack_with(", "AckKind::", ".nak("];
    const ACK_MODULE: &str = "engine/src/worker/ack.rs";
    let mut found = Vec::new();
    for (path, text) in checked_files() {
        if slashed(&path) == ACK_MODULE {
            continue;
        }
        for (n, line) in non_test_lines(&text) {
            if let Some(a) = ACKS.iter().find(|a| line.contains(*a)) {
                found.push(format!("{}:{n}: {a}: {}", slashed(&path), line.trim()));
            }
        }
    }
    assert!(
        std::fs::read_to_string(repo().join(ACK_MODULE)).is_ok_and(|t| t.contains("double_ack")),
        "{ACK_MODULE} is where messages are acked"
    );
    assert_none(&format!("acknowledgements outside {ACK_MODULE}"), &found);
}

#[test]
fn fallible_calls_are_not_silently_dropped() {
    const DROPS: &[&str] = &["let _ =", ".ok()", "unwrap_or(", "unwrap_or_default("];
    let mut found = Vec::new();
    for (path, text) in checked_files() {
        let lines = non_test_lines(&text);
        for (k, (n, line)) in lines.iter().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let Some(d) = DROPS.iter().find(|d| code.contains(*d)) else {
                continue;
            };
            let above = k
                .checked_sub(1)
                .map(|j| lines[j])
                .filter(|(m, _)| m + 1 == *n)
                .is_some_and(|(_, l)| l.trim_start().starts_with("//"));
            if !code.contains("//") && !above {
                found.push(format!("{}:{n}: {d}: {}", slashed(&path), code.trim_end()));
            }
        }
    }
    assert_none(
        "a dropped error or a default without a comment (`//` on the line or the line above) saying why losing it is right",
        &found,
    );
}

#[test]
fn non_test_lines_skips_test_modules_and_items() {
    let text = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn b() { x.ok(); }\n}\nfn c() {}\n#[cfg(test)]\nmod more;\nfn d() {}\n";
    let kept: Vec<usize> = non_test_lines(text).iter().map(|(n, _)| *n).collect();
    assert_eq!(kept, vec![1, 6, 9]);
}

/// The Bolt sockets are opened with TCP_NODELAY (D77): without it every request over
/// neo4rs's 8 KiB write buffer (the batch statement is ~22 KB) waited ~40 ms on the server's
/// delayed ACK. The option comes from the vendored neo4rs, so a re-vendoring that drops the
/// line, or a Cargo.toml that stops patching neo4rs, would bring the stall back unseen.
#[test]
fn the_bolt_sockets_set_tcp_nodelay() {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let patch = manifest
        .split("[patch.crates-io]")
        .nth(1)
        .expect("Cargo.toml patches crates-io (vendor/neo4rs)");
    assert!(
        patch.contains("neo4rs = { path = \"vendor/neo4rs\" }"),
        "neo4rs is not patched to vendor/neo4rs: {patch}"
    );
    let conn = std::fs::read_to_string(repo().join("vendor/neo4rs/src/connection.rs"))
        .expect("vendor/neo4rs/src/connection.rs");
    let prepare = conn
        .split("fn prepare(")
        .nth(1)
        .expect("neo4rs's Connection::prepare");
    let body = prepare
        .split("\n    }\n")
        .next()
        .expect("split yields a first part");
    assert!(
        body.contains("set_nodelay(true)?"),
        "Connection::prepare no longer sets TCP_NODELAY (D77)"
    );
}
