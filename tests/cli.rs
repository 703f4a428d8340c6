//! The operator's surface (issue #19): flags validated at parse time, config files merged over
//! the defaults, one-line connection errors, colour only on a terminal, completions, the man
//! page, `--help` with examples, and `--json` on every command that reports something.

mod common;

use async_nats::jetstream;
use common::*;
use serde_json::Value;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_projector"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("projector runs")
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", stdout(o), stderr(o)))
}

#[test]
fn a_log_level_that_is_not_one_is_refused() {
    // On main `loud` was taken as a filter that enables nothing: every log line, the WARN
    // for a parked event included, was silenced.
    let t = TestConfig::new();
    let o = t.projector(&["--log-level", "loud", "streams", "status"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("invalid value 'loud'"),
        "{}",
        stderr(&o)
    );
    let o = run(bin()
        .env("PROJECTOR_LOG", "info,=nope=")
        .args(["bench", "gen", "--stories", "1"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("PROJECTOR_LOG"), "{}", stderr(&o));
}

#[test]
fn a_config_file_needs_only_the_keys_it_changes() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{}-partial.toml", tag()));
    std::fs::write(
        &path,
        "subject_prefix = \"x.\"\n[neo4j]\npassword = \"hunter2\"\n",
    )
    .unwrap();
    // A command that reads the config and needs no server (main: "missing field nats").
    let o = projector_with(&path, &["bench", "gen", "--stories", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = run(bin()
        .env("NATS_URL", "nats://operator:s3cret@nats.svc:4222")
        .env_remove("NEO4J_PASSWORD")
        .arg("--config")
        .arg(&path)
        .args(["config", "show", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["subject_prefix"]["source"], "file");
    assert_eq!(v["subject_prefix"]["value"], "\"x.\"");
    assert_eq!(v["neo4j.max_concurrent_writes"]["source"], "default");
    assert_eq!(v["nats.url"]["source"], "env NATS_URL");
    assert_eq!(v["neo4j.password"]["value"], "<redacted>");
    let all = stdout(&o);
    assert!(!all.contains("hunter2") && !all.contains("s3cret"), "{all}");
    // The table form says the same, with a header.
    let o = projector_with(&path, &["config", "show"]);
    let text = stdout(&o);
    assert!(text.starts_with("KEY"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn graph_write_cap_and_pool_size_out_of_range_are_bad_input() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // 0 used to run as 1; a pool no larger than the cap leaves no connection for reads.
    for (text, says) in [
        (
            "[neo4j]\nmax_concurrent_writes = 0\n",
            "[neo4j] max_concurrent_writes = 0 (use 1 to 511",
        ),
        (
            "[neo4j]\nmax_concurrent_writes = 4\nmax_connections = 4\n",
            "[neo4j] max_connections = 4 (use 5 to 512",
        ),
    ] {
        let path = dir.join(format!("{}-neo4j.toml", tag()));
        std::fs::write(&path, text).unwrap();
        let o = projector_with(&path, &["config", "show"]);
        assert_eq!(o.status.code(), Some(2), "{text}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(says), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let path = dir.join(format!("{}-pool.toml", tag()));
    std::fs::write(&path, "[neo4j]\nmax_connections = 32\n").unwrap();
    let o = projector_with(&path, &["config", "show", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["neo4j.max_connections"]["value"], "32");
    assert_eq!(v["neo4j.max_connections"]["source"], "file");
}

#[test]
fn list_filters_are_checked_before_anything_runs() {
    let t = TestConfig::new();
    for args in [
        &["query", "tasks", "--status", "BOGUS"][..],
        &["query", "tasks", "--limit", "0"],
        &["query", "tasks", "--limit", "999999"],
        &["query", "approvals", "--offset", "-5"],
    ] {
        let o = t.projector(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }
}

#[test]
fn a_nats_url_that_is_not_one_is_bad_input() {
    let t = TestConfig::new();
    let o = run(bin()
        .env("NATS_URL", "not a url")
        .arg("--config")
        .arg(&t.path)
        .args(["streams", "status"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("bad URL"), "{e}");
    assert!(!e.contains("is the server up"), "{e}");
}

#[test]
fn tls_against_a_plain_server_says_the_server_has_no_tls() {
    let t = TestConfig::with(|s| {
        s.replace(
            "connect_timeout = \"5s\"",
            "connect_timeout = \"5s\"\ntls_required = true",
        )
    });
    let o = t.projector(&["streams", "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("the server does not speak TLS"), "{e}");
    assert!(!e.contains("InvalidContentType"), "{e}");
}

#[test]
fn completions_source_cleanly_in_bash() {
    let o = run(bin().args(["completions", "bash"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let script = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-completion.bash", tag()));
    std::fs::write(&script, &o.stdout).unwrap();
    let b = run(Command::new("bash").arg("-c").arg(format!(
        "set -e; source {}; complete -p projector",
        script.display()
    )));
    assert!(b.status.success(), "{}\n{}", stdout(&b), stderr(&b));
    assert!(stdout(&b).contains("projector"), "{}", stdout(&b));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = run(bin().args(["completions", shell]));
        assert!(o.status.success() && !o.stdout.is_empty(), "{shell}");
    }
}

fn man(page: &std::path::Path) -> String {
    let m = run(Command::new("man")
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .arg("-l")
        .arg(page));
    assert!(m.status.success(), "{}", stderr(&m));
    assert!(!stderr(&m).contains("warning"), "{}", stderr(&m));
    stdout(&m)
}

#[test]
fn the_man_pages_render() {
    let o = run(bin().arg("man"));
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-man", tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let top = dir.join("stdout.1");
    std::fs::write(&top, &o.stdout).unwrap();
    let text = man(&top);
    for want in [
        "SYNOPSIS",
        "--log-level",
        "GLOBAL OPTIONS",
        "query",
        "completions",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let o = run(bin().args(["man", "--out-dir"]).arg(&dir));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = man(&dir.join("projector-query-tasks.1"));
    for want in ["--status", "--offset", "Examples:"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
}

#[test]
fn help_teaches_and_lists_global_flags_apart() {
    let o = run(bin().args(["query", "--help"]));
    assert!(!stdout(&o).contains("more views to come"), "{}", stdout(&o));
    let o = run(bin().args(["query", "tasks", "--help"]));
    let help = stdout(&o);
    assert!(help.contains("Examples:"), "{help}");
    let (own, global) = help.split_once("Global options:").expect(&help);
    assert!(
        own.contains("--status") && !own.contains("--log-format"),
        "{help}"
    );
    assert!(global.contains("--log-format"), "{help}");
}

#[test]
fn logs_carry_colour_only_on_a_terminal() {
    let t = TestConfig::new();
    // stderr is a pipe here: plain text.
    let o = run(bin()
        .env("PROJECTOR_LOG", "debug")
        .env_remove("NO_COLOR")
        .arg("--config")
        .arg(&t.path)
        .args(["streams", "status"]));
    let e = stderr(&o);
    assert!(!e.is_empty(), "no log lines to look at");
    assert!(!e.contains('\u{1b}'), "colour codes in a pipe:\n{e}");
    // Log timestamps have the CLI's one format: 2026-02-01T10:01:27.150Z.
    let first = e.lines().next().unwrap();
    let ts = first.split_whitespace().next().unwrap();
    assert_eq!(ts.len(), 24, "{first}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{first}");

    // On a terminal (script(1) gives one): colour, unless NO_COLOR says otherwise.
    let on_tty = |no_color: bool| {
        let cmd = format!(
            "{} PROJECTOR_LOG=debug {} --config {} streams status",
            if no_color { "NO_COLOR=1" } else { "" },
            env!("CARGO_BIN_EXE_projector"),
            t.path.display()
        );
        let o =
            run(Command::new("script")
                .env_remove("NO_COLOR")
                .args(["-qec", &cmd, "/dev/null"]));
        stdout(&o)
    };
    assert!(on_tty(false).contains('\u{1b}'), "no colour on a terminal");
    assert!(!on_tty(true).contains('\u{1b}'), "colour despite NO_COLOR");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_reporting_command_speaks_json() {
    let t = TestConfig::new();
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    t.publish(
        &js,
        &[
            (
                "planning.story.created",
                r#"{"story_id":"US-J","title":"json"}"#,
            ),
            // Undecodable: plan_id must be a string. Parked.
            (
                "planning.plan.approved",
                r#"{"story_id":"US-J","plan_id":7}"#,
            ),
        ],
    )
    .await;
    t.run_until_caught_up(&t.main_gen());

    let list = t.projector(&["dlq", "list"]);
    let text = stdout(&list);
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("1 parked event\n"), "{text}");
    let id = json(&t.projector(&["dlq", "list", "--json"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = json(&t.projector(&["dlq", "show", &id, "--json"]));
    assert_eq!(show["parked"]["id"], id.as_str());
    assert!(show["headers"].is_object(), "{show}");
    assert!(
        show["payload"].is_string() || show["payload_hex"].is_string(),
        "{show}"
    );
    let text = stdout(&t.projector(&["dlq", "show", &id]));
    assert!(text.starts_with("FIELD"), "{text}");
    assert!(text.contains("stream_time"), "{text}");
    let discard = json(&t.projector(&["dlq", "discard", &id, "--json"]));
    assert_eq!(discard["discarded"], 1, "{discard}");

    let planning = t.stream("PLANNING_EVENTS");
    let replay = t.projector(&["replay", "--from-seq", "1", "--stream", &planning, "--json"]);
    assert!(replay.status.success(), "{}", stderr(&replay));
    for line in stdout(&replay).lines() {
        let v: Value = serde_json::from_str(line).expect(line);
        assert_eq!(v["stream"], planning.as_str(), "{v}");
        assert_eq!(v["completed"], true, "{v}");
        assert_eq!(v["to_seq"], 2, "{v}");
    }

    let name = format!("{}-json", t.tag);
    let rebuild = t.projector(&["rebuild", "--name", &name, "--json"]);
    assert!(rebuild.status.success(), "{}", stderr(&rebuild));
    let r = json(&rebuild);
    assert_eq!(r["generation"], name.as_str());
    assert_eq!(r["live"], true);
    assert_eq!(r["stories"], 1);
    assert!(r["dropped_nodes"].as_u64().unwrap() > 0, "{r}");

    let gens = stdout(&t.projector(&["generations", "list"]));
    assert!(gens.starts_with("GENERATION"), "{gens}");
    let other = format!("{}-other", t.tag);
    t.run_until_caught_up(&other);
    let dropped = json(&t.projector(&["generations", "drop", &other, "--yes", "--json"]));
    assert_eq!(dropped["dropped"], other.as_str());
    assert!(dropped["nodes"].as_u64().unwrap() > 0, "{dropped}");
}
