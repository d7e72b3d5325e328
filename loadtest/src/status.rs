//! The LoadTest's status as the runner sees it, and writing it to the API server.
//!
//! The runner keeps its whole part of the status in memory and writes all of it each
//! time with server-side apply under its own field manager. The operator writes its
//! own fields (`jobName`, `observedGeneration`, the `Scheduled` condition) the same way
//! under its manager, and `conditions` is a list-map keyed by `type`, so neither side
//! overwrites the other's conditions (a JSON merge patch would replace the whole list).
//! The phase only moves forward: before each write the runner reads the current phase
//! and never writes a lower one.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use outbox_contract::conditions::{merge, Desired};
use outbox_contract::crd::{LoadTest, LoadTestPhase, LoadTestStatus};
use outbox_contract::status_apply;
use serde_json::Value;

use super::error::{KubeContext, LoadTestError, Result};
use super::outage::{self, Board};

/// The conditions the runner writes.
pub use outbox_contract::conditions::loadtest::{COMPLETE, DEGRADED, THRESHOLDS_MET, VERIFIED};
/// Field manager of the runner's status writes.
pub use outbox_contract::field_managers::RUNNER as FIELD_MANAGER;

/// Status fields the runner owns; everything else belongs to the operator.
const RUNNER_FIELDS: &[&str] = &[
    "phase",
    "runId",
    "startTime",
    "completionTime",
    "message",
    "acceptedMessages",
    "throughput",
    "scenarios",
    "groups",
    "endToEndLatency",
    "outages",
    "cpu",
    "thresholds",
    "reportConfigMap",
    "conditions",
];

/// The LoadTest the status goes to.
#[derive(Clone)]
pub struct Target {
    /// API of the LoadTest's namespace.
    pub api: Api<LoadTest>,
    /// LoadTest name.
    pub name: String,
    /// Its `metadata.generation`, stamped into conditions.
    pub generation: Option<i64>,
}

/// The runner's view of the status, and where (if anywhere) it is written.
pub struct StatusBook {
    target: Option<Target>,
    status: LoadTestStatus,
    last_write: Option<Instant>,
    min_interval: Duration,
    board: Board,
    patience: Duration,
}

impl StatusBook {
    /// Starts from `current` (the status found on the LoadTest, or empty). Every write
    /// carries the outages on `board`; a write the API server does not take is retried
    /// for up to `patience` (an outage of [`outage::API_SERVER`]).
    pub fn new(
        target: Option<Target>,
        current: LoadTestStatus,
        min_interval: Duration,
        board: Board,
        patience: Duration,
    ) -> Self {
        // Conditions of other writers are not ours to write; outages of an earlier
        // attempt stay (this attempt adds its own).
        let mut status = current;
        status
            .conditions
            .retain(|c| [COMPLETE, VERIFIED, DEGRADED, THRESHOLDS_MET].contains(&c.type_.as_str()));
        StatusBook {
            target,
            status,
            last_write: None,
            min_interval,
            board,
            patience,
        }
    }

    /// The board of outages this book reports.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The patience per outage.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// Copies the board into `outages` and the `Degraded` condition; returns the
    /// condition's message while something is away.
    pub fn reflect_outages(&mut self) -> Option<String> {
        let board = self.board.snapshot();
        let mut outages = outage::summaries(&board);
        // Dependencies an earlier attempt of the run found away, and this one did not.
        for earlier in &self.status.outages {
            if !outages.iter().any(|o| o.dependency == earlier.dependency) {
                let mut kept = earlier.clone();
                kept.ongoing = false;
                outages.push(kept);
            }
        }
        outages.sort_by(|a, b| a.dependency.cmp(&b.dependency));
        self.status.outages = outages;
        let Some((now, reason, message)) = outage::degraded(&board, self.patience) else {
            let earlier = self
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == DEGRADED && c.status == "True");
            if earlier {
                self.set_condition(
                    DEGRADED,
                    false,
                    "Recovered",
                    "what an earlier attempt of the run waited for answers again",
                );
            }
            return None;
        };
        self.set_condition(DEGRADED, now, reason, message.clone());
        now.then_some(message)
    }

    /// The current view.
    pub fn status(&self) -> &LoadTestStatus {
        &self.status
    }

    /// The current view, to update figures.
    pub fn status_mut(&mut self) -> &mut LoadTestStatus {
        &mut self.status
    }

    /// Current phase (Pending when unset).
    pub fn phase(&self) -> LoadTestPhase {
        self.status.phase.unwrap_or_default()
    }

    /// Moves the phase forward; a lower or equal phase is ignored.
    pub fn advance(&mut self, phase: LoadTestPhase) {
        self.status.phase = Some(forward(self.status.phase, phase));
    }

    /// Sets a condition, keeping its `lastTransitionTime` when its status is unchanged.
    pub fn set_condition(
        &mut self,
        type_: &'static str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        let generation = self.target.as_ref().and_then(|t| t.generation);
        set_condition(
            &mut self.status.conditions,
            type_,
            ok,
            reason,
            message.into(),
            generation,
            Timestamp::now(),
        );
    }

    /// Writes the status if the last write is at least the progress interval ago; an
    /// API server that does not take it is noted on the board, and the run goes on.
    pub async fn write_progress(&mut self) {
        if self
            .last_write
            .is_some_and(|t| t.elapsed() < self.min_interval)
        {
            return;
        }
        if let Err(e) = self.write().await {
            if self.note_api_failure(&e).is_none() {
                tracing::warn!(error = %outbox_core::error_chain(&e), "could not write progress into the LoadTest status; going on");
            }
        }
    }

    /// Writes the status now (a phase change or the final result). While the API
    /// server is away the write is retried, for up to the patience; an error the API
    /// server answers (the LoadTest deleted, the write refused) is returned at once.
    pub async fn write_now(&mut self) -> Result<()> {
        let mut backoff = Duration::from_millis(250);
        loop {
            let e = match self.write().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let Some(lasted) = self.note_api_failure(&e) else {
                return Err(e);
            };
            if lasted >= self.patience {
                return Err(LoadTestError::ApiServerUnavailable {
                    seconds: lasted.as_secs(),
                    patience: self.patience.as_secs(),
                    last: outbox_core::error_chain(&e),
                });
            }
            tokio::time::sleep(backoff.min(self.patience - lasted)).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Notes a failed write on the board when it is the API server being away; returns
    /// how long that lasts so far (`None` for an error the API server answered).
    fn note_api_failure(&self, error: &LoadTestError) -> Option<Duration> {
        let LoadTestError::Kube { source, .. } = error else {
            return None;
        };
        if !api_server_away(source) {
            return None;
        }
        let (lasted, new) = self.board.failed(outage::API_SERVER);
        if new {
            tracing::warn!(
                patience_seconds = self.patience.as_secs(),
                error = %outbox_core::error_chain(error),
                "the API server does not take the LoadTest status; retrying"
            );
        }
        Some(lasted)
    }

    async fn write(&mut self) -> Result<()> {
        self.last_write = Some(Instant::now());
        self.reflect_outages();
        let Some(target) = &self.target else {
            return Ok(());
        };
        // Never move the phase back: someone (the operator) may have ended the run.
        let current = target
            .api
            .get_status(&target.name)
            .await
            .kube(|| format!("reading the status of LoadTest {}", target.name))?;
        let server_phase = current.status.and_then(|s| s.phase);
        self.status.phase = Some(forward(server_phase, self.phase()));
        let body = apply_body(&self.status).map_err(|source| LoadTestError::Json {
            context: "the LoadTest status",
            source,
        })?;
        status_apply::apply(&target.api, &target.name, FIELD_MANAGER, &body)
            .await
            .map_err(|source| match undeclared_fields(&source) {
                Some(fields) => LoadTestError::StaleCrd { fields },
                None => LoadTestError::Kube {
                    context: format!("writing the status of LoadTest {}", target.name),
                    source,
                },
            })?;
        if let Some(lasted) = self.board.answered(outage::API_SERVER) {
            tracing::info!(
                seconds = format!("{:.1}", lasted.as_secs_f64()),
                "the API server takes the LoadTest status again"
            );
        }
        Ok(())
    }
}

/// Whether `error` is the API server being away (no connection, a 5xx, 429) rather
/// than an answer about the request.
pub fn api_server_away(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(_) if undeclared_fields(error).is_some() => false,
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// The status fields an API server refused because its CRD does not declare them
/// (it answers 500 "failed to create typed patch object ... field not declared in
/// schema"), e.g. `.status.cpu, .status.scenarios[0].latency.p95`.
pub fn undeclared_fields(error: &kube::Error) -> Option<String> {
    let kube::Error::Api(status) = error else {
        return None;
    };
    let fields: Vec<&str> = status
        .message
        .lines()
        .filter_map(|l| l.trim().strip_suffix(": field not declared in schema"))
        .map(|f| f.trim().trim_end_matches(':').trim())
        .filter(|f| f.starts_with('.'))
        .collect();
    (!fields.is_empty()).then(|| fields.join(", "))
}

/// The higher of two phases (unset counts as Pending).
pub fn forward(current: Option<LoadTestPhase>, next: LoadTestPhase) -> LoadTestPhase {
    match current {
        Some(c) if c.rank() >= next.rank() => c,
        _ => next,
    }
}

/// Sets condition `type_` in `conditions` (pure; see [`StatusBook::set_condition`]),
/// through the merge the operator uses too.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &'static str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let desired = Desired {
        type_,
        status: ok,
        reason: reason.to_string(),
        message,
    };
    let merged = merge(conditions, &[desired], generation, now);
    conditions.retain(|c| c.type_ != type_);
    conditions.extend(merged);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The server-side apply body for the runner's fields of `status`.
pub fn apply_body(status: &LoadTestStatus) -> serde_json::Result<Value> {
    let mut value = serde_json::to_value(status)?;
    if let Some(map) = value.as_object_mut() {
        map.retain(|k, _| RUNNER_FIELDS.contains(&k.as_str()));
    }
    status_apply::body::<LoadTest, _>(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn the_phase_never_moves_back() {
        assert_eq!(
            forward(None, LoadTestPhase::Running),
            LoadTestPhase::Running
        );
        assert_eq!(
            forward(Some(LoadTestPhase::Verifying), LoadTestPhase::Running),
            LoadTestPhase::Verifying
        );
        assert_eq!(
            forward(Some(LoadTestPhase::Failed), LoadTestPhase::Succeeded),
            LoadTestPhase::Failed
        );
        assert_eq!(
            forward(Some(LoadTestPhase::Verifying), LoadTestPhase::Succeeded),
            LoadTestPhase::Succeeded
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut c = Vec::new();
        set_condition(
            &mut c,
            VERIFIED,
            false,
            "Verifying",
            "waiting".into(),
            Some(1),
            t0,
        );
        set_condition(
            &mut c,
            VERIFIED,
            false,
            "MessagesMissing",
            "group-c missing 5".into(),
            Some(1),
            t1,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(t0));
        assert_eq!(c[0].reason, "MessagesMissing");
        set_condition(
            &mut c,
            VERIFIED,
            true,
            "AllAcknowledged",
            "ok".into(),
            Some(1),
            t1,
        );
        assert_eq!(c[0].last_transition_time, Time(t1));
        assert_eq!(c[0].status, "True");
    }

    #[test]
    fn the_apply_body_carries_only_the_runners_fields() {
        let status = LoadTestStatus {
            phase: Some(LoadTestPhase::Running),
            run_id: Some("r".into()),
            job_name: Some("lt-runner".into()),
            observed_generation: Some(3),
            ..Default::default()
        };
        let body = apply_body(&status).expect("serialisable");
        let s = &body["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["runId"], "r");
        assert!(s.get("jobName").is_none());
        assert!(s.get("observedGeneration").is_none());
        assert_eq!(body["kind"], "LoadTest");
    }

    /// A book that writes nowhere, with a patience of 300 s.
    fn unwritten(current: LoadTestStatus, board: Board) -> StatusBook {
        StatusBook::new(
            None,
            current,
            Duration::from_secs(1),
            board,
            Duration::from_secs(300),
        )
    }

    /// (dependency, count, ongoing) of each outage in the status.
    fn outages_of(book: &StatusBook) -> Vec<(&str, i64, bool)> {
        book.status()
            .outages
            .iter()
            .map(|o| (o.dependency.as_str(), o.count, o.ongoing))
            .collect()
    }

    fn degraded(book: &StatusBook) -> Option<(String, String)> {
        book.status()
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    #[test]
    fn outages_show_as_degraded_while_they_last_and_stay_counted_after() {
        let board = Board::default();
        let mut book = unwritten(LoadTestStatus::default(), board.clone());
        assert_eq!(book.reflect_outages(), None);
        assert_eq!(degraded(&book), None, "no outage, no condition");

        board.failed(outage::DATABASE);
        let message = book.reflect_outages().unwrap_or_default();
        assert!(
            message.contains("database unreachable") && message.contains("300s"),
            "{message}"
        );
        assert_eq!(
            degraded(&book),
            Some(("True".into(), "DatabaseUnavailable".into()))
        );
        assert!(book.status().outages[0].ongoing);

        board.answered(outage::DATABASE);
        assert_eq!(book.reflect_outages(), None);
        assert_eq!(degraded(&book), Some(("False".into(), "Recovered".into())));
        assert_eq!(outages_of(&book), vec![("database", 1, false)]);
    }

    #[test]
    fn a_resumed_run_keeps_the_outages_its_earlier_attempt_recorded() {
        let earlier = LoadTestStatus {
            outages: vec![outbox_contract::crd::OutageSummary {
                dependency: "apiServer".into(),
                count: 2,
                longest_seconds: 12.0,
                ongoing: true,
            }],
            ..Default::default()
        };
        let board = Board::default();
        board.failed(outage::DATABASE);
        board.answered(outage::DATABASE);
        let mut book = unwritten(earlier, board);
        book.reflect_outages();
        assert_eq!(
            outages_of(&book),
            vec![("apiServer", 2, false), ("database", 1, false)]
        );

        // An earlier Degraded=True with nothing away now turns False.
        let mut earlier = LoadTestStatus::default();
        set_condition(
            &mut earlier.conditions,
            DEGRADED,
            true,
            "ApiServerUnavailable",
            "away".into(),
            None,
            Timestamp::now(),
        );
        let mut book = unwritten(earlier, Board::default());
        book.reflect_outages();
        assert_eq!(degraded(&book), Some(("False".into(), "Recovered".into())));
    }

    #[test]
    fn only_an_api_server_that_is_away_counts_as_an_outage() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert!(api_server_away(&status(503)));
        assert!(api_server_away(&status(500)));
        assert!(api_server_away(&status(429)));
        assert!(!api_server_away(&status(404)), "the LoadTest is gone");
        assert!(!api_server_away(&status(422)), "the write was refused");
    }

    #[test]
    fn a_crd_older_than_the_runner_is_named_not_waited_for_as_an_outage() {
        let refused = kube::Error::Api(
            kube::core::Status::failure("failed to create typed patch object (/; outbox.dev/v1alpha1, Kind=LoadTest): errors:\n  .status.cpu: field not declared in schema\n  .status.scenarios[0].latency.p95: field not declared in schema", "")
                .with_code(500)
                .boxed(),
        );
        assert!(!api_server_away(&refused));
        assert_eq!(
            undeclared_fields(&refused).as_deref(),
            Some(".status.cpu, .status.scenarios[0].latency.p95")
        );
        let away = kube::Error::Api(
            kube::core::Status::failure("etcdserver: request timed out", "")
                .with_code(500)
                .boxed(),
        );
        assert!(api_server_away(&away));
        assert_eq!(undeclared_fields(&away), None);
    }
}
