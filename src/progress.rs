//! Showing a build's progress (`rebuild`, `verify --against-rebuild`): a bar with events/s
//! and an ETA on a terminal, a plain line every few seconds otherwise, and with `--json` one
//! JSON object a line on stderr (stdout keeps the command's one result object).

use engine::config::Config;
use indicatif::{ProgressBar, ProgressStyle};
use replay::progress::{Report, Watch};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A running display; [`Shown::finish`] clears it.
pub struct Shown {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Shown {
    pub fn finish(self) {
        self.task.abort();
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// The text of one report, as plain lines show it.
pub fn line(r: &Report) -> String {
    replay::progress::summary(r)
}

/// Starts showing the progress of `projector`'s build into `generation`.
pub async fn show(
    cfg: &Config,
    projector: &str,
    generation: &str,
    json: bool,
) -> Result<Shown, crate::cmd::CliError> {
    let streams = cfg
        .projector(projector)
        .map(|p| p.streams.clone())
        // An unknown projector: the build itself refuses it; nothing to show.
        .unwrap_or_default();
    let client = engine::nats::connect(&cfg.nats).await?;
    let watch = Watch {
        graph: engine::sink::graph::GraphSink::for_config(cfg)?,
        js: async_nats::jetstream::new(client),
        projector: projector.to_string(),
        streams,
        generation: generation.to_string(),
    };
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} events  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(generation.to_string());
        b
    });
    let shown = bar.clone();
    let mut last_line: Option<Instant> = None;
    let every = if bar.is_some() {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };
    let task = watch.spawn(every, move |r| {
        if let Some(b) = &shown {
            b.set_length(r.expected);
            b.set_position(r.done);
            b.set_message(match r.eta_secs {
                Some(s) => format!("{:.0}/s  eta {}s", r.events_per_sec, s.ceil() as u64),
                None => "eta unknown".into(),
            });
        } else if json {
            eprintln!("{}", serde_json::json!({"progress": r}));
        } else if last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            last_line = Some(Instant::now());
            eprintln!("{}", line(&r));
        }
    });
    Ok(Shown { task, bar })
}
