//! tracing setup: human-readable by default, JSON lines with `--log-format json`.
//!
//! Colour only when stderr is a terminal and `NO_COLOR` is unset (no-color.org): a log file
//! or a pipe gets plain text. Timestamps use the CLI's one format (`fmt::timestamp_ms`).

use crate::cli::{LogFormat, LogLevel};
use std::io::IsTerminal;
use tracing_subscriber::fmt::{format::Writer, time::FormatTime};
use tracing_subscriber::EnvFilter;

/// RFC 3339, UTC, milliseconds: the same fixed width as every timestamp the CLI prints.
struct Millis;

impl FormatTime for Millis {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            // A clock before 1970 is a broken host; the log line is still worth writing.
            .unwrap_or(0);
        write!(w, "{}", crate::fmt::timestamp_ms(ms))
    }
}

/// Whether to write colour codes: a terminal, and nobody asked for none.
pub fn colour(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the subscriber. `Err`: `PROJECTOR_LOG` is set but is not a filter (bad input).
pub fn init(format: LogFormat, level: LogLevel) -> Result<(), String> {
    let filter = match std::env::var("PROJECTOR_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::builder().parse(&v).map_err(|e| {
            format!("PROJECTOR_LOG={v:?} is not a log filter ({e}); e.g. info,engine::worker=debug")
        })?,
        _ => EnvFilter::new(format!("{},neo4rs=warn,async_nats=warn", level.as_str())),
    };
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(Millis)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.compact().init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".into())));
        // no-color.org: an empty NO_COLOR does not count.
        assert!(colour(true, Some("".into())));
    }
}
