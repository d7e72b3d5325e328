//! Smoke tests: each real testbed component answers and does real work.
//! Run through `make test` (which brings the testbed up) or after `make testbed-up`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use testbed_support::{apply_crd, eventually, testbed, unique_name};

#[tokio::test]
async fn apiserver_stores_a_namespace_and_serves_a_new_crd() {
    let client = testbed().kube_client().await.expect("kube client");

    let name = unique_name("smoke-ns");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "testbed": "smoke" } }
    }))
    .expect("namespace");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let read = namespaces.get(&name).await.expect("read namespace");
    assert_eq!(
        read.metadata.labels.unwrap_or_default().get("testbed"),
        Some(&"smoke".to_string())
    );

    // A CRD is accepted, becomes Established, and its group is then served.
    let suffix = unique_name("w").replace('-', "");
    let plural = format!("widgets{suffix}");
    let crd_name = format!("{plural}.smoke.outbox.dev");
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": { "name": crd_name },
        "spec": {
            "group": "smoke.outbox.dev",
            "scope": "Namespaced",
            "names": { "plural": plural, "singular": format!("widget{suffix}"), "kind": format!("Widget{suffix}") },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                    "spec": { "type": "object", "properties": { "size": { "type": "integer", "minimum": 1 } } }
                } } }
            }]
        }
    }))
    .expect("crd");
    apply_crd(&client, &crd, "smoke-test").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let read = crds.get(&crd_name).await.expect("read CRD");
    assert_eq!(read.spec.group, "smoke.outbox.dev");

    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .expect("delete CRD");
    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete namespace");
}

#[tokio::test]
async fn kafka_admin_creates_a_topic_with_six_partitions() {
    let tb = testbed();
    let topic = unique_name("smoke-topic");
    let admin: AdminClient<DefaultClientContext> =
        tb.kafka_config().create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(&topic, 6, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics request");
    for result in results {
        result.expect("topic created");
    }

    let consumer: BaseConsumer = tb.kafka_config().create().expect("metadata client");
    let partitions = eventually(
        "the topic's metadata to list its partitions",
        Duration::from_secs(20),
        || {
            let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5));
            async move {
                let md = md.ok()?;
                let t = md.topics().first()?;
                (t.error().is_none() && !t.partitions().is_empty()).then(|| t.partitions().len())
            }
        },
    )
    .await;
    assert_eq!(partitions, 6);
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .expect("cluster metadata");
    assert_eq!(md.brokers().len(), 1, "single-node KRaft broker");

    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .expect("delete topic");
}

#[tokio::test]
async fn postgres_writes_and_reads_back_a_row_in_a_fresh_schema() {
    let url = testbed().fresh_schema("smoke").await.expect("fresh schema");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE greetings (id bigint PRIMARY KEY, text text NOT NULL)")
        .await
        .expect("create table");
    client
        .execute(
            "INSERT INTO greetings VALUES ($1, $2)",
            &[&7_i64, &"hello from the testbed"],
        )
        .await
        .expect("insert");
    let row = client
        .query_one("SELECT text FROM greetings WHERE id = $1", &[&7_i64])
        .await
        .expect("select");
    assert_eq!(row.get::<_, String>(0), "hello from the testbed");
    let schema: String = client
        .query_one("SELECT current_schema()", &[])
        .await
        .expect("current schema")
        .get(0);
    assert!(
        schema.starts_with("smoke_"),
        "test runs in its own schema, got {schema}"
    );
}
