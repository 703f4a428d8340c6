//! The effective configuration: the compiled-in defaults, a config file merged over them,
//! then env overrides; every value with the layer it came from (`projector config show`).
//!
//! A file needs only the keys it changes: tables merge key by key, any other value (an array
//! such as `[[streams]]` included) replaces the default whole, so a file that lists streams
//! lists all of them (a half-merged stream list would be impossible to read back).

use crate::config::{Config, ConfigError, DEFAULT_TOML};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Where a value of the effective config came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Default,
    File,
    /// An environment variable, by name.
    Env(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File => write!(f, "file"),
            Source::Env(v) => write!(f, "env {v}"),
        }
    }
}

/// One key of the effective config (`nats.url`, `streams`), its value as TOML text with
/// secrets redacted, and its source.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub source: Source,
}

/// Optional keys and what their absence means.
const IMPLICIT: [(&str, &str); 5] = [
    ("nats.tls_required", "false"),
    ("nats.user", "(unset)"),
    ("nats.password", "(unset)"),
    ("nats.token", "(unset)"),
    ("nats.creds_file", "(unset)"),
];

/// Keys whose values are never printed.
const SECRETS: [&str; 3] = ["nats.password", "nats.token", "neo4j.password"];

/// The redacted form of a value: secrets become `<redacted>`, and a URL's password
/// (`scheme://user:secret@host`) loses the secret.
pub fn redact(key: &str, value: &str) -> String {
    if SECRETS.contains(&key) {
        return if value.is_empty() || value == "\"\"" {
            value.into()
        } else {
            "<redacted>".into()
        };
    }
    let mut out = String::new();
    for part in value.split(',') {
        if !out.is_empty() {
            out.push(',');
        }
        match (part.find("://"), part.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let auth = &part[s + 3..at];
                match auth.split_once(':') {
                    Some((user, _)) => out.push_str(&format!(
                        "{}{user}:<redacted>{}",
                        &part[..s + 3],
                        &part[at..]
                    )),
                    None => out.push_str(part),
                }
            }
            _ => out.push_str(part),
        }
    }
    out
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Dotted keys of the leaves of `t`; an array of tables (`[[streams]]`) is walked item by
/// item (`streams[0].name`), so every printed value stays short.
fn leaves(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => leaves(&key, sub, out),
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_table()) =>
            {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(sub) = item {
                        leaves(&format!("{key}[{i}]"), sub, out);
                    }
                }
            }
            other => out.push((key, other.clone())),
        }
    }
}

fn parse(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Invalid {
            origin: origin.to_string(),
            message: e.to_string(),
        })
}

/// Loads the effective config and the source of each of its keys.
pub fn load(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<(Config, Vec<Entry>), ConfigError> {
    let mut merged = parse(DEFAULT_TOML, "built-in config/projector.toml")?;
    let (file, origin) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?;
            let origin = p.display().to_string();
            (parse(&text, &origin)?, origin)
        }
        None => (toml::Table::new(), "built-in config/projector.toml".into()),
    };
    let mut from_file = Vec::new();
    leaves("", &file, &mut from_file);
    merge(&mut merged, file);
    let mut cfg = Config::from_table(merged.clone(), &origin)?;
    let overridden = cfg.apply_env(env);

    let mut all = Vec::new();
    leaves("", &merged, &mut all);
    let mut entries: Vec<Entry> = all
        .into_iter()
        .map(|(key, v)| {
            let source = if from_file.iter().any(|(k, _)| *k == key) {
                Source::File
            } else {
                Source::Default
            };
            Entry {
                value: redact(&key, &v.to_string()),
                key,
                source,
            }
        })
        .collect();
    // Keys the built-in file leaves out (commented or optional): shown with the value the
    // code takes for them, so the listing is the whole config.
    for (key, value) in IMPLICIT {
        if !entries.iter().any(|e| e.key == *key) {
            entries.push(Entry {
                key: key.to_string(),
                value: value.to_string(),
                source: Source::Default,
            });
        }
    }
    for (key, var) in overridden {
        let value = env_value(&cfg, key);
        let value = redact(key, &toml::Value::String(value).to_string());
        match entries.iter_mut().find(|e| e.key == key) {
            Some(e) => {
                e.value = value;
                e.source = Source::Env(var.into());
            }
            None => entries.push(Entry {
                key: key.into(),
                value,
                source: Source::Env(var.into()),
            }),
        }
    }
    // By section, keeping the walk's order inside one (array items by index, not `[10]`
    // before `[2]`); a key only the env set lands at the end of its section.
    let section = |k: &str| k.split(['.', '[']).next().unwrap_or("").to_string();
    entries.sort_by_key(|e| section(&e.key));
    Ok((cfg, entries))
}

/// The value an env override left at `key`.
fn env_value(cfg: &Config, key: &str) -> String {
    // An override that is not set shows as empty: nothing came from the environment.
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    match key {
        "nats.url" => cfg.nats.url.clone(),
        "nats.user" => o(&cfg.nats.user),
        "nats.password" => o(&cfg.nats.password),
        "nats.token" => o(&cfg.nats.token),
        "nats.creds_file" => o(&cfg.nats.creds_file),
        "neo4j.uri" => cfg.neo4j.uri.clone(),
        "neo4j.user" => cfg.neo4j.user.clone(),
        "neo4j.password" => cfg.neo4j.password.clone(),
        "valkey.url" => cfg.valkey.url.clone(),
        other => format!("(no value for {other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "projector-effective-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_file_with_one_key_is_merged_over_the_defaults() {
        let p = file("subject_prefix = \"x.\"\n[neo4j]\npassword = \"hunter2\"\n");
        let env = BTreeMap::from([("NATS_URL".to_string(), "nats://u:pw@h:1".to_string())]);
        let (cfg, entries) = load(Some(&p), &env).unwrap();
        assert_eq!(cfg.subject_prefix, "x.");
        assert_eq!(cfg.neo4j.uri, "bolt://127.0.0.1:7687");
        assert_eq!(cfg.streams.len(), 5);
        let get = |k: &str| entries.iter().find(|e| e.key == k).unwrap().clone();
        assert_eq!(get("subject_prefix").source, Source::File);
        assert_eq!(get("neo4j.uri").source, Source::Default);
        assert_eq!(get("streams[0].name").value, "\"PLANNING_EVENTS\"");
        assert_eq!(get("neo4j.password").value, "<redacted>");
        assert_eq!(get("nats.url").source, Source::Env("NATS_URL".into()));
        assert_eq!(get("nats.url").value, "\"nats://u:<redacted>@h:1\"");
        let all = format!("{entries:?}");
        assert!(!all.contains("hunter2") && !all.contains("pw@"), "{all}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_still_refused() {
        let p = file("[nats]\nurll = \"nats://x\"\n");
        let e = load(Some(&p), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("urll"), "{e}");
    }
}
