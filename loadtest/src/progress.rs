//! Showing progress: indicatif bars on a terminal, plain log lines otherwise (a Job's
//! log, a CI run), at most every progress interval.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
pub struct Display {
    multi: Option<MultiProgress>,
    log_every: Duration,
}

impl Display {
    /// Bars when stderr is a terminal, log lines every `log_every` otherwise.
    pub fn new(log_every: Duration) -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
        Display { multi, log_every }
    }

    /// The progress interval.
    pub fn interval(&self) -> Duration {
        self.log_every
    }

    /// True when drawing bars.
    pub fn is_terminal(&self) -> bool {
        self.multi.is_some()
    }

    /// A bar (or a log line source) counting up to `total`.
    pub fn bar(&self, label: &str, total: u64) -> Bar {
        let pb = self.multi.as_ref().map(|m| {
            let pb = m.add(ProgressBar::new(total));
            let style = ProgressStyle::with_template(
                "{prefix:>22} [{bar:40.cyan/blue}] {pos:>10}/{len:10} {elapsed:>4} {msg}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            pb.set_style(style);
            pb.set_prefix(label.to_string());
            pb
        });
        Bar {
            pb,
            label: label.to_string(),
            total,
            last_log: None,
            log_every: self.log_every,
        }
    }
}

/// One progress bar, or its log-line equivalent.
pub struct Bar {
    pb: Option<ProgressBar>,
    label: String,
    total: u64,
    last_log: Option<Instant>,
    log_every: Duration,
}

impl Bar {
    /// Shows `done` of the total, with a short note.
    pub fn set(&mut self, done: u64, note: &str) {
        if let Some(pb) = &self.pb {
            pb.set_position(done);
            pb.set_message(note.to_string());
            return;
        }
        if self.last_log.is_some_and(|t| t.elapsed() < self.log_every) {
            return;
        }
        self.last_log = Some(Instant::now());
        tracing::info!(target: "loadtest", "{}: {done}/{} {note}", self.label, self.total);
    }

    /// Final state.
    pub fn finish(&mut self, done: u64, note: &str) {
        match &self.pb {
            Some(pb) => {
                pb.set_position(done);
                pb.finish_with_message(note.to_string());
            }
            None => {
                tracing::info!(target: "loadtest", "{}: {done}/{} {note}", self.label, self.total)
            }
        }
    }
}
