//! CPU time of this process, split by what its threads do, served on `/metrics` as
//! `outbox_cpu_seconds_total{part}` so that a load test can say where the cores went;
//! beside it the process's resident memory, `process_resident_memory_bytes`, and its
//! start time, `process_start_time_seconds` (a restarted container shows as a change of
//! it, which the alert rules use without kube-state-metrics).
//!
//! Threads are named for their work: the main runtime's threads `outbox-main` (HTTP
//! ingest and housekeeping such as retention in a producer, the consume-and-acknowledge
//! loop in a consumer), the relay's
//! own runtime `outbox-relay`, librdkafka's threads `rdk:*`. The kernel keeps each
//! live thread's time in `/proc/self/task/<tid>/stat` and the whole process's, exited
//! threads included, in `/proc/self/stat`; what the live named threads do not explain
//! is `other`.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The resident set of a process, in bytes, from its `/proc/<pid>/status` text.
pub fn resident_bytes(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: f64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024.0),
        _ => None,
    }
}

/// Clock ticks per second of the times in `/proc/.../stat` (`USER_HZ`, 100 on every
/// Linux architecture this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// Name of the main runtime's threads.
pub const MAIN_THREADS: &str = "outbox-main";
/// Name of the relay runtime's threads.
pub const RELAY_THREADS: &str = "outbox-relay";

/// What a thread's time counts towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Main,
    Relay,
    KafkaClient,
    Other,
}

impl Part {
    /// The `part` label.
    pub fn label(self) -> &'static str {
        match self {
            Part::Main => "main",
            Part::Relay => "relay",
            Part::KafkaClient => "kafka-client",
            Part::Other => "other",
        }
    }

    /// The part a thread named `name` works for.
    pub fn of_thread(name: &str) -> Part {
        if name.starts_with(MAIN_THREADS) {
            Part::Main
        } else if name.starts_with(RELAY_THREADS) {
            Part::Relay
        } else if name.starts_with("rdk:") {
            Part::KafkaClient
        } else {
            Part::Other
        }
    }
}

/// The command name and user + system clock ticks of a `/proc/<pid>[/task/<tid>]/stat`
/// line. The name is in parentheses and may itself hold spaces and parentheses, so the
/// fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<(String, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?.to_string();
    // After the name: state (field 3) ... utime (14), stime (15).
    let mut fields = line.get(close + 1..)?.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((name, user + system))
}

/// Seconds per part from the process's total ticks and each live thread's
/// `(name, ticks)`. `other` takes what the named threads do not explain (exited
/// threads, unnamed ones), never below zero.
pub fn split(process_ticks: u64, threads: &[(String, u64)]) -> BTreeMap<Part, f64> {
    let mut ticks: BTreeMap<Part, u64> = [Part::Main, Part::Relay, Part::KafkaClient]
        .into_iter()
        .map(|p| (p, 0))
        .collect();
    let mut named = 0u64;
    for (name, t) in threads {
        let part = Part::of_thread(name);
        if part != Part::Other {
            *ticks.entry(part).or_default() += t;
            named += t;
        }
    }
    ticks.insert(Part::Other, process_ticks.saturating_sub(named));
    ticks
        .into_iter()
        .map(|(p, t)| (p, t as f64 / TICKS_PER_SECOND))
        .collect()
}

/// This process's CPU seconds per part, read now (None where `/proc` cannot be read).
pub fn this_process() -> Option<BTreeMap<Part, f64>> {
    let process = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, process_ticks) = parse_stat(&process)?;
    let threads: Vec<(String, u64)> = std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|line| parse_stat(&line))
        .collect();
    Some(split(process_ticks, &threads))
}

/// The start time of a process in seconds since the epoch, from its
/// `/proc/<pid>/stat` line (field 22, `starttime`, in ticks since boot) and the
/// `btime` line of `/proc/stat` (boot time in seconds since the epoch).
pub fn start_time_seconds(stat: &str, proc_stat: &str) -> Option<f64> {
    let close = stat.rfind(')')?;
    // After the name: state is field 3, so starttime (22) is the 20th word.
    let ticks: u64 = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot as f64 + ticks as f64 / TICKS_PER_SECOND)
}

/// This process's start time in seconds since the epoch.
pub fn this_process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
    start_time_seconds(&stat, &proc_stat)
}

/// This process's CPU seconds, all parts together.
pub fn this_process_total() -> Option<f64> {
    let process = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, ticks) = parse_stat(&process)?;
    Some(ticks as f64 / TICKS_PER_SECOND)
}

/// Serves [`this_process`] as `outbox_cpu_seconds_total{part}`, the resident memory
/// as `process_resident_memory_bytes` and the start time as
/// `process_start_time_seconds` on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(bytes) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| resident_bytes(&s))
        {
            let gauge = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of this process in bytes",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            ConstGauge::new(bytes).encode(gauge)?;
        }
        if let Some(seconds) = this_process_start_time() {
            let gauge = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of this process since the epoch in seconds",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            ConstGauge::new(seconds).encode(gauge)?;
        }
        let Some(parts) = this_process() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "outbox_cpu_seconds",
            "CPU seconds (user + system) of this process by part: main runtime, relay runtime, librdkafka threads, other",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (part, seconds) in parts {
            let labels = [("part", part.label())];
            ConstCounter::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Every sample of `metric` in a Prometheus text exposition: its labels (the text
/// between the braces, empty without) and its value.
pub fn samples<'a>(text: &'a str, metric: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (labels, rest) = match rest.chars().next()? {
                '{' => rest[1..].split_once('}')?,
                ' ' => ("", rest),
                _ => return None,
            };
            Some((labels, rest.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// A Prometheus text exposition's `outbox_cpu_seconds_total` samples, by part (an
/// exposition without them gives an empty map).
pub fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    samples(text, "outbox_cpu_seconds_total")
        .into_iter()
        .filter_map(|(labels, value)| {
            let part = labels
                .split(',')
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == "part")?
                .1
                .trim()
                .trim_matches('"');
            Some((part.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_and_parentheses_in_the_name_are_read_from_the_last_parenthesis() {
        let line = "4242 (rdk:broker (1) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 30 0 1000 0 0";
        assert_eq!(
            parse_stat(line),
            Some(("rdk:broker (1) x".to_string(), 325))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn threads_count_towards_their_named_part_and_other_takes_the_rest() {
        let threads = vec![
            ("outbox-main".to_string(), 300),
            ("outbox-main".to_string(), 100),
            ("outbox-relay".to_string(), 150),
            ("rdk:broker1".to_string(), 50),
            ("rdk:main".to_string(), 10),
            ("outbox-worker".to_string(), 7),
        ];
        // 1,000 ticks for the process: 390 not explained by the named threads (the
        // unnamed one's 7 and exited threads').
        let parts = split(1000, &threads);
        assert_eq!(parts[&Part::Main], 4.0);
        assert_eq!(parts[&Part::Relay], 1.5);
        assert_eq!(parts[&Part::KafkaClient], 0.6);
        assert_eq!(parts[&Part::Other], 3.9);
        // A process total read before its threads' (they race) never makes `other`
        // negative.
        assert_eq!(split(10, &threads)[&Part::Other], 0.0);
    }

    #[test]
    fn resident_memory_is_read_from_the_vmrss_line_in_kilobytes() {
        let status = "Name:\toutbox-worker\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(2048.0 * 1024.0));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert_eq!(resident_bytes("VmRSS:\t12 pages\n"), None);
    }

    #[test]
    fn this_process_reads_its_own_threads() {
        let parts = this_process().expect("/proc/self is readable on Linux");
        assert_eq!(parts.len(), 4);
        assert!(parts.values().all(|s| *s >= 0.0));
    }

    #[test]
    fn the_start_time_is_boot_time_plus_the_start_ticks() {
        // A name with a space and a parenthesis; starttime (field 22) is 12345 ticks.
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 12345 1000 10 18446744073709551615";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(start_time_seconds(stat, proc_stat), Some(1_700_000_123.45));
        assert_eq!(start_time_seconds(stat, "cpu 1 2 3\n"), None);
        assert_eq!(start_time_seconds("42 (x) S 1", proc_stat), None);
    }

    #[test]
    fn the_collector_output_parses_back_by_part() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let started = samples(&text, "process_start_time_seconds");
        assert_eq!(started.len(), 1, "{text}");
        assert!(started[0].1 > 1.6e9, "a start time after 2020: {text}");
        let resident = samples(&text, "process_resident_memory_bytes");
        assert_eq!(resident.len(), 1, "{text}");
        assert!(
            resident[0].1 > 1e6,
            "a test process holds more than 1 MB: {text}"
        );
        let parts = parse_exposition(&text);
        assert_eq!(
            parts.keys().map(String::as_str).collect::<Vec<_>>(),
            ["kafka-client", "main", "other", "relay"],
            "{text}"
        );
    }
}
