//! `projector`: the command-line entry point. Thin glue over the `engine` and `replay` crates.

mod cli;
mod cmd;
mod fmt;
mod logging;
mod progress;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Like other Unix tools: `projector ... | head` ends quietly instead of panicking on EPIPE.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    if let Err(e) = logging::init(args.log_format, args.log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            // One line that says what went wrong and what to do; no backtrace.
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
