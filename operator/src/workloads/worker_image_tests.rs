//! Unit tests of the image each worker container gets.

use super::*;
use crate::workloads::test_fixtures::*;
use crate::workloads::*;

/// Image and pull policy of the producer and of every consumer group.
fn images(children: &Children) -> Vec<(Option<String>, Option<String>)> {
    std::iter::once(&children.producer)
        .chain(&children.consumers)
        .map(|d| {
            let c = &d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .expect("pod spec")
                .containers[0];
            (c.image.clone(), c.image_pull_policy.clone())
        })
        .collect()
}

#[test]
fn a_spec_without_image_gets_the_operators_worker_image_and_one_with_an_image_keeps_it() {
    let configured = WorkerImage {
        image: "registry.example/outbox-worker:7".into(),
        pull_policy: Some("Always".into()),
    };
    let both = |image: &str, policy: Option<&str>| {
        vec![(Some(image.to_string()), policy.map(String::from)); 4]
    };
    let spec = reference_spec();
    assert_eq!(spec.image, None);
    assert_eq!(
        images(&build(&owner(), &spec, &configured, &[], &Keda::Usable)),
        both("registry.example/outbox-worker:7", Some("Always"))
    );
    // The spec's own image, with the spec's pull policy (none: Kubernetes decides),
    // never the one configured for the operator's default image.
    let mut spec = reference_spec();
    spec.image = Some("example/own:1".into());
    assert_eq!(
        images(&build(&owner(), &spec, &configured, &[], &Keda::Usable)),
        both("example/own:1", None)
    );
    // A role's image before the system's; the spec's pull policy before the default's.
    spec.producers.image = Some("example/producer:2".into());
    spec.image = None;
    spec.image_pull_policy = Some("Never".into());
    let got = images(&build(&owner(), &spec, &configured, &[], &Keda::Usable));
    assert_eq!(
        got[0],
        (Some("example/producer:2".into()), Some("Never".into()))
    );
    assert_eq!(
        got[1..],
        both("registry.example/outbox-worker:7", Some("Never"))[1..]
    );
}
