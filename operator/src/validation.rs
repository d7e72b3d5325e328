//! Checks on an OutboxSystem spec that the API server's schema cannot express
//! (pure; the schema and CEL rules already refused the rest at admission).

use crate::crd::OutboxSystemSpec;
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

    #[test]
    fn name_must_start_with_a_letter() {
        assert!(validate("1demo", &spec(&[]))[0].contains("metadata.name"));
    }
}
