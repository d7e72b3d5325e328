//! The crate's error type.

/// Everything that can go wrong while reconciling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object breaks a rule the API server could not check.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// A call to the Kubernetes API failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// A Kafka admin or metadata call failed.
    #[error("Kafka {action}: {source}")]
    Kafka {
        /// What the operator was doing.
        action: String,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// The topic could not be reconciled; the status says why and the reconcile backs off.
    #[error("topic {topic}: {message}")]
    TopicNotReconciled {
        /// Topic name.
        topic: String,
        /// What went wrong.
        message: String,
    },

    /// A blocking Kafka call could not be run.
    #[error("Kafka {action}: the blocking task failed: {source}")]
    KafkaTask {
        /// What the operator was doing.
        action: String,
        /// Why the task failed.
        #[source]
        source: tokio::task::JoinError,
    },

    /// The client-settings Secret names librdkafka properties the operator's own Kafka
    /// client does not take (file paths, plugins, commands, OAuth endpoints, ...).
    #[error("Secret {namespace}/{name} (spec.kafka.clientSettingsSecretRef): the operator's own Kafka client does not take {refused}, so it does not connect with these settings; it takes only {accepted} (certificates and keys inline as ssl.ca.pem, ssl.certificate.pem, ssl.key.pem). The workers still get every KAFKA_CLIENT_* key")]
    KafkaClientSettingRefused {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The refused keys with their properties, e.g. `KAFKA_CLIENT_SSL_CA_LOCATION
        /// (ssl.ca.location)`.
        refused: String,
        /// The properties it takes, comma-separated.
        accepted: String,
    },

    /// A Secret the spec references is missing or lacks the key.
    #[error("Secret {namespace}/{name}: {problem}")]
    Secret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What is wrong with it.
        problem: String,
    },

    /// Adding, running or removing the topic finalizer failed.
    #[error("finalizer: {source}")]
    Finalizer {
        /// The finalizer error (wrapping the reconcile error when apply or cleanup failed).
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },

    /// An object could not be turned into JSON.
    #[error("serializing {what}: {source}")]
    Serialize {
        /// What was serialized.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// An object lacks a field the API server always sets (name, namespace, uid).
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
}

impl Error {
    /// A short, stable label for metrics (`error="..."`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Kube { .. } => "kube",
            Error::Kafka { .. } => "kafka",
            Error::KafkaTask { .. } => "kafka_task",
            Error::TopicNotReconciled { .. } => "topic",
            Error::Secret { .. } => "secret",
            Error::KafkaClientSettingRefused { .. } => "kafka_client_setting_refused",
            Error::Finalizer { source } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::Serialize { .. } => "serialize",
            Error::MissingObjectKey(_) => "missing_object_key",
        }
    }

    /// True for errors that a retry cannot fix: the controller waits for a spec change.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidSpec(_) => true,
            Error::Finalizer { source } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_permanent(),
                _ => false,
            },
            _ => false,
        }
    }

    /// Wraps a Kubernetes API error with what the operator was doing.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// Wraps a Kafka error with what the operator was doing.
    pub fn kafka(action: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
        let action = action.into();
        move |source| Error::Kafka { action, source }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_spec_is_permanent_and_labelled() {
        let e = Error::InvalidSpec("x".into());
        assert!(e.is_permanent());
        assert_eq!(e.metric_label(), "invalid_spec");
    }

    #[test]
    fn finalizer_errors_take_the_label_of_the_wrapped_error() {
        let e = Error::Finalizer {
            source: Box::new(kube::runtime::finalizer::Error::ApplyFailed(
                Error::InvalidSpec("x".into()),
            )),
        };
        assert_eq!(e.metric_label(), "invalid_spec");
        assert!(e.is_permanent());
        let e = Error::Secret {
            namespace: "ns".into(),
            name: "s".into(),
            problem: "not found".into(),
        };
        assert!(!e.is_permanent());
        assert_eq!(e.metric_label(), "secret");
    }
}
