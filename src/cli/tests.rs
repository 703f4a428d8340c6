//! The clap definitions checked as a whole: consistent, every command with an example, global
//! flags apart, bad values refused at parse time.

use super::*;
use clap::CommandFactory;

fn leaves(c: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
    if c.get_subcommands().next().is_none() {
        out.push((path.clone(), c.clone()));
    }
    for s in c.get_subcommands() {
        leaves(s, format!("{path} {}", s.get_name()), out);
    }
}

#[test]
fn clap_definitions_are_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_subcommand_help_has_an_example() {
    let mut out = Vec::new();
    leaves(&Cli::command(), "projector".into(), &mut out);
    assert!(out.len() > 20, "{}", out.len());
    for (path, mut c) in out {
        let help = c.render_long_help().to_string();
        assert!(
            help.contains("Example"),
            "{path} --help has no example:\n{help}"
        );
    }
}

#[test]
fn global_flags_are_listed_once_under_their_own_heading() {
    let mut c = Cli::command();
    c.build();
    let tasks = c
        .find_subcommand_mut("query")
        .unwrap()
        .find_subcommand_mut("tasks")
        .unwrap();
    let help = tasks.render_help().to_string();
    let (own, global) = help.split_once("Global options:").expect(&help);
    assert!(!own.contains("--log-level"), "{help}");
    assert!(
        global.contains("--log-level") && global.contains("--config"),
        "{help}"
    );
    assert_eq!(help.matches("--log-level").count(), 1, "{help}");
}

#[test]
fn bad_flag_values_are_refused_at_parse_time() {
    for args in [
        &["projector", "--log-level", "loud", "streams", "status"][..],
        &["projector", "query", "tasks", "--status", "BOGUS"],
        &["projector", "query", "tasks", "--limit", "0"],
        &["projector", "query", "tasks", "--limit", "999999"],
        &["projector", "query", "decisions", "--offset", "-1"],
        &["projector", "query", "decisions", "--since", "yesterday"],
        &["projector", "run", "--metrics-addr", "localhost"],
        &["projector", "run", "--metrics-addr", ""],
    ] {
        let e = Cli::try_parse_from(args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{args:?}");
    }
    assert!(Cli::try_parse_from(["projector", "query", "tasks", "--limit", "10000"]).is_ok());
    assert!(Cli::try_parse_from(["projector", "run", "--metrics-addr", "off"]).is_ok());
    assert!(Cli::try_parse_from(["projector", "run", "--metrics-addr", "[::1]:9464"]).is_ok());
}
