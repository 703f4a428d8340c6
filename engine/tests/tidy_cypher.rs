//! Tidy test (rust-analyzer's model): every Cypher statement lives in
//! `engine/src/sink/cypher.rs` (docs/architecture.md), so a reader finds all of them in one
//! file and nothing else builds queries from event data. It scans the string literals of
//! `engine/src`, `replay/src` and `src` (comments and doc comments are not code) and fails
//! naming `file:line` for each literal that reads like Cypher.

use std::path::{Path, PathBuf};

/// Fragments no ordinary message or format string holds: upper-case Cypher clauses with
/// the punctuation that follows them in a statement.
const CYPHER: [&str; 12] = [
    "MATCH (",
    "MERGE (",
    "CREATE (",
    "UNWIND $",
    "DETACH DELETE",
    "CREATE CONSTRAINT",
    "CREATE INDEX",
    "DROP INDEX",
    "DROP CONSTRAINT",
    "RETURN ",
    "CALL {",
    "WITH n LIMIT",
];

/// The one file allowed to hold Cypher text.
const HOME: &str = "engine/src/sink/cypher.rs";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The string literals of a Rust source, with the line each starts on. Skips line, block
/// and doc comments and char literals; reads plain, byte and raw (`r#"..."#`) strings.
fn literals(src: &str) -> Vec<(usize, String)> {
    let b = src.as_bytes();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(b[i] == b'\n');
                        i += 1;
                    }
                }
            }
            // A char literal ('"', '\'', 'x') or a lifetime ('a): skip the quote's content.
            b'\'' => {
                if b.get(i + 1) == Some(&b'\\') {
                    i += 3;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let start = j + 1;
                let end = b[start..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| start + p);
                let text = &src[start..end];
                out.push((line, text.to_string()));
                line += text.matches('\n').count();
                i = end + close.len();
            }
            b'"' => {
                let (start, mut j) = (line, i + 1);
                let mut text = String::new();
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' {
                        j += 1;
                    }
                    if j < b.len() {
                        line += usize::from(b[j] == b'\n');
                        text.push(b[j] as char);
                    }
                    j += 1;
                }
                out.push((start, text));
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    out
}

fn offenders(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["engine/src", "replay/src", "src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut found = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == HOME {
            continue;
        }
        let src = std::fs::read_to_string(&f).unwrap();
        for (line, text) in literals(&src) {
            if let Some(k) = CYPHER.iter().find(|k| text.contains(*k)) {
                found.push(format!("{rel}:{line}: Cypher ({k:?}) outside {HOME}"));
            }
        }
    }
    found
}

#[test]
fn cypher_text_lives_only_in_cypher_rs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let found = offenders(root);
    assert!(
        found.is_empty(),
        "move these statements into {HOME} as named constants or functions:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_sees_literals_and_skips_comments() {
    let src = "// MATCH (x) in a comment\n/// RETURN 1 in a doc\nlet c = '\"';\nlet a = \"MATCH (n) \\\n RETURN n\";\n/* MERGE (m) */ let b = r#\"UNWIND $rows\"#;\n";
    let lits = literals(src);
    let cypher: Vec<(usize, &str)> = lits
        .iter()
        .filter(|(_, t)| CYPHER.iter().any(|k| t.contains(k)))
        .map(|(l, t)| (*l, t.as_str()))
        .collect();
    assert_eq!(cypher.len(), 2, "{lits:?}");
    assert_eq!(cypher[0].0, 4);
    assert_eq!(cypher[1], (6, "UNWIND $rows"));
    // And the home file does hold statements (the test would pass vacuously otherwise).
    let home = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sink/cypher.rs");
    let home = std::fs::read_to_string(home).unwrap();
    assert!(literals(&home)
        .iter()
        .any(|(_, t)| t.contains("UNWIND $moves")));
}
