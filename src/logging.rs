//! tracing setup: human-readable by default, JSON lines with `--log-format json`.

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_env("PROJECTOR_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},neo4rs=warn,async_nats=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.compact().init(),
    }
}
