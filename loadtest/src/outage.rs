//! Outages of the runner's dependencies, kept on one board for the status and the report.
//!
//! The runner depends on the outbox database (the ledger it verifies against), the API
//! server (where it writes the LoadTest's status) and each producer (where it sends).
//! Each one that stops answering is an outage: it begins at the first failed call and
//! ends at the next successful one. The code calling the dependency records both ends
//! here and decides, from [`Board::lasted`], whether it may keep waiting (up to
//! `--infrastructure-patience`). The status shows the board: `outages` lists each
//! dependency that was away, and the `Degraded` condition is True while one still is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_contract::crd::OutageSummary;

/// The outbox database.
pub const DATABASE: &str = "database";
/// The Kubernetes API server.
pub const API_SERVER: &str = "apiServer";

/// The board's name for the producer `name`.
pub fn producer(name: &str) -> String {
    format!("producer {name}")
}

/// Outages of one dependency over the run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outages {
    /// Outages ridden out (or the one that ended the run).
    pub count: u64,
    /// The longest that has ended, in seconds.
    pub longest_seconds: f64,
    /// Since when the current one lasts, if one does.
    pub ongoing_since: Option<Instant>,
}

impl Outages {
    /// The longest so far, counting the one going on.
    pub fn longest(&self) -> f64 {
        let ongoing = self
            .ongoing_since
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        self.longest_seconds.max(ongoing)
    }
}

/// Every dependency's outages; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, Outages>>>);

impl Board {
    /// `dependency` failed a call: starts an outage unless one goes on. Returns how
    /// long the outage lasts so far, and whether it starts now.
    pub fn failed(&self, dependency: &str) -> (Duration, bool) {
        self.update(|board| {
            let entry = board.entry(dependency.to_string()).or_default();
            match entry.ongoing_since {
                Some(since) => (since.elapsed(), false),
                None => {
                    entry.ongoing_since = Some(Instant::now());
                    entry.count += 1;
                    (Duration::ZERO, true)
                }
            }
        })
    }

    /// `dependency` answered: ends its outage, returning how long it lasted.
    pub fn answered(&self, dependency: &str) -> Option<Duration> {
        self.update(|board| {
            let entry = board.get_mut(dependency)?;
            let since = entry.ongoing_since.take()?;
            let lasted = since.elapsed();
            entry.longest_seconds = entry.longest_seconds.max(lasted.as_secs_f64());
            Some(lasted)
        })
    }

    /// How long the outage of `dependency` lasts so far (zero when none goes on).
    pub fn lasted(&self, dependency: &str) -> Duration {
        self.update(|board| {
            board
                .get(dependency)
                .and_then(|o| o.ongoing_since)
                .map(|s| s.elapsed())
                .unwrap_or_default()
        })
    }

    /// A copy of the board.
    pub fn snapshot(&self) -> BTreeMap<String, Outages> {
        self.update(|board| board.clone())
    }

    fn update<T>(&self, change: impl FnOnce(&mut BTreeMap<String, Outages>) -> T) -> T {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut guard)
    }
}

/// The status's `outages`: one entry per dependency that was away, by name.
pub fn summaries(board: &BTreeMap<String, Outages>) -> Vec<OutageSummary> {
    board
        .iter()
        .filter(|(_, o)| o.count > 0)
        .map(|(dependency, o)| OutageSummary {
            dependency: dependency.clone(),
            count: i64::try_from(o.count).unwrap_or(i64::MAX),
            longest_seconds: (o.longest() * 10.0).round() / 10.0,
            ongoing: o.ongoing_since.is_some(),
        })
        .collect()
}

/// What the `Degraded` condition says about `board`: `None` when nothing was ever
/// away; otherwise (degraded now, reason, message).
pub fn degraded(
    board: &BTreeMap<String, Outages>,
    patience: Duration,
) -> Option<(bool, &'static str, String)> {
    let away: Vec<String> = board
        .iter()
        .filter_map(|(dependency, o)| {
            let since = o.ongoing_since?;
            Some(format!(
                "{dependency} unreachable for {}s",
                since.elapsed().as_secs()
            ))
        })
        .collect();
    if let Some(first) = board.iter().find(|(_, o)| o.ongoing_since.is_some()) {
        let reason = match first.0.as_str() {
            DATABASE => "DatabaseUnavailable",
            API_SERVER => "ApiServerUnavailable",
            _ => "ProducerUnavailable",
        };
        return Some((
            true,
            reason,
            format!(
                "{}; retrying for up to {}s each before the run fails",
                away.join(", "),
                patience.as_secs()
            ),
        ));
    }
    let past: Vec<String> = board
        .iter()
        .filter(|(_, o)| o.count > 0)
        .map(|(dependency, o)| {
            format!(
                "{dependency} away {} time(s), at most {:.1}s",
                o.count, o.longest_seconds
            )
        })
        .collect();
    (!past.is_empty()).then(|| {
        (
            false,
            "Recovered",
            format!("{}; the run went on", past.join(", ")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_runs_from_the_first_failure_to_the_next_answer_and_is_counted_once() {
        let board = Board::default();
        assert_eq!(board.failed(DATABASE), (Duration::ZERO, true));
        let (_, new) = board.failed(DATABASE);
        assert!(!new, "a second failure belongs to the same outage");
        assert!(board.answered(DATABASE).is_some());
        assert_eq!(board.answered(DATABASE), None, "nothing goes on any more");
        assert_eq!(board.lasted(DATABASE), Duration::ZERO);
        board.failed(DATABASE);
        let snapshot = board.snapshot();
        assert_eq!(snapshot[DATABASE].count, 2);
        assert!(snapshot[DATABASE].ongoing_since.is_some());
    }

    #[test]
    fn degraded_names_every_dependency_away_and_recovered_counts_them_after() {
        let board = Board::default();
        let patience = Duration::from_secs(300);
        assert_eq!(degraded(&board.snapshot(), patience), None);
        board.failed(API_SERVER);
        board.failed(&producer("p-1"));
        let (now, reason, message) = degraded(&board.snapshot(), patience).unwrap_or_default();
        assert!(now);
        assert_eq!(reason, "ApiServerUnavailable");
        assert!(
            message.contains("apiServer unreachable")
                && message.contains("producer p-1 unreachable")
                && message.contains("300s"),
            "{message}"
        );
        board.answered(API_SERVER);
        board.answered(&producer("p-1"));
        let (now, reason, message) = degraded(&board.snapshot(), patience).unwrap_or_default();
        assert!(!now);
        assert_eq!(reason, "Recovered");
        assert!(message.contains("producer p-1 away 1 time(s)"), "{message}");
        let summaries = summaries(&board.snapshot());
        assert_eq!(
            summaries
                .iter()
                .map(|s| (s.dependency.as_str(), s.count, s.ongoing))
                .collect::<Vec<_>>(),
            vec![("apiServer", 1, false), ("producer p-1", 1, false)]
        );
    }
}
