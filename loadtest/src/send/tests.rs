//! Tests of `send`.
use super::*;
use crate::args;

fn scenario(name: &str, with_previous: bool) -> Scenario {
    Scenario {
        name: name.into(),
        messages: Some(10),
        with_previous,
        ..Scenario::default()
    }
}

#[test]
fn scenarios_marked_with_previous_are_sent_together_with_the_one_before() {
    let scenarios = [
        scenario("batch", false),
        scenario("steady", true),
        scenario("spike", true),
        scenario("immediate", false),
        // The first scenario has nothing before it (the API server refuses it).
        scenario("late", true),
    ];
    let names: Vec<Vec<&str>> = together(&scenarios)
        .iter()
        .map(|g| g.iter().map(|s| s.name.as_str()).collect())
        .collect();
    assert_eq!(
        names,
        vec![vec!["batch", "steady", "spike"], vec!["immediate", "late"]]
    );
    let first_alone = together(&scenarios[4..]);
    assert_eq!(first_alone.len(), 1);
}

#[test]
fn single_messages_go_one_at_a_time_per_producer_unless_the_scenario_or_flags_say_otherwise() {
    let concurrency = |flags: &[&str]| -> Vec<usize> {
        let mut all = vec!["--topic", "t"];
        all.extend_from_slice(flags);
        let args = args::from_flags(&all);
        let producers = vec![drive_producer("http://127.0.0.1:5301")];
        let plan = super::super::plan::local_plan(&args, producers).expect("a plan");
        plan.scenarios
            .iter()
            .map(|s| scenario_send(&args, &plan, s, 0).concurrency)
            .collect()
    };
    let scenarios = [
        "--scenario",
        "batch:1000:batched",
        "--scenario",
        "immediate:10:immediate",
        "--scenario",
        "wide:10:immediate:8",
    ];
    assert_eq!(concurrency(&scenarios), vec![2, 1, 8]);
    let mut told = scenarios.to_vec();
    told.extend_from_slice(&["--concurrency", "4"]);
    assert_eq!(concurrency(&told), vec![4, 4, 8]);
}

#[test]
fn a_resumed_attempt_keeps_finished_scenarios_and_sends_only_what_the_outbox_lacks() {
    let args = args::from_flags(&[
        "--topic",
        "t",
        "--scenario",
        "batch:1000:batched",
        "--scenario",
        "immediate:10:immediate",
        "--scenario",
        "late:40:immediate",
    ]);
    let producers = vec![
        drive_producer("http://127.0.0.1:5301"),
        drive_producer("http://127.0.0.1:5302"),
    ];
    let plan = super::super::plan::local_plan(&args, producers).expect("a plan");
    let resume = ResumePoint {
        resumed: true,
        earlier: BTreeMap::from([
            ("batch".to_string(), IdSet::from_ranges([(1, 1000)])),
            ("immediate".to_string(), IdSet::from_ranges([(1001, 1004)])),
        ]),
        finished: vec!["batch".to_string()],
        segment: SegmentReport::default(),
    };
    let display = Display::new(Duration::from_secs(5));
    let live = sampler::Live::default();
    let http = reqwest::Client::new();
    let sending = Sending {
        args: &args,
        plan: &plan,
        resume: &resume,
        http: &http,
        display: &display,
        live: &live,
    };
    let mut expected = IdSet::default();
    let groups = together(&plan.scenarios);
    let first = pending(sending, &groups[0], &mut expected);
    assert!(first.is_empty(), "batch finished in the earlier attempt");
    assert_eq!(expected.len(), 1000, "its messages are still expected");
    let second = pending(sending, &groups[1], &mut expected);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].already_accepted, 4);
    assert_eq!(second[0].shares, vec![3, 3], "the 6 it lacks, split");
    assert_eq!(expected.len(), 1004);
    assert!(
        !measures_own_latency(&second, &plan),
        "no group to measure in"
    );
    let with_groups = Plan {
        groups: vec!["a".into()],
        ..plan.clone()
    };
    assert!(measures_own_latency(&second, &with_groups));
    let first_batch = pending(sending, &groups[0][..0], &mut expected);
    assert!(
        !measures_own_latency(&first_batch, &with_groups),
        "nothing to send"
    );
}

fn drive_producer(url: &str) -> super::super::discover::Producer {
    super::super::discover::Producer::from_url(url)
}

#[test]
fn the_attempt_throughput_is_its_accepted_messages_over_its_sending_time() {
    let mut status = LoadTestStatus {
        scenarios: vec![
            outbox_contract::crd::ScenarioResult {
                name: "batch".into(),
                accepted: 900,
                ..Default::default()
            },
            outbox_contract::crd::ScenarioResult {
                name: "immediate".into(),
                accepted: 100,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut attempt = Attempt::default();
    attempt.add(Attempt {
        accepted: 900,
        seconds: 3.0,
    });
    attempt.add(Attempt {
        accepted: 100,
        seconds: 1.0,
    });
    attempt.into_status(&mut status);
    assert_eq!(status.accepted_messages, Some(1000));
    assert_eq!(status.throughput, Some(250.0));
    // A resumed attempt that had nothing left to send keeps the earlier figure.
    Attempt::default().into_status(&mut status);
    assert_eq!(status.throughput, Some(250.0));
}
