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

/// The URL with its password replaced, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_value(url);
    };
    // A password may hold `/`, `?`, `#` or `@` unencoded (tokio-postgres reads the
    // credentials up to the first `@`, others up to the last), so everything up to the
    // last `@` is taken for credentials: after the user name it is redacted whole.
    // Where that `@` stood in a query instead, more is hidden than needed, never less.
    let Some((userinfo, after)) = rest.rsplit_once('@') else {
        return format!("{scheme}://{}", redact_query_password(rest));
    };
    let after = redact_query_password(after);
    match userinfo.find([':', '/', '?', '#']) {
        Some(end) => format!("{scheme}://{}:***@{after}", &userinfo[..end]),
        None => format!("{scheme}://{userinfo}@{after}"),
    }
}

/// `password=...` in a URL's query string, redacted.
fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// A key=value connection string (`host=db password='s3 cr@t' dbname=x`) with the
/// password's value (quoted or not) replaced.
fn redact_key_value(dsn: &str) -> String {
    let mut out = String::with_capacity(dsn.len());
    let mut rest = dsn;
    while let Some(at) = find_password_key(rest) {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        out.push_str("password=***");
        let value = after["password".len()..].trim_start();
        let value = value.strip_prefix('=').unwrap_or(value).trim_start();
        rest = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote; `\'` escapes a quote inside.
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            &quoted[end.min(quoted.len())..]
        } else {
            &value[value.find(char::is_whitespace).unwrap_or(value.len())..]
        };
    }
    out.push_str(rest);
    out
}

/// Where a `password` key (followed by `=`) starts, at the start or after whitespace.
fn find_password_key(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password") {
        let at = from + i;
        let starts_word = at == 0 || lower[..at].ends_with(char::is_whitespace);
        let followed = lower[at + "password".len()..].trim_start().starts_with('=');
        if starts_word && followed {
            return Some(at);
        }
        from = at + "password".len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_password_with_an_at_sign_is_redacted_whole() {
        let url = "postgres://outbox:s3cr@t@db.example:5432/outbox?sslmode=require";
        let redacted = redact_url(url);
        assert_eq!(
            redacted,
            "postgres://outbox:***@db.example:5432/outbox?sslmode=require"
        );
    }

    #[test]
    fn a_password_in_the_query_string_is_redacted() {
        let redacted = redact_url("postgres://db/outbox?user=outbox&password=s3cr%40t&x=1");
        assert_eq!(
            redacted,
            "postgres://db/outbox?user=outbox&password=***&x=1"
        );
    }

    #[test]
    fn key_value_passwords_are_redacted_quoted_or_not() {
        assert_eq!(
            redact_url("host=db user=outbox password=s3cr@t dbname=outbox"),
            "host=db user=outbox password=*** dbname=outbox"
        );
        assert_eq!(
            redact_url("host=db password = 'it\\'s s3cr@t' dbname=outbox"),
            "host=db password=*** dbname=outbox"
        );
        assert_eq!(redact_url("PASSWORD=s3cr@t"), "password=***");
        assert_eq!(
            redact_url("host=db oldpassword=x dbname=y"),
            "host=db oldpassword=x dbname=y"
        );
    }

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
    fn a_password_holding_reserved_characters_never_reaches_a_log() {
        for password in testbed_support::passwords_with_every_reserved_character() {
            let url =
                format!("postgres://outbox:{password}@db.example:5432/outbox?sslmode=disable");
            let redacted = redact_url(&url);
            assert!(!redacted.contains("Zq"), "{url} redacted as {redacted}");
            assert!(
                redacted.starts_with("postgres://outbox:***@db.example:5432/outbox"),
                "the user and host stay for whoever reads the log: {redacted}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://outbox:secret@127.0.0.1:5432/outbox"),
            "postgres://outbox:***@127.0.0.1:5432/outbox"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn topic_lists_are_trimmed() {
        let raw = vec![" a".to_string(), String::new(), "b ".to_string()];
        assert_eq!(clean_topics(&raw), vec!["a", "b"]);
    }
}
