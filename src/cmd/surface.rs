//! Commands about the CLI itself: `completions`, `man`, `config show`. They need no servers.

use super::CliError;
use crate::cli::{Cli, ConfigCommand};
use clap::CommandFactory;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

/// `projector completions <shell>`: the script clap_complete derives from `crate::cli`.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "projector", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `projector man`: the top page on stdout, or with `out_dir` every page (one per
/// subcommand, as cargo and git ship theirs), all from `crate::cli`.
pub fn man(out_dir: Option<&Path>) -> Result<ExitCode, CliError> {
    let cmd = Cli::command();
    let failed = |e: std::io::Error| CliError::Failed(format!("cannot write the man page: {e}"));
    match out_dir {
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout().lock())
            .map_err(failed)?,
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(failed)?;
            clap_mangen::generate_to(cmd, dir).map_err(failed)?;
            println!("man pages written to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `projector config show`: the effective config, each key with its source.
pub fn config(path: Option<&Path>, c: ConfigCommand) -> Result<ExitCode, CliError> {
    let ConfigCommand::Show { json } = c;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (_, entries) = engine::effective::load(path, &env)?;
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|e| {
                (
                    e.key.clone(),
                    serde_json::json!({"value": e.value, "source": e.source.to_string()}),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&obj).expect("serializable")
        );
    } else {
        print!(
            "{}",
            crate::fmt::table(
                &["KEY", "VALUE", "SOURCE"],
                entries
                    .iter()
                    .map(|e| vec![e.key.clone(), e.value.clone(), e.source.to_string()])
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}
