//! The Job that runs a LoadTest (pure builder).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, PodSpec, PodTemplateSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::crd::{LoadTest, OutboxSystem};
use crate::workloads::{
    common_env, container_security_context, env_from, pod_security_context, with_pod_settings,
    worker_labels, worker_volumes, WorkerImage, WORKER_BINARY,
};

/// Label naming the LoadTest a Job runs.
pub const LOADTEST_LABEL: &str = outbox_contract::labels::LOADTEST_NAME;

/// New runner pods the Job may start after one died before the run ended.
pub const RUNNER_RETRIES: i32 = 3;

/// The runner pod's own name, from the downward API (`metadata.name`): a runner of a
/// parallel run signs its line of `status.runners` with it.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// The deterministic Job name of a LoadTest: one LoadTest, one Job, ever.
pub fn job_name(loadtest: &str) -> String {
    format!("{loadtest}-run")
}

/// What the Job builder needs.
#[derive(Debug, Clone)]
pub struct RunnerParams<'a> {
    /// LoadTest name.
    pub name: &'a str,
    /// Namespace of the LoadTest and its system.
    pub namespace: &'a str,
    /// Controller owner reference to the LoadTest.
    pub owner_ref: OwnerReference,
    /// ServiceAccount of the runner.
    pub service_account: &'a str,
    /// The runner's image when neither the LoadTest nor its OutboxSystem names one.
    pub worker_image: &'a WorkerImage,
}

/// The metadata of what the operator makes for a run beside its Job: in the LoadTest's
/// namespace, labelled with it, controlled by it (deleted with it).
fn run_object_meta(params: &RunnerParams<'_>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(params.namespace.to_string()),
        labels: Some(BTreeMap::from([
            (LOADTEST_LABEL.to_string(), params.name.to_string()),
            (
                outbox_contract::labels::MANAGED_BY.to_string(),
                outbox_contract::labels::OPERATOR.to_string(),
            ),
        ])),
        owner_references: Some(vec![params.owner_ref.clone()]),
        ..ObjectMeta::default()
    }
}

/// The run's report ConfigMap, empty: made before the Job, so that the runner only ever
/// patches it, and owned by the LoadTest. The runner fills `report.html`.
pub fn report_config_map(params: &RunnerParams<'_>) -> ConfigMap {
    ConfigMap {
        metadata: run_object_meta(
            params,
            outbox_contract::loadtest_report::config_map_name(params.name),
        ),
        ..ConfigMap::default()
    }
}

/// The Role that lets the runner get and patch (server-side apply) its report ConfigMap
/// and no other: the runner's ClusterRole has no ConfigMap rule at all, so a runner
/// image can neither change the system's ConfigMap (its workers' settings) nor create
/// ConfigMaps. `update` is left out: server-side apply is a patch.
pub fn report_writer_role(params: &RunnerParams<'_>) -> Role {
    Role {
        metadata: run_object_meta(
            params,
            outbox_contract::loadtest_report::writer_role_name(params.name),
        ),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_string()]),
            resource_names: Some(vec![outbox_contract::loadtest_report::config_map_name(
                params.name,
            )]),
            verbs: vec!["get".to_string(), "patch".to_string()],
            non_resource_urls: None,
        }]),
    }
}

/// Binds [`report_writer_role`] to the runner's ServiceAccount.
pub fn report_writer_binding(params: &RunnerParams<'_>) -> RoleBinding {
    let name = outbox_contract::loadtest_report::writer_role_name(params.name);
    RoleBinding {
        metadata: run_object_meta(params, name.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: params.service_account.to_string(),
            namespace: Some(params.namespace.to_string()),
            api_group: None,
        }]),
    }
}

/// Seconds a runner Job may run before Kubernetes stops it (`activeDeadlineSeconds`):
/// ten minutes to start, the messages at no less than 1,000 per second (an arrival-rate
/// scenario: its stages' durations), the verification timeout, the runner's five
/// minutes of patience with producers that push back and its five minutes of patience
/// with an outbox database that is away. A run that takes longer is stuck, and ends
/// Failed instead of running on.
pub fn deadline_seconds(spec: &crate::crd::LoadTestSpec) -> i64 {
    let sending: i64 = spec
        .scenarios
        .iter()
        .map(|s| match &s.arrival_rate {
            Some(rate) => rate
                .stages
                .iter()
                .map(|stage| stage.duration_seconds.max(0))
                .sum(),
            None => s.messages.unwrap_or(0).max(0) / 1_000,
        })
        .sum();
    600 + sending + spec.verification_timeout_seconds.max(0) + 300 + 300
}

/// The runner's arguments: `loadtest --namespace <ns> --name <loadtest>`, and
/// `--runners <parallelism>` when more than one runner drives the run (each reads its
/// own index from `JOB_COMPLETION_INDEX`, which Kubernetes sets in an Indexed Job).
fn runner_args(params: &RunnerParams<'_>, parallelism: i32) -> Vec<String> {
    let mut args = vec![
        "loadtest".to_string(),
        "--namespace".to_string(),
        params.namespace.to_string(),
        "--name".to_string(),
        params.name.to_string(),
    ];
    if parallelism > 1 {
        args.extend(["--runners".to_string(), parallelism.to_string()]);
    }
    args
}

/// The runner's environment: what every worker gets, and its pod's name as
/// [`POD_NAME_ENV`].
fn runner_env(system: &OutboxSystem) -> Vec<EnvVar> {
    let mut env = common_env(&system.spec, 8080);
    env.push(crate::workloads::pod_name_env(POD_NAME_ENV));
    env
}

/// Makes `spec` an Indexed Job of `parallelism` pods when that is more than 1, one
/// completion per index; the retries grow with the pods, since a replaced pod of any
/// index resumes its segment. With 1 the Job stays a plain Job of one pod.
fn with_parallelism(spec: JobSpec, parallelism: i32) -> JobSpec {
    if parallelism <= 1 {
        return spec;
    }
    JobSpec {
        completion_mode: Some("Indexed".to_string()),
        completions: Some(parallelism),
        parallelism: Some(parallelism),
        backoff_limit: Some(RUNNER_RETRIES.saturating_mul(parallelism)),
        ..spec
    }
}

/// The runner Job: `outbox-worker loadtest --namespace <ns> --name <loadtest>`, with the
/// system's settings in its environment, `spec.runner`'s resources (or the defaults)
/// and pod settings; a runner that dies is replaced and resumes. With `parallelism`
/// above 1 an Indexed Job of that many runner pods (`with_parallelism`).
pub fn runner_job(params: &RunnerParams<'_>, loadtest: &LoadTest, system: &OutboxSystem) -> Job {
    let system_name = system.metadata.name.clone().unwrap_or_default();
    let mut labels = worker_labels(&system_name, outbox_contract::labels::LOADTEST);
    labels.insert(LOADTEST_LABEL.to_string(), params.name.to_string());
    let (image, image_pull_policy) = params.worker_image.resolve(
        &[loadtest.spec.image.as_ref(), system.spec.image.as_ref()],
        system.spec.image_pull_policy.as_ref(),
    );
    let (volumes, mounts) = worker_volumes(&system.spec);
    let container = Container {
        name: "runner".to_string(),
        image: Some(image),
        image_pull_policy,
        command: Some(vec![WORKER_BINARY.to_string()]),
        args: Some(runner_args(params, loadtest.spec.parallelism)),
        env: Some(runner_env(system)),
        // The system's ConfigMap, not its Kafka client settings: the runner reaches the
        // producers over HTTP and the ledger in PostgreSQL, never Kafka.
        env_from: Some(env_from(&system_name)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        resources: Some(loadtest.spec.runner.resources_or_default()),
        ..Container::default()
    };
    let job = Job {
        metadata: ObjectMeta {
            name: Some(job_name(params.name)),
            namespace: Some(params.namespace.to_string()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![params.owner_ref.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // A runner that dies (killed, evicted, its node restarted) is replaced by a
            // new pod that resumes the run from its status and the outbox; one that
            // finished or failed the run recorded that in status and exits 0.
            backoff_limit: Some(RUNNER_RETRIES),
            active_deadline_seconds: Some(deadline_seconds(&loadtest.spec)),
            // Kubernetes deletes the finished Job (and its pod) itself, whether or not
            // the operator runs then; the results stay in the LoadTest's status.
            ttl_seconds_after_finished: loadtest
                .spec
                .ttl_seconds_after_finished
                .map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
            template: with_pod_settings(
                PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".to_string()),
                        service_account_name: Some(params.service_account.to_string()),
                        containers: vec![container],
                        security_context: Some(pod_security_context()),
                        volumes: Some(volumes),
                        ..PodSpec::default()
                    }),
                },
                &loadtest.spec.runner.pod,
            ),
            ..JobSpec::default()
        }),
        status: None,
    };
    Job {
        spec: job
            .spec
            .map(|spec| with_parallelism(spec, loadtest.spec.parallelism)),
        ..job
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;

    fn system() -> OutboxSystem {
        let spec: OutboxSystemSpec = serde_json::from_value(serde_json::json!({
            "kafka": {"bootstrapServers": "kafka:9092"},
            "database": {"urlSecretRef": {"name": "outbox-postgres", "key": "url"}},
            "topic": {"name": "shared-events", "partitions": 6},
            "image": "example/worker:1"
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        OutboxSystem::new("demo", spec)
    }

    fn loadtest() -> LoadTest {
        let spec: LoadTestSpec = serde_json::from_value(serde_json::json!({
            "systemRef": {"name": "demo"},
            "scenarios": [{"name": "batch", "messages": 30000, "batching": true}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        LoadTest::new("small", spec)
    }

    fn params() -> RunnerParams<'static> {
        RunnerParams {
            name: "small",
            namespace: "ns",
            owner_ref: OwnerReference {
                api_version: "outbox.dev/v1alpha1".into(),
                kind: "LoadTest".into(),
                name: "small".into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            service_account: "outbox-loadtest",
            worker_image: &CONFIGURED,
        }
    }

    /// The operator's worker image in these tests (its `--worker-image`).
    static CONFIGURED: std::sync::LazyLock<WorkerImage> =
        std::sync::LazyLock::new(|| WorkerImage {
            image: "registry.example/outbox-worker:7".into(),
            pull_policy: Some("IfNotPresent".into()),
        });

    fn runner_image(job: &Job) -> (Option<String>, Option<String>) {
        let c = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].clone())
            .unwrap_or_default();
        (c.image, c.image_pull_policy)
    }

    #[test]
    fn the_loadtests_ttl_is_the_jobs_own_so_kubernetes_deletes_the_finished_job() {
        let mut lt = loadtest();
        let job = runner_job(&params(), &lt, &system());
        assert_eq!(job.spec.and_then(|s| s.ttl_seconds_after_finished), None);
        lt.spec.ttl_seconds_after_finished = Some(600);
        let job = runner_job(&params(), &lt, &system());
        assert_eq!(
            job.spec.and_then(|s| s.ttl_seconds_after_finished),
            Some(600)
        );
    }

    #[test]
    fn the_job_carries_the_label_the_operators_watch_selects_by() {
        let job = runner_job(&params(), &loadtest(), &system());
        assert!(crate::workloads::test_fixtures::watched_by_the_operator(
            &job.metadata
        ));
    }

    #[test]
    fn job_runs_the_runner_for_this_loadtest_and_replaces_a_runner_that_died() {
        let job = runner_job(&params(), &loadtest(), &system());
        assert_eq!(job.metadata.name.as_deref(), Some("small-run"));
        let spec = job.spec.unwrap_or_default();
        assert_eq!(spec.backoff_limit, Some(RUNNER_RETRIES));
        let pod = spec.template.spec.unwrap_or_default();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("outbox-loadtest"));
        let c = &pod.containers[0];
        assert_eq!(c.command, Some(vec!["outbox-worker".to_string()]));
        assert_eq!(
            c.args.clone().unwrap_or_default(),
            ["loadtest", "--namespace", "ns", "--name", "small"]
        );
        assert_eq!(c.image.as_deref(), Some("example/worker:1"));
    }

    /// The runner container of `job`.
    fn runner_container(job: &Job) -> Container {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].clone())
            .unwrap_or_default()
    }

    #[test]
    fn parallelism_3_makes_an_indexed_job_of_3_pods_each_told_there_are_3_runners() {
        let mut lt = loadtest();
        lt.spec.parallelism = 3;
        let job = runner_job(&params(), &lt, &system());
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("small-run"),
            "still one Job"
        );
        let spec = job.spec.clone().unwrap_or_default();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(3));
        assert_eq!(spec.parallelism, Some(3));
        assert_eq!(
            spec.backoff_limit,
            Some(RUNNER_RETRIES * 3),
            "a replaced pod of any index resumes its segment"
        );
        let pod = spec.template.spec.unwrap_or_default();
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            runner_container(&job).args.unwrap_or_default(),
            [
                "loadtest",
                "--namespace",
                "ns",
                "--name",
                "small",
                "--runners",
                "3"
            ]
        );
    }

    #[test]
    fn parallelism_1_keeps_the_plain_job_of_one_pod_without_runners_flag() {
        let job = runner_job(&params(), &loadtest(), &system());
        let spec = job.spec.clone().unwrap_or_default();
        assert_eq!(spec.completion_mode, None);
        assert_eq!(spec.completions, None);
        assert_eq!(spec.parallelism, None);
        assert_eq!(spec.backoff_limit, Some(RUNNER_RETRIES));
        let args = runner_container(&job).args.unwrap_or_default();
        assert!(!args.iter().any(|a| a == "--runners"), "{args:?}");
    }

    #[test]
    fn every_runner_pod_gets_its_own_name_as_pod_name_from_the_downward_api() {
        for parallelism in [1, 4] {
            let mut lt = loadtest();
            lt.spec.parallelism = parallelism;
            let env = runner_container(&runner_job(&params(), &lt, &system()))
                .env
                .unwrap_or_default();
            let pod_name: Vec<_> = env.iter().filter(|e| e.name == "POD_NAME").collect();
            assert_eq!(pod_name.len(), 1, "{env:?}");
            let field = pod_name[0]
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            assert_eq!(field, Some("metadata.name"));
            assert_eq!(pod_name[0].value, None);
        }
    }

    #[test]
    fn the_runners_role_may_get_and_patch_only_its_own_report_config_map() {
        let role = report_writer_role(&params());
        assert_eq!(role.metadata.name.as_deref(), Some("small-report-writer"));
        assert_eq!(role.metadata.namespace.as_deref(), Some("ns"));
        let rules = role.rules.unwrap_or_default();
        assert_eq!(rules.len(), 1, "{rules:?}");
        let rule = &rules[0];
        assert_eq!(rule.api_groups.as_deref(), Some(&["".to_string()][..]));
        assert_eq!(
            rule.resources.as_deref(),
            Some(&["configmaps".to_string()][..])
        );
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&["small-report".to_string()][..]),
            "only its own report, never the system's ConfigMap"
        );
        assert_eq!(rule.verbs, ["get", "patch"]);
        assert!(!rule.verbs.iter().any(|v| v == "create" || v == "*"));

        let binding = report_writer_binding(&params());
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some("small-report-writer")
        );
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("Role", "small-report-writer")
        );
        let subjects = binding.subjects.unwrap_or_default();
        assert_eq!(
            subjects
                .iter()
                .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
                .collect::<Vec<_>>(),
            [("ServiceAccount", "outbox-loadtest", Some("ns"))]
        );
        for meta in [&role.metadata, &binding.metadata] {
            assert_eq!(meta.owner_references, Some(vec![params().owner_ref]));
        }
    }

    #[test]
    fn the_report_config_map_is_made_empty_and_owned_by_the_loadtest() {
        let cm = report_config_map(&params());
        assert_eq!(cm.metadata.name.as_deref(), Some("small-report"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(cm.metadata.owner_references, Some(vec![params().owner_ref]));
        assert_eq!(
            cm.data, None,
            "the runner fills it; an apply of the operator never empties it"
        );
        assert!(crate::workloads::test_fixtures::watched_by_the_operator(
            &cm.metadata
        ));
    }

    #[test]
    fn the_runner_gets_no_kafka_client_settings_and_no_whole_secret() {
        let mut sys = system();
        sys.spec.kafka.client_settings_secret_ref = Some(SecretRef {
            name: "kafka-client".into(),
        });
        let job = runner_job(&params(), &loadtest(), &sys);
        let c = job
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].clone())
            .unwrap_or_default();
        assert!(
            c.env_from.iter().flatten().all(|f| f.secret_ref.is_none()),
            "{:?}",
            c.env_from
        );
        let secrets: Vec<&str> = c
            .env
            .iter()
            .flatten()
            .filter_map(|e| {
                Some(
                    e.value_from
                        .as_ref()?
                        .secret_key_ref
                        .as_ref()?
                        .name
                        .as_str(),
                )
            })
            .collect();
        assert_eq!(secrets, ["outbox-postgres"], "only the database URL");
    }

    #[test]
    fn loadtest_image_overrides_the_system_image() {
        let mut lt = loadtest();
        lt.spec.image = Some("example/runner:2".into());
        let job = runner_job(&params(), &lt, &system());
        let image = job
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].image.clone());
        assert_eq!(image, Some(Some("example/runner:2".to_string())));
    }

    #[test]
    fn without_an_image_in_the_loadtest_or_its_system_the_runner_gets_the_operators_worker_image() {
        let mut bare = system();
        bare.spec.image = None;
        assert_eq!(
            runner_image(&runner_job(&params(), &loadtest(), &bare)),
            (
                Some("registry.example/outbox-worker:7".into()),
                Some("IfNotPresent".into())
            )
        );
        // The system's own image keeps its place, with the system's pull policy (none).
        assert_eq!(
            runner_image(&runner_job(&params(), &loadtest(), &system())),
            (Some("example/worker:1".into()), None)
        );
    }

    fn container_resources(job: &Job) -> Option<k8s_openapi::api::core::v1::ResourceRequirements> {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].resources.clone())
    }

    #[test]
    fn the_runner_gets_resources_sized_from_the_reference_run_unless_the_loadtest_sets_them() {
        let job = runner_job(&params(), &loadtest(), &system());
        let resources = container_resources(&job).unwrap_or_default();
        let quantity = |map: &Option<std::collections::BTreeMap<String, _>>, key: &str| {
            map.as_ref()
                .and_then(|m| m.get(key))
                .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
        };
        assert_eq!(quantity(&resources.requests, "cpu").as_deref(), Some("50m"));
        assert_eq!(
            quantity(&resources.requests, "memory").as_deref(),
            Some("128Mi")
        );
        assert_eq!(
            quantity(&resources.limits, "memory").as_deref(),
            Some("256Mi")
        );
        assert_eq!(
            quantity(&resources.limits, "cpu"),
            None,
            "a throttled runner would measure its own stalls as latency"
        );

        let mut lt = loadtest();
        let own: k8s_openapi::api::core::v1::ResourceRequirements =
            serde_json::from_value(serde_json::json!({"limits": {"memory": "1Gi"}}))
                .unwrap_or_else(|e| panic!("{e}"));
        lt.spec.runner.resources = Some(own.clone());
        let job = runner_job(&params(), &lt, &system());
        assert_eq!(container_resources(&job), Some(own));
    }

    #[test]
    fn every_pod_setting_of_spec_runner_lands_in_the_runner_pod_template() {
        let mut lt = loadtest();
        lt.spec.runner.pod = crate::workloads::test_fixtures::every_pod_setting();
        let job = runner_job(&params(), &lt, &system());
        let template = job.spec.clone().map(|s| s.template).unwrap_or_default();
        let own = job.metadata.labels.clone().unwrap_or_default();
        crate::workloads::test_fixtures::assert_every_pod_setting_in(&template, &own);
        // The Job itself carries only the operator's labels.
        assert_eq!(
            job.metadata.labels.and_then(|l| l.get("team").cloned()),
            None
        );
    }

    #[test]
    fn a_users_runner_pod_labels_never_replace_the_operators_own() {
        let mut lt = loadtest();
        lt.spec.runner.pod.metadata.labels = outbox_contract::labels::RESERVED
            .iter()
            .map(|k| (k.to_string(), "someone-else".to_string()))
            .collect();
        let job = runner_job(&params(), &lt, &system());
        let own = job.metadata.labels.clone().unwrap_or_default();
        assert_eq!(own.get(LOADTEST_LABEL).map(String::as_str), Some("small"));
        let pod_labels = job
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.labels)
            .unwrap_or_default();
        for (key, value) in &own {
            assert_eq!(pod_labels.get(key), Some(value), "{key}");
        }
    }

    #[test]
    fn the_job_deadline_grows_with_the_messages_and_the_verification_timeout() {
        let reference: crate::crd::LoadTest = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/loadtest-reference.yaml"
            ))
            .expect("the reference LoadTest"),
        )
        .expect("parses");
        // 10,005,000 messages: 10,005 s at 1,000 msg/s, plus start, verification, and
        // the patience with producers and with the database.
        assert_eq!(
            crate::runner_job::deadline_seconds(&reference.spec),
            600 + 10_005 + reference.spec.verification_timeout_seconds + 300 + 300
        );
        let mut empty = reference.spec.clone();
        empty.scenarios.clear();
        empty.verification_timeout_seconds = 600;
        assert_eq!(
            crate::runner_job::deadline_seconds(&empty),
            600 + 600 + 300 + 300
        );
        // Arrival-rate scenarios take their stages' time, whatever the rate.
        let rate: crate::crd::LoadTest = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/loadtest-rate.yaml"
            ))
            .expect("the rate LoadTest"),
        )
        .expect("parses");
        assert_eq!(
            crate::runner_job::deadline_seconds(&rate.spec),
            600 + 60 + 60 + rate.spec.verification_timeout_seconds + 300 + 300
        );
    }
}
