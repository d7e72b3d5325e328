//! Checks on an OutboxSystem spec that the API server's schema cannot express
//! (pure; the schema and CEL rules already refused the rest at admission).

use crate::crd::{AutoscalingMode, ConsumerGroupSpec, OutboxSystemSpec};
use crate::workloads::{config_map_name, consumer_name, producer_name};

/// Longest name a Service may have (DNS-1035 label).
const MAX_SERVICE_NAME: usize = 63;

/// Problems with `spec` for the system named `name`, each naming the field; empty when valid.
pub fn validate(name: &str, spec: &OutboxSystemSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        problems.push(format!(
            "metadata.name {name:?} must start with a letter: it prefixes Service names"
        ));
    }
    if name.contains('.') {
        problems.push(format!(
            "metadata.name {name:?} must not contain '.': it prefixes Service names and Kafka consumer group ids (<namespace>.<name>.<group>)"
        ));
    }
    let mut names = vec![producer_name(name), config_map_name(name)];
    names.extend(
        spec.consumers
            .groups
            .iter()
            .map(|g| consumer_name(name, &g.name)),
    );
    for child in names {
        if child.len() > MAX_SERVICE_NAME {
            problems.push(format!(
                "metadata.name and spec.consumers.groups[].name together are too long: child name {child:?} has {} characters, at most {MAX_SERVICE_NAME} are allowed",
                child.len()
            ));
        }
    }
    for group in &spec.consumers.groups {
        if group.dead_letter_topic.as_deref() == Some(spec.topic.name.as_str()) {
            problems.push(format!(
                "spec.consumers.groups[{}].deadLetterTopic must differ from spec.topic.name",
                group.name
            ));
        }
        problems.extend(autoscaling_problems(group, spec.topic.partitions));
    }
    problems
}

/// The CRD's CEL rules on a group's autoscaling, checked again (an API server that
/// does not evaluate CEL lets them through): max at least min, at most the partitions,
/// no lag threshold without KEDA.
fn autoscaling_problems(group: &ConsumerGroupSpec, partitions: i32) -> Vec<String> {
    let Some(a) = &group.autoscaling else {
        return Vec::new();
    };
    let field = format!("spec.consumers.groups[{}].autoscaling", group.name);
    let mut problems = Vec::new();
    if a.max_replicas < a.min_replicas {
        problems.push(format!(
            "{field}.maxReplicas ({}) must be at least minReplicas ({})",
            a.max_replicas, a.min_replicas
        ));
    }
    if a.max_replicas > partitions {
        problems.push(format!(
            "{field}.maxReplicas ({}) may not exceed spec.topic.partitions ({partitions}): a consumer beyond the partition count gets no partition and only waits",
            a.max_replicas
        ));
    }
    if a.mode == AutoscalingMode::External && a.lag_threshold.is_some() {
        problems.push(format!(
            "{field}.lagThreshold applies to mode keda only: with mode external your own autoscaler decides when to scale"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;

    fn spec(groups: &[&str]) -> OutboxSystemSpec {
        OutboxSystemSpec {
            paused: false,
            retention: Default::default(),
            image: None,
            image_pull_policy: None,
            log_level: None,
            kafka: KafkaSpec {
                bootstrap_servers: "k:9092".into(),
                client_settings_secret_ref: None,
            },
            database: DatabaseSpec::default(),
            topic: TopicSpec {
                name: "t".into(),
                partitions: 1,
                replication_factor: 1,
                ..TopicSpec::default()
            },
            producers: ProducersSpec::default(),
            consumers: ConsumersSpec {
                groups: groups
                    .iter()
                    .map(|g| ConsumerGroupSpec {
                        name: g.to_string(),
                        replicas: 1,
                        retry: RetrySpec::default(),
                        dead_letter_topic: None,
                        pod: PodSettings::default(),
                        pod_disruption_budget: None,
                        autoscaling: None,
                    })
                    .collect(),
                ..ConsumersSpec::default()
            },
        }
    }

    #[test]
    fn reference_spec_is_valid() {
        assert!(validate("demo", &spec(&["group-a", "group-b"])).is_empty());
    }

    #[test]
    fn too_long_child_names_are_refused_naming_the_fields() {
        let long = "g".repeat(40);
        let problems = validate(&"s".repeat(30), &spec(&[&long]));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("spec.consumers.groups[].name"),
            "{problems:?}"
        );
    }

    #[test]
    fn dead_letter_topic_must_differ_from_the_topic() {
        let mut s = spec(&["a"]);
        s.consumers.groups[0].dead_letter_topic = Some("t".into());
        assert!(validate("demo", &s)[0].contains("deadLetterTopic"));
    }

    #[test]
    fn a_name_with_a_dot_is_refused_as_it_would_blur_kafka_group_ids() {
        // `a.b` in `team` with group `c` and `a` with group `b.c` must not meet.
        let problems = validate("orders.eu", &spec(&["group-a"]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("metadata.name \"orders.eu\" must not contain '.'"),
            "{problems:?}"
        );
    }

    fn autoscaled(mode: AutoscalingMode, min: i32, max: i32, lag: Option<i64>) -> OutboxSystemSpec {
        let mut s = spec(&["group-a"]);
        s.topic.partitions = 6;
        s.consumers.groups[0].autoscaling = Some(AutoscalingSpec {
            mode,
            min_replicas: min,
            max_replicas: max,
            lag_threshold: lag,
        });
        s
    }

    #[test]
    fn autoscaling_within_the_partitions_is_valid() {
        assert!(validate("demo", &autoscaled(AutoscalingMode::Keda, 1, 6, Some(1000))).is_empty());
        assert!(validate("demo", &autoscaled(AutoscalingMode::External, 2, 2, None)).is_empty());
    }

    #[test]
    fn autoscaling_beyond_the_partitions_below_its_minimum_or_with_a_useless_threshold_is_refused()
    {
        let problems = validate("demo", &autoscaled(AutoscalingMode::Keda, 1, 7, None));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("maxReplicas (7) may not exceed spec.topic.partitions (6)"),
            "{problems:?}"
        );
        let problems = validate("demo", &autoscaled(AutoscalingMode::Keda, 3, 2, None));
        assert!(
            problems[0].contains("autoscaling.maxReplicas (2) must be at least minReplicas (3)"),
            "{problems:?}"
        );
        let problems = validate(
            "demo",
            &autoscaled(AutoscalingMode::External, 1, 2, Some(10)),
        );
        assert!(
            problems[0].contains("lagThreshold applies to mode keda only"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_autoscaling_sample_is_valid_and_autoscales_group_a_from_1_to_6() {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into());
        let path = std::path::Path::new(&dir).join("../manifests/outbox-system-autoscaling.yaml");
        let yaml =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let system: OutboxSystem = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        assert!(validate("outbox", &system.spec).is_empty());
        let autoscaling = system.spec.consumers.groups[0].autoscaling.clone();
        let Some(a) = autoscaling else {
            panic!("group-a is not autoscaled")
        };
        assert_eq!(
            (a.mode, a.min_replicas, a.max_replicas),
            (AutoscalingMode::Keda, 1, 6)
        );
        assert_eq!(a.lag_threshold(), 1000);
    }

    #[test]
    fn name_must_start_with_a_letter() {
        assert!(validate("1demo", &spec(&[]))[0].contains("metadata.name"));
    }
}
