//! Unit tests of the LoadTest reconcile's decisions.

use k8s_openapi::jiff::Timestamp;

use super::*;

fn account(found: bool) -> RunnerAccount<'static> {
    RunnerAccount {
        name: "outbox-loadtest",
        namespace: "team-a",
        found,
    }
}

#[test]
fn a_namespace_without_the_runner_account_fails_the_run_saying_what_to_do() {
    let s = operator_status(
        &status(None),
        true,
        account(false),
        JobState::Absent,
        "lt",
        "demo",
    );
    assert_eq!(s.phase, LoadTestPhase::Failed);
    assert!(s.completed);
    let complete = s
        .conditions
        .iter()
        .find(|c| c.type_ == types::COMPLETE)
        .expect("a Complete condition");
    assert_eq!(complete.reason, "RunnerAccountMissing");
    assert!(
        complete.message.contains("outbox-loadtest")
            && complete.message.contains("loadtest.namespaces"),
        "{}",
        complete.message
    );
}

fn status(phase: Option<LoadTestPhase>) -> LoadTestStatus {
    LoadTestStatus {
        phase,
        ..LoadTestStatus::default()
    }
}

#[test]
fn a_runner_image_outside_the_allowed_repositories_fails_the_run_naming_image_and_list() {
    let refusal = crate::image_policy::ImagePolicy::from_list("registry.example/team/")
        .check("spec.image", "evil.example/runner:1")
        .expect("refused");
    let s = image_not_allowed(&refusal);
    assert_eq!(s.phase, LoadTestPhase::Failed);
    assert!(s.completed);
    assert_eq!(s.job_name, None);
    for type_ in [types::SCHEDULED, types::COMPLETE] {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("a {type_} condition"));
        assert_eq!(c.reason, "ImageNotAllowed");
        assert!(
            c.message.contains("evil.example/runner:1")
                && c.message.contains("registry.example/team/"),
            "{}",
            c.message
        );
    }
    let events = announcements(&status(None), &s, "demo");
    assert!(
        events
            .iter()
            .any(|e| e.reason == "ImageNotAllowed" && e.type_ == EventType::Warning),
        "{events:?}"
    );
}

#[test]
fn missing_system_gives_system_not_found_and_no_job() {
    let s = operator_status(
        &status(None),
        false,
        account(true),
        JobState::Absent,
        "lt",
        "demo",
    );
    assert_eq!(s.conditions[0].reason, "SystemNotFound");
    assert!(!s.conditions[0].status);
    assert!(s.conditions[0].message.contains("spec.systemRef.name"));
    assert_eq!(s.job_name, None);
}

#[test]
fn active_job_keeps_the_runner_phase() {
    let s = operator_status(
        &status(Some(LoadTestPhase::Verifying)),
        true,
        account(true),
        JobState::Active,
        "lt",
        "demo",
    );
    assert_eq!(s.phase, LoadTestPhase::Verifying);
    assert_eq!(s.job_name.as_deref(), Some("lt-run"));
}

#[test]
fn failed_job_before_a_report_fails_the_run() {
    let s = operator_status(
        &status(Some(LoadTestPhase::Running)),
        true,
        account(true),
        JobState::Failed,
        "lt",
        "demo",
    );
    assert_eq!(s.phase, LoadTestPhase::Failed);
    assert!(s.completed);
    assert!(s
        .conditions
        .iter()
        .any(|c| c.type_ == types::COMPLETE && c.reason == "JobFailed"));
}

#[test]
fn finished_phase_is_never_moved() {
    let s = operator_status(
        &status(Some(LoadTestPhase::Succeeded)),
        false,
        account(true),
        JobState::Failed,
        "lt",
        "demo",
    );
    assert_eq!(s.phase, LoadTestPhase::Succeeded);
    assert!(s.conditions.is_empty());
}

#[test]
fn a_job_that_vanished_after_it_was_made_fails_the_run_as_lost() {
    let mut current = status(Some(LoadTestPhase::Running));
    current.job_name = Some("lt-run".into());
    let s = operator_status(
        &current,
        true,
        account(true),
        JobState::Absent,
        "lt",
        "demo",
    );
    assert_eq!(s.phase, LoadTestPhase::Failed);
    assert!(s.completed);
    assert_eq!(s.job_name.as_deref(), Some("lt-run"));
    assert_eq!(s.conditions.len(), 1);
    assert_eq!(s.conditions[0].type_, types::COMPLETE);
    assert_eq!(s.conditions[0].reason, "JobLost");
    assert!(s.message.is_some_and(|m| m.contains("lt-run disappeared")));
}

#[test]
fn a_job_that_exited_0_without_a_report_fails_the_run() {
    let s = operator_status(
        &status(Some(LoadTestPhase::Running)),
        true,
        account(true),
        JobState::Succeeded,
        "lt",
        "demo",
    );
    assert_eq!(s.phase, LoadTestPhase::Failed);
    let reasons: Vec<_> = s.conditions.iter().map(|c| (c.type_, &*c.reason)).collect();
    assert_eq!(
        reasons,
        [
            (types::SCHEDULED, "JobCreated"),
            (types::COMPLETE, "RunnerDidNotReport")
        ]
    );
}

fn failed_job(reason: &str, deadline: Option<i64>) -> Job {
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    Job {
        spec: Some(JobSpec {
            active_deadline_seconds: deadline,
            ..JobSpec::default()
        }),
        status: Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        }),
        ..Job::default()
    }
}

#[test]
fn a_job_past_its_deadline_fails_the_run_naming_the_deadline() {
    let running = status(Some(LoadTestPhase::Running));
    let job = failed_job("DeadlineExceeded", Some(12_345));
    let s = decide_status(&running, true, account(true), Some(&job), "lt", "demo");
    assert_eq!(s.phase, LoadTestPhase::Failed);
    let message = s.message.expect("a message");
    assert!(
        message.starts_with("the runner Job lt-run failed before the runner reported")
            && message.ends_with(
                ": it ran past its deadline of 12345 s (activeDeadlineSeconds, from the messages and verificationTimeoutSeconds)"
            ),
        "{message}"
    );
    // Failed for another reason: no deadline in the message.
    let job = failed_job("BackoffLimitExceeded", Some(12_345));
    let s = decide_status(&running, true, account(true), Some(&job), "lt", "demo");
    assert!(s.message.is_some_and(|m| !m.contains("deadline")));
}

#[test]
fn the_job_is_made_only_for_a_pending_run_that_never_had_one_with_system_and_account() {
    let pending = status(None);
    assert!(job_due(&pending, false, true, true));
    assert!(!job_due(&pending, true, true, true), "a Job exists");
    assert!(!job_due(&pending, false, false, true), "no OutboxSystem");
    assert!(!job_due(&pending, false, true, false), "no ServiceAccount");
    let running = status(Some(LoadTestPhase::Running));
    assert!(!job_due(&running, false, true, true), "the run started");
    let mut vanished = status(None);
    vanished.job_name = Some("lt-run".into());
    assert!(
        !job_due(&vanished, false, true, true),
        "a Job that vanished is not made again"
    );
}

#[test]
fn a_missing_system_is_announced_once_and_a_failed_run_with_its_message() {
    let waiting = operator_status(
        &status(None),
        false,
        account(true),
        JobState::Absent,
        "lt",
        "demo",
    );
    assert_eq!(
        announcements(&status(None), &waiting, "demo"),
        [Announcement {
            type_: EventType::Warning,
            reason: "SystemNotFound",
            note: "OutboxSystem demo not found; no Job created".into(),
        }]
    );
    // The status already says so: no second Event.
    let mut said = status(None);
    said.conditions = conditions::merge(&[], &waiting.conditions, None, Timestamp::UNIX_EPOCH);
    assert!(announcements(&said, &waiting, "demo").is_empty());

    let failed = operator_status(
        &status(Some(LoadTestPhase::Running)),
        true,
        account(true),
        JobState::Failed,
        "lt",
        "demo",
    );
    let events = announcements(&status(Some(LoadTestPhase::Running)), &failed, "demo");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "RunFailed");
    assert_eq!(events[0].type_, EventType::Warning);
    assert_eq!(Some(&events[0].note), failed.message.as_ref());

    let active = operator_status(
        &status(Some(LoadTestPhase::Running)),
        true,
        account(true),
        JobState::Active,
        "lt",
        "demo",
    );
    assert!(announcements(&status(None), &active, "demo").is_empty());
}

#[test]
fn a_run_waiting_for_its_system_is_looked_at_sooner() {
    assert_eq!(
        look_again(false, false),
        Action::requeue(Duration::from_secs(15))
    );
    assert_eq!(
        look_again(true, false),
        Action::requeue(Duration::from_secs(60))
    );
    assert_eq!(
        look_again(false, true),
        Action::requeue(Duration::from_secs(60))
    );
}
