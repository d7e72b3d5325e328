//! Unit tests of the operator's part of a parallel run's status.

use k8s_openapi::api::batch::v1::JobStatus;

use super::*;

/// A Job whose runner pods are `ready`.
fn job(ready: i32) -> Job {
    Job {
        status: Some(JobStatus {
            ready: Some(ready),
            ..JobStatus::default()
        }),
        ..Job::default()
    }
}

fn at(second: i64, nanosecond: i32) -> Timestamp {
    Timestamp::new(second, nanosecond).unwrap_or_else(|e| panic!("{e}"))
}

fn time(second: i64) -> Time {
    Time(at(second, 0))
}

#[test]
fn runners_ready_is_the_jobs_ready_pods_over_parallelism() {
    let none = LoadTestStatus::default();
    let now = at(1_000, 0);
    for (job, text) in [(None, "0/3"), (Some(job(0)), "0/3"), (Some(job(2)), "2/3")] {
        let s = runners_status(3, &none, job.as_ref(), false, now);
        assert_eq!(s.ready.as_deref(), Some(text));
    }
    let all = runners_status(3, &none, Some(&job(3)), false, now);
    assert_eq!(all.ready.as_deref(), Some("3/3"));
}

#[test]
fn a_run_of_one_runner_gets_neither_runners_ready_nor_a_start_time() {
    let s = runners_status(
        1,
        &LoadTestStatus::default(),
        Some(&job(1)),
        false,
        at(1_000, 0),
    );
    assert_eq!(s, RunnersStatus::default());
}

#[test]
fn the_start_time_waits_until_every_runner_pod_is_ready() {
    let none = LoadTestStatus::default();
    for ready in [0, 1, 2] {
        let s = runners_status(3, &none, Some(&job(ready)), false, at(1_000, 0));
        assert_eq!(s.start_at, None, "{ready} of 3 ready");
    }
}

#[test]
fn the_start_time_is_two_seconds_after_all_are_ready_rounded_up_to_a_whole_second() {
    let none = LoadTestStatus::default();
    let s = runners_status(3, &none, Some(&job(3)), false, at(1_000, 0));
    assert_eq!(s.start_at, Some(time(1_002)));
    let s = runners_status(3, &none, Some(&job(3)), false, at(1_000, 300_000_000));
    assert_eq!(s.start_at, Some(time(1_003)), "never less than two seconds");
}

#[test]
fn the_start_time_is_set_once_and_never_moved_not_by_a_replaced_runner_pod() {
    let mut current = LoadTestStatus::default();
    let first = runners_status(3, &current, Some(&job(3)), false, at(1_000, 0));
    assert_eq!(first.start_at, Some(time(1_002)));
    current.runners_ready = first.ready.clone();
    current.start_at = first.start_at.clone();

    // Later, still all ready: the same start time, not a new one.
    let later = runners_status(3, &current, Some(&job(3)), false, at(1_030, 0));
    assert_eq!(later.start_at, Some(time(1_002)));

    // A runner pod died and its successor is not ready yet, then is: the count follows
    // the Job, the start time stays.
    let replacing = runners_status(3, &current, Some(&job(2)), false, at(1_060, 0));
    assert_eq!(replacing.ready.as_deref(), Some("2/3"));
    assert_eq!(replacing.start_at, Some(time(1_002)));
    let replaced = runners_status(3, &current, Some(&job(3)), false, at(1_090, 0));
    assert_eq!(replaced.start_at, Some(time(1_002)));
}

#[test]
fn a_run_that_ends_keeps_its_last_runners_ready_and_start_time() {
    let current = LoadTestStatus {
        runners_ready: Some("3/3".into()),
        start_at: Some(time(1_002)),
        ..LoadTestStatus::default()
    };
    let s = runners_status(3, &current, Some(&job(0)), true, at(2_000, 0));
    assert_eq!(s.ready.as_deref(), Some("3/3"));
    assert_eq!(s.start_at, Some(time(1_002)));
    // One that ends before every runner was ready gets no start time.
    let s = runners_status(
        3,
        &LoadTestStatus::default(),
        Some(&job(3)),
        true,
        at(2_000, 0),
    );
    assert_eq!(s.start_at, None);
}

#[test]
fn setting_the_start_time_is_announced_once() {
    let none = LoadTestStatus::default();
    let waiting = runners_status(3, &none, Some(&job(2)), false, at(1_000, 0));
    assert_eq!(announcement(&none, &waiting), None);
    let ready = runners_status(3, &none, Some(&job(3)), false, at(1_000, 0));
    let event = announcement(&none, &ready).expect("an Event");
    assert_eq!(event.type_, EventType::Normal);
    assert_eq!(event.reason, "RunnersReady");
    assert!(
        event.note.contains("3/3") && event.note.contains("1970-01-01T00:16:42Z"),
        "{}",
        event.note
    );
    let set = LoadTestStatus {
        start_at: ready.start_at.clone(),
        ..LoadTestStatus::default()
    };
    assert_eq!(announcement(&set, &ready), None);
}
