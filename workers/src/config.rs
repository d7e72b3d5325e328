//! Settings shared by every role: each one a flag with an environment fallback.

use std::collections::BTreeMap;

use outbox_contract::worker_env::{defaults, names};

/// Settings every role needs.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Name of this instance in logs, metrics and the relay's leader record.
    #[arg(long, env = names::SERVICE_ID, default_value = "outbox-worker")]
    pub service_id: String,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(
        long,
        env = names::KAFKA_BOOTSTRAP_SERVERS,
        value_name = "KAFKA_BOOTSTRAP_SERVERS"
    )]
    pub kafka_bootstrap_servers: String,
    /// PostgreSQL URL, `postgres://user:password@host:port/db`.
    #[arg(
        long,
        env = names::DATABASE_URL,
        hide_env_values = true,
        value_name = "DATABASE_URL"
    )]
    pub database_url: String,
    /// Comma-separated topics: the producer accepts messages for these only, the
    /// consumer subscribes to them.
    #[arg(
        long,
        env = names::KAFKA_TOPICS,
        value_delimiter = ',',
        required = true,
        value_name = "KAFKA_TOPICS"
    )]
    pub kafka_topics: Vec<String>,
    /// Port of the HTTP API, health and metrics.
    #[arg(long, env = names::HTTP_PORT, default_value_t = defaults::HTTP_PORT)]
    pub http_port: u16,
    /// Address the HTTP server binds (all interfaces in a pod; tests use 127.0.0.1).
    #[arg(long, env = "HTTP_ADDRESS", default_value = "0.0.0.0")]
    pub http_address: std::net::IpAddr,
    /// The OutboxSystem (`namespace/name`) these workers serve: they use the database
    /// schema only while it is this system's (`outbox_owner`), and wait otherwise.
    /// Unset (outside the operator): no check.
    #[arg(long, env = names::OUTBOX_SYSTEM)]
    pub outbox_system: Option<String>,
}

impl CommonArgs {
    /// Binds the HTTP API's listener on `HTTP_ADDRESS:HTTP_PORT`; returns it and the
    /// address, for the start-up log.
    pub async fn bind_http(
        &self,
    ) -> crate::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
        let address = std::net::SocketAddr::new(self.http_address, self.http_port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| crate::Error::Io {
                context: format!("binding the HTTP port {address}"),
                source,
            })?;
        Ok((listener, address))
    }

    /// Topics with surrounding blanks and empty entries removed.
    pub fn topics(&self) -> Vec<String> {
        clean_topics(&self.kafka_topics)
    }

    /// Refuses settings that parse but cannot work.
    pub fn validate(&self) -> crate::Result<()> {
        if self.topics().is_empty() {
            return Err(crate::Error::Config(
                "KAFKA_TOPICS (--kafka-topics) names no topic".into(),
            ));
        }
        if self.kafka_bootstrap_servers.trim().is_empty() {
            return Err(crate::Error::Config(
                "KAFKA_BOOTSTRAP_SERVERS (--kafka-bootstrap-servers) is empty".into(),
            ));
        }
        Ok(())
    }
}

/// Trims topic names and drops empty ones.
pub fn clean_topics(raw: &[String]) -> Vec<String> {
    raw.iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// rdkafka properties from `KAFKA_CLIENT_<PROPERTY>` variables: the prefix dropped,
/// underscores become dots, lower case (`KAFKA_CLIENT_SECURITY_PROTOCOL=SASL_SSL` gives
/// `security.protocol=SASL_SSL`).
pub fn kafka_client_properties_from<I>(vars: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    vars.into_iter()
        .filter_map(|(name, value)| {
            Some((
                outbox_contract::worker_env::kafka_client_property(&name)?,
                value,
            ))
        })
        .collect()
}

/// [`kafka_client_properties_from`] over this process's environment.
pub fn kafka_client_properties() -> BTreeMap<String, String> {
    kafka_client_properties_from(std::env::vars())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_client_variables_become_rdkafka_properties() {
        let props = kafka_client_properties_from([
            (
                "KAFKA_CLIENT_SECURITY_PROTOCOL".to_string(),
                "SASL_SSL".to_string(),
            ),
            (
                "KAFKA_CLIENT_SASL_MECHANISM".to_string(),
                "PLAIN".to_string(),
            ),
            ("KAFKA_TOPICS".to_string(), "a".to_string()),
            ("KAFKA_CLIENT_".to_string(), "x".to_string()),
        ]);
        assert_eq!(props.len(), 2);
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.mechanism"], "PLAIN");
    }

    #[test]
    fn topic_lists_are_trimmed() {
        let raw = vec![" a".to_string(), String::new(), "b ".to_string()];
        assert_eq!(clean_topics(&raw), vec!["a", "b"]);
    }
}
