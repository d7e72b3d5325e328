//! Which images a spec may name (pure): the chart's `imagePolicy.allowedRepositories`,
//! the operator's `--allowed-image-repositories`. Whoever may create an OutboxSystem or
//! a LoadTest chooses the image of pods that get the namespace's database Secret; with
//! a list, an image outside it is not run.
//!
//! An entry is a repository or a prefix of repositories on `/` boundaries:
//! `registry.example/team` (or `registry.example/team/`) admits
//! `registry.example/team/worker:1` and `registry.example/team`, never
//! `registry.example/team-evil/worker`. Image and entries are compared in their full
//! form, as the container runtime pulls them: `outbox-worker` is
//! `docker.io/library/outbox-worker`, `team/worker` is `docker.io/team/worker` (an
//! entry too: write a Docker Hub namespace as `docker.io/team/`).

use crate::crd::{LoadTest, OutboxSystem, OutboxSystemSpec};

/// The operator's image policy: empty admits every image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImagePolicy {
    /// Allowed repositories (or repository prefixes), as configured.
    pub allowed_repositories: Vec<String>,
}

/// An image the policy does not admit, with the message a condition and an Event carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageNotAllowed {
    /// The image as the spec names it.
    pub image: String,
    /// Where the spec names it (`spec.image`, `spec.producers.image`, ...).
    pub field: String,
    /// The message: the image, the field and the list.
    pub message: String,
}

/// Reason of the conditions and Events of a refused image.
pub const REASON: &str = "ImageNotAllowed";

impl ImagePolicy {
    /// A policy from the flag's comma-separated list (blanks ignored).
    pub fn from_list(list: &str) -> Self {
        ImagePolicy {
            allowed_repositories: list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// Whether `image` may run: always with an empty list, else when its repository is
    /// an entry or lies under one.
    pub fn admits(&self, image: &str) -> bool {
        if self.allowed_repositories.is_empty() {
            return true;
        }
        let Some(repository) = repository(image) else {
            return false;
        };
        self.allowed_repositories.iter().any(|entry| {
            let Some(entry) = full_name(entry.trim_end_matches('/')) else {
                return false;
            };
            repository == entry
                || repository
                    .strip_prefix(entry.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// The refusal of `image`, named in `field`, when the policy does not admit it.
    pub fn check(&self, field: &str, image: &str) -> Option<ImageNotAllowed> {
        if self.admits(image) {
            return None;
        }
        Some(ImageNotAllowed {
            image: image.to_string(),
            field: field.to_string(),
            message: format!(
                "{field}: image {image} is not in the operator's allowed image repositories ({}; the chart's imagePolicy.allowedRepositories), so it is not run",
                self.allowed_repositories.join(", ")
            ),
        })
    }
}

/// The images an OutboxSystem's spec names that `policy` does not admit, each with its
/// field (the operator's own worker image, used where the spec names none, is the
/// chart's choice and always admitted).
pub fn system_images_not_allowed(
    policy: &ImagePolicy,
    spec: &OutboxSystemSpec,
) -> Vec<ImageNotAllowed> {
    [
        ("spec.image", spec.image.as_ref()),
        ("spec.producers.image", spec.producers.image.as_ref()),
        ("spec.consumers.image", spec.consumers.image.as_ref()),
    ]
    .into_iter()
    .filter_map(|(field, image)| policy.check(field, image?))
    .collect()
}

/// The runner image of `loadtest` (its own, else its system's) when `policy` does not
/// admit it.
pub fn runner_image_not_allowed(
    policy: &ImagePolicy,
    loadtest: &LoadTest,
    system: &OutboxSystem,
) -> Option<ImageNotAllowed> {
    match (&loadtest.spec.image, &system.spec.image) {
        (Some(image), _) => policy.check("spec.image", image),
        (None, Some(image)) => policy.check(
            &format!(
                "spec.image of OutboxSystem {} (the runner's image where the LoadTest names none)",
                system.metadata.name.as_deref().unwrap_or_default()
            ),
            image,
        ),
        (None, None) => None,
    }
}

/// The repository of an image reference in its full form, without tag or digest
/// (`None` for a reference with an empty, `.` or `..` path segment, which no registry
/// serves and which must not climb out of an entry).
fn repository(image: &str) -> Option<String> {
    let name = image.split_once('@').map_or(image, |(name, _digest)| name);
    // A tag follows the last `:` only when no `/` comes after it (else it is a port).
    let name = match name.rsplit_once(':') {
        Some((before, tag)) if !tag.contains('/') => before,
        _ => name,
    };
    full_name(name)
}

/// `name` with the registry and Docker Hub's `library/` spelt out, as a container
/// runtime pulls it: a first segment without `.` or `:` that is not `localhost` is a
/// Docker Hub path.
fn full_name(name: &str) -> Option<String> {
    let segments: Vec<&str> = name.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return None;
    }
    let first = segments[0];
    let has_registry =
        segments.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
    Some(match (has_registry, segments.len()) {
        (true, _) => name.to_string(),
        (false, 1) => format!("docker.io/library/{name}"),
        (false, _) => format!("docker.io/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> ImagePolicy {
        ImagePolicy {
            allowed_repositories: entries.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_list_admits_every_image() {
        assert!(policy(&[]).admits("anything.example/evil:latest"));
        assert_eq!(policy(&[]).check("spec.image", "evil"), None);
    }

    #[test]
    fn an_entry_admits_repositories_under_it_only_on_a_slash_boundary() {
        for entry in ["registry.example/team/", "registry.example/team"] {
            let p = policy(&[entry]);
            assert!(p.admits("registry.example/team/worker:1"), "{entry}");
            assert!(
                p.admits("registry.example/team/sub/worker@sha256:abc"),
                "{entry}"
            );
            assert!(!p.admits("registry.example/team-evil/x"), "{entry}");
            assert!(!p.admits("registry.example/teamx:1"), "{entry}");
            assert!(!p.admits("registry.example.evil/team/worker:1"), "{entry}");
            assert!(
                !p.admits("other.example/registry.example/team/x"),
                "{entry}"
            );
        }
    }

    #[test]
    fn an_entry_naming_one_repository_admits_its_tags_and_digests() {
        let p = policy(&["registry.example/team/worker"]);
        assert!(p.admits("registry.example/team/worker"));
        assert!(p.admits("registry.example/team/worker:2"));
        assert!(p.admits("registry.example/team/worker@sha256:0123"));
        assert!(!p.admits("registry.example/team/worker-evil:2"));
        assert!(!p.admits("registry.example/team/other:2"));
    }

    #[test]
    fn a_registry_port_is_not_taken_for_a_tag() {
        let p = policy(&["localhost:5000/team"]);
        assert!(p.admits("localhost:5000/team/worker:1"));
        assert!(!p.admits("localhost:5001/team/worker:1"));
        assert!(!p.admits("localhost/team/worker:1"));
    }

    #[test]
    fn docker_hub_short_names_are_compared_in_their_full_form() {
        let p = policy(&["docker.io/outbox-dev/"]);
        assert!(p.admits("outbox-dev/worker:1"));
        assert!(p.admits("docker.io/outbox-dev/worker:1"));
        assert!(!p.admits("worker:1"), "docker.io/library/worker");
        let library = policy(&["docker.io/library/busybox"]);
        assert!(library.admits("busybox"));
        assert!(library.admits("busybox:1.36"));
        // An entry written short means what an image written the same way means.
        let short = policy(&["outbox-dev/worker"]);
        assert!(short.admits("docker.io/outbox-dev/worker:1"));
        assert!(!short.admits("outbox-dev/worker-evil:1"));
        let one_segment = policy(&["busybox"]);
        assert!(one_segment.admits("docker.io/library/busybox:1"));
        assert!(!one_segment.admits("busybox/x:1"), "docker.io/busybox/x");
    }

    #[test]
    fn dot_segments_and_empty_segments_never_climb_out_of_an_entry() {
        let p = policy(&["registry.example/team/"]);
        assert!(!p.admits("registry.example/team/../evil/x:1"));
        assert!(!p.admits("registry.example/team/./x:1"));
        assert!(!p.admits("registry.example/team//x:1"));
        assert!(!p.admits(""));
    }

    #[test]
    fn a_refusal_names_the_field_the_image_and_the_list() {
        let p = policy(&["registry.example/team/", "ghcr.io/outbox-dev/"]);
        let refusal = p.check("spec.image", "evil.example/x:1").expect("refused");
        assert_eq!(refusal.image, "evil.example/x:1");
        for part in [
            "spec.image",
            "evil.example/x:1",
            "registry.example/team/, ghcr.io/outbox-dev/",
        ] {
            assert!(
                refusal.message.contains(part),
                "{part}: {}",
                refusal.message
            );
        }
        assert_eq!(p.check("spec.image", "ghcr.io/outbox-dev/worker:1"), None);
    }

    fn system(images: serde_json::Value) -> OutboxSystem {
        let mut spec = serde_json::json!({
            "kafka": {"bootstrapServers": "kafka:9092"},
            "database": {"urlSecretRef": {"name": "outbox-postgres", "key": "url"}},
            "topic": {"name": "events", "partitions": 1}
        });
        if let (Some(spec), Some(images)) = (spec.as_object_mut(), images.as_object()) {
            spec.extend(images.clone());
        }
        let spec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
        OutboxSystem::new("demo", spec)
    }

    fn loadtest(image: Option<&str>) -> LoadTest {
        let mut spec = serde_json::json!({
            "systemRef": {"name": "demo"},
            "scenarios": [{"name": "batch", "messages": 10, "batching": true}]
        });
        if let Some(image) = image {
            spec["image"] = image.into();
        }
        LoadTest::new(
            "lt",
            serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[test]
    fn every_image_a_system_names_outside_the_list_is_refused_with_its_field() {
        let p = policy(&["registry.example/team/"]);
        let ok = "registry.example/team/worker:1";
        let evil = "registry.example/team-evil/worker:1";
        let refused = |images| {
            system_images_not_allowed(&p, &system(images).spec)
                .into_iter()
                .map(|r| (r.field, r.image))
                .collect::<Vec<_>>()
        };
        assert_eq!(refused(serde_json::json!({})), vec![]);
        assert_eq!(
            refused(serde_json::json!({"image": ok, "producers": {"image": ok}})),
            vec![]
        );
        assert_eq!(
            refused(serde_json::json!({
                "image": evil,
                "producers": {"image": evil},
                "consumers": {"image": evil, "groups": [{"name": "a", "replicas": 1}]}
            })),
            vec![
                ("spec.image".to_string(), evil.to_string()),
                ("spec.producers.image".to_string(), evil.to_string()),
                ("spec.consumers.image".to_string(), evil.to_string()),
            ]
        );
        assert!(system_images_not_allowed(
            &policy(&[]),
            &system(serde_json::json!({"image": evil})).spec
        )
        .is_empty());
    }

    #[test]
    fn the_runner_image_is_the_loadtests_else_its_systems_and_is_checked_either_way() {
        let p = policy(&["registry.example/team/"]);
        let ok = "registry.example/team/runner:1";
        let evil = "evil.example/runner:1";
        let bare = system(serde_json::json!({}));
        assert_eq!(runner_image_not_allowed(&p, &loadtest(None), &bare), None);
        assert_eq!(
            runner_image_not_allowed(&p, &loadtest(Some(ok)), &bare),
            None
        );
        let refused = runner_image_not_allowed(&p, &loadtest(Some(evil)), &bare)
            .expect("the LoadTest's image is refused");
        assert_eq!(
            (refused.field.as_str(), refused.image.as_str()),
            ("spec.image", evil)
        );
        let systems = system(serde_json::json!({"image": evil}));
        let refused = runner_image_not_allowed(&p, &loadtest(None), &systems)
            .expect("the system's image, which the runner would run, is refused");
        assert_eq!(refused.image, evil);
        assert!(
            refused.field.contains("OutboxSystem demo"),
            "{}",
            refused.field
        );
        // The LoadTest's own image wins over the system's.
        assert_eq!(
            runner_image_not_allowed(&p, &loadtest(Some(ok)), &systems),
            None
        );
    }

    #[test]
    fn the_flag_is_a_comma_separated_list_and_blanks_are_ignored() {
        assert_eq!(
            ImagePolicy::from_list(" registry.example/team/ ,,ghcr.io/x "),
            policy(&["registry.example/team/", "ghcr.io/x"])
        );
        assert_eq!(ImagePolicy::from_list(""), policy(&[]));
    }
}
