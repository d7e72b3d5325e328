//! The runners of a shared run (`spec.parallelism` above 1) working as one, through
//! the API server only:
//!
//! - each runner writes its own line of `status.runners` (server-side apply under a
//!   field manager of its own, so no runner removes another's line);
//! - all wait for `status.startAt`, which the operator sets once every runner pod is
//!   ready, so a slow image pull does not stretch the run;
//! - a group of scenarios starts when every runner has sent the groups before it and
//!   runner 0 has drained the backlog before it (its line says `Sending` that group);
//! - after a group, each runner leaves its segment's outcomes (counts and exact
//!   histograms, `measure`) under its own key of the report ConfigMap; runner 0 reads
//!   them all, merges them and records one result per scenario; it removes the keys
//!   when it writes the report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::Api;
use outbox_contract::crd::{LoadTest, RunnerLine, RunnerState};
use outbox_contract::{field_managers, loadtest_report};
use serde::{Deserialize, Serialize};

use super::error::{KubeContext, LoadTestError, Result};
use super::measure::ScenarioOutcome;
use super::segment::Segment;
use outbox_core::shutdown::{self, ShutdownSignal};

/// How often a waiting runner reads the LoadTest again.
const POLL: Duration = Duration::from_secs(1);
/// How often a waiting runner says in its log what it waits for.
const SAY_EVERY: Duration = Duration::from_secs(30);

/// What one runner sent of each scenario, as it leaves it for runner 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SegmentReport {
    /// By scenario: its outcome in this runner's segment.
    pub scenarios: BTreeMap<String, SentSegment>,
    /// The CPU seconds this runner's process had used when it left the segment, for
    /// the run's CPU accounting (component `runner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

/// One scenario of one segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentSegment {
    /// Counts and histograms.
    pub outcome: ScenarioOutcome,
    /// Messages whose fate stayed unknown.
    pub uncertain: u64,
}

/// This runner's place in a shared run, and where it talks to the others.
pub struct SharedRun {
    loadtests: Api<LoadTest>,
    config_maps: Api<ConfigMap>,
    name: String,
    segment: Segment,
    line: RunnerLine,
    last_progress: Option<Instant>,
    others_accepted: u64,
}

/// Where every runner's line stands, as read from the LoadTest (pure to judge).
#[derive(Debug, Clone, Default)]
pub struct Lines(pub Vec<RunnerLine>);

impl Lines {
    /// A runner that says it failed, with its message.
    pub fn failed(&self) -> Option<&RunnerLine> {
        self.0.iter().find(|l| l.state == RunnerState::Failed)
    }

    /// The runners (of `runners`) that have not sent `groups` groups yet.
    pub fn behind(&self, runners: u32, groups: i32) -> Vec<u32> {
        (0..runners)
            .filter(|i| {
                !self
                    .0
                    .iter()
                    .any(|l| u32::try_from(l.index).ok() == Some(*i) && l.groups_sent >= groups)
            })
            .collect()
    }

    /// Whether runner 0 has drained the backlog before group `group` and sends it (or
    /// is past it).
    pub fn merger_started(&self, group: i32) -> bool {
        self.0.iter().any(|l| {
            l.index == 0
                && (l.groups_sent > group
                    || (l.groups_sent == group && l.state == RunnerState::Sending))
        })
    }
}

impl SharedRun {
    /// Runner `segment` of LoadTest `name`; its line starts `Waiting` with `messages`.
    pub fn new(
        loadtests: Api<LoadTest>,
        config_maps: Api<ConfigMap>,
        name: &str,
        segment: Segment,
        pod: Option<String>,
        messages: u64,
    ) -> SharedRun {
        SharedRun {
            loadtests,
            config_maps,
            name: name.to_string(),
            segment,
            line: RunnerLine {
                index: i32::try_from(segment.index).unwrap_or(i32::MAX),
                pod,
                messages: i64::try_from(messages).unwrap_or(i64::MAX),
                ..RunnerLine::default()
            },
            last_progress: None,
            others_accepted: 0,
        }
    }

    /// While a group is sent, at most every `every`: this runner's line with what its
    /// segment got accepted so far and, for runner 0, the other runners' lines read
    /// (their sum is [`SharedRun::others_accepted`]). A write or read that fails is
    /// logged and tried again at the next progress.
    pub async fn progress(&mut self, group: usize, accepted: u64, every: Duration) {
        if self.last_progress.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_progress = Some(Instant::now());
        if let Err(e) = self
            .publish(RunnerState::Sending, group, accepted, None)
            .await
        {
            tracing::warn!(error = %outbox_core::error_chain(&e), "could not write this runner's progress; going on");
        }
        if self.segment.merges() {
            match self.read().await {
                Ok(lt) => {
                    let lines = lt.status.unwrap_or_default().runners;
                    self.others_accepted = others_accepted(&lines);
                }
                Err(e) => {
                    tracing::warn!(error = %outbox_core::error_chain(&e), "could not read the other runners' progress; going on")
                }
            }
        }
    }

    /// The other runners' accepted messages at the last progress (runner 0).
    pub fn others_accepted(&self) -> u64 {
        self.others_accepted
    }

    /// Writes this runner's line: `state`, groups sent, accepted so far.
    pub async fn publish(
        &mut self,
        state: RunnerState,
        groups_sent: usize,
        accepted: u64,
        message: Option<String>,
    ) -> Result<()> {
        self.line.state = state;
        self.line.groups_sent = i32::try_from(groups_sent).unwrap_or(i32::MAX);
        self.line.accepted = i64::try_from(accepted).unwrap_or(i64::MAX);
        self.line.message = message;
        let patch = serde_json::json!({
            "apiVersion": "outbox.dev/v1alpha1",
            "kind": "LoadTest",
            "status": { "runners": [self.line] },
        });
        let manager = field_managers::runner_line(self.line.index);
        self.loadtests
            .patch_status(
                &self.name,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&patch),
            )
            .await
            .kube(|| {
                format!(
                    "writing runner {}'s line of LoadTest {}",
                    self.line.index, self.name
                )
            })?;
        Ok(())
    }

    /// Writes this runner's line (`Waiting`, nothing sent) and waits for the shared
    /// start time.
    pub async fn join(&mut self, shutdown: &mut ShutdownSignal) -> Result<()> {
        self.publish(RunnerState::Waiting, 0, 0, None).await?;
        self.wait_for_start(shutdown).await
    }

    /// Waits for the start time the operator sets once every runner pod is ready,
    /// then until that time.
    pub async fn wait_for_start(&self, shutdown: &mut ShutdownSignal) -> Result<()> {
        let started = Instant::now();
        let mut said = Instant::now();
        loop {
            let lt = self.read().await?;
            let status = lt.status.unwrap_or_default();
            if let Some(phase) = status.phase.filter(|p| p.is_finished()) {
                return Err(LoadTestError::RunEnded(phase));
            }
            if let Some(at) = status.start_at {
                let wait =
                    at.0.duration_since(Timestamp::now())
                        .try_into()
                        .unwrap_or(Duration::ZERO);
                tracing::info!(
                    start_at = %at.0,
                    waited_seconds = started.elapsed().as_secs(),
                    "every runner is ready; starting at the shared start time"
                );
                return sleep(wait, shutdown).await;
            }
            if said.elapsed() >= SAY_EVERY {
                tracing::info!(
                    ready = status.runners_ready.as_deref().unwrap_or("?"),
                    "waiting until every runner pod is ready"
                );
                said = Instant::now();
            }
            sleep(POLL, shutdown).await?;
        }
    }

    /// Waits until every runner has sent `groups` groups (and, with `merger_started`,
    /// until runner 0 has started group `groups`); a runner that failed fails this one
    /// too, naming it.
    pub async fn wait_for_group(
        &self,
        groups: usize,
        merger_started: bool,
        shutdown: &mut ShutdownSignal,
    ) -> Result<()> {
        let groups = i32::try_from(groups).unwrap_or(i32::MAX);
        let mut said = Instant::now();
        loop {
            let status = self.read().await?.status.unwrap_or_default();
            if let Some(phase) = status.phase.filter(|p| p.is_finished()) {
                return Err(LoadTestError::RunEnded(phase));
            }
            let lines = Lines(status.runners);
            if let Some(failed) = lines.failed() {
                return Err(LoadTestError::RunnerFailed {
                    index: failed.index,
                    pod: failed.pod.clone().unwrap_or_else(|| "its pod".into()),
                    message: failed
                        .message
                        .clone()
                        .unwrap_or_else(|| "no reason given".into()),
                });
            }
            let behind = lines.behind(self.segment.runners, groups);
            let merger = !merger_started || lines.merger_started(groups);
            if behind.is_empty() && merger {
                return Ok(());
            }
            if said.elapsed() >= SAY_EVERY {
                tracing::info!(
                    groups,
                    ?behind,
                    waiting_for_runner_0 = !merger,
                    "waiting for the other runners"
                );
                said = Instant::now();
            }
            sleep(POLL, shutdown).await?;
        }
    }

    /// Leaves this runner's segment for runner 0 under its own key of the report
    /// ConfigMap.
    pub async fn store(&self, report: &SegmentReport) -> Result<()> {
        let json = serde_json::to_string(report).map_err(|source| LoadTestError::Json {
            context: "this runner's segment",
            source,
        })?;
        let config_map = loadtest_report::config_map_name(&self.name);
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "data": { loadtest_report::segment_key(self.line.index): json },
        });
        self.config_maps
            .patch(
                &config_map,
                &PatchParams::apply(&field_managers::runner_line(self.line.index)).force(),
                &Patch::Apply(&patch),
            )
            .await
            .kube(|| {
                format!(
                    "writing runner {}'s segment into ConfigMap {config_map}",
                    self.line.index
                )
            })?;
        Ok(())
    }

    /// Every runner's segment (this one's own, when it left one, for a resumed runner).
    pub async fn segments(&self) -> Result<BTreeMap<u32, SegmentReport>> {
        let config_map = loadtest_report::config_map_name(&self.name);
        let found = self
            .config_maps
            .get(&config_map)
            .await
            .kube(|| format!("reading the runners' segments from ConfigMap {config_map}"))?;
        let data = found.data.unwrap_or_default();
        let mut segments = BTreeMap::new();
        for index in 0..self.segment.runners {
            let key = loadtest_report::segment_key(i32::try_from(index).unwrap_or(i32::MAX));
            if let Some(json) = data.get(&key) {
                let report = serde_json::from_str(json).map_err(|e| {
                    LoadTestError::Segments(format!(
                        "runner {index}'s segment in ConfigMap {config_map} ({key}) is not readable: {e}"
                    ))
                })?;
                segments.insert(index, report);
            }
        }
        Ok(segments)
    }

    /// The CPU seconds each other runner's process reported with its segment, as
    /// counters of the `runner` component (runner 0's own is read from its process).
    pub async fn other_runners_cpu(&self) -> Result<Vec<(String, f64)>> {
        Ok(self
            .segments()
            .await?
            .into_iter()
            .filter(|(index, _)| *index != self.segment.index)
            .filter_map(|(index, s)| Some((format!("runner-{index}"), s.cpu_seconds?)))
            .collect())
    }

    /// Removes every runner's segment from the report ConfigMap (runner 0, once the
    /// result is written): the report needs the room.
    pub async fn clear(&self) -> Result<()> {
        let config_map = loadtest_report::config_map_name(&self.name);
        let data: serde_json::Map<String, serde_json::Value> = (0..self.segment.runners)
            .map(|i| {
                (
                    loadtest_report::segment_key(i32::try_from(i).unwrap_or(i32::MAX)),
                    serde_json::Value::Null,
                )
            })
            .collect();
        self.config_maps
            .patch(
                &config_map,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "data": data })),
            )
            .await
            .kube(|| format!("removing the runners' segments from ConfigMap {config_map}"))?;
        Ok(())
    }

    /// Every runner's line as the LoadTest has them now, by index (for the report).
    pub async fn lines(&self) -> Result<Vec<RunnerLine>> {
        let mut lines = self.read().await?.status.unwrap_or_default().runners;
        lines.sort_by_key(|l| l.index);
        Ok(lines)
    }

    async fn read(&self) -> Result<LoadTest> {
        self.loadtests
            .get(&self.name)
            .await
            .kube(|| format!("reading LoadTest {}", self.name))
    }
}

/// What the runners other than runner 0 report accepted (pure).
fn others_accepted(lines: &[RunnerLine]) -> u64 {
    lines
        .iter()
        .filter(|l| l.index != 0)
        .map(|l| u64::try_from(l.accepted).unwrap_or(0))
        .sum()
}

/// Sleeps `wait`, or ends early with [`LoadTestError::Interrupted`] on shutdown.
async fn sleep(wait: Duration, shutdown: &mut ShutdownSignal) -> Result<()> {
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = shutdown::wait(shutdown) => Err(LoadTestError::Interrupted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(index: i32, groups_sent: i32, state: RunnerState) -> RunnerLine {
        RunnerLine {
            index,
            groups_sent,
            state,
            ..RunnerLine::default()
        }
    }

    #[test]
    fn a_group_starts_when_every_runner_sent_the_ones_before_and_runner_0_drained() {
        let lines = Lines(vec![
            line(0, 1, RunnerState::Waiting),
            line(2, 1, RunnerState::Waiting),
        ]);
        assert_eq!(lines.behind(3, 1), vec![1], "runner 1 has no line yet");
        assert!(!lines.merger_started(1), "runner 0 still drains");
        let lines = Lines(vec![
            line(0, 1, RunnerState::Sending),
            line(1, 1, RunnerState::Waiting),
            line(2, 2, RunnerState::Sent),
        ]);
        assert!(lines.behind(3, 1).is_empty());
        assert!(lines.merger_started(1));
        assert_eq!(lines.behind(3, 2), vec![0, 1]);
        assert!(lines.failed().is_none());
    }

    #[test]
    fn runner_0_counts_the_other_runners_lines_not_its_own() {
        let mut lines = vec![
            line(0, 1, RunnerState::Sending),
            line(1, 1, RunnerState::Sending),
            line(2, 1, RunnerState::Sending),
        ];
        for (l, accepted) in lines.iter_mut().zip([500, 300, 200]) {
            l.accepted = accepted;
        }
        assert_eq!(others_accepted(&lines), 500);
    }

    #[test]
    fn a_failed_runner_is_found_with_its_message() {
        let mut failed = line(1, 0, RunnerState::Failed);
        failed.message = Some("producer unreachable".into());
        let lines = Lines(vec![line(0, 0, RunnerState::Sending), failed]);
        assert_eq!(
            lines.failed().and_then(|l| l.message.as_deref()),
            Some("producer unreachable")
        );
    }

    #[test]
    fn a_segment_travels_as_json_with_its_histograms_exact() {
        use crate::measure::{Latencies, ProducerOutcome, Tally};
        let mut tally = Tally::default();
        for ms in [1u64, 2, 3, 250, 999] {
            tally.accepted(1, Duration::from_millis(ms));
        }
        let outcome = ScenarioOutcome {
            name: "immediate".into(),
            batching: false,
            messages: 5,
            already_accepted: 0,
            producers: vec![ProducerOutcome {
                producer: "p-0".into(),
                messages: 5,
                tally,
                duration: Duration::from_millis(1500),
                stages: Vec::new(),
            }],
            duration: Duration::from_millis(1500),
            stages: Vec::new(),
        };
        let report = SegmentReport {
            scenarios: BTreeMap::from([(
                "immediate".to_string(),
                SentSegment {
                    outcome: outcome.clone(),
                    uncertain: 1,
                },
            )]),
            cpu_seconds: Some(0.25),
        };
        let json = serde_json::to_string(&report).expect("encodes");
        let back: SegmentReport = serde_json::from_str(&json).expect("decodes");
        let again = &back.scenarios["immediate"];
        assert_eq!(again.uncertain, 1);
        assert_eq!(back.cpu_seconds, Some(0.25));
        assert_eq!(again.outcome.result(), outcome.result());
        assert!(
            serde_json::from_str::<Latencies>("\"bm90IGEgaGlzdG9ncmFt\"").is_err(),
            "garbage is not a histogram"
        );
    }
}
