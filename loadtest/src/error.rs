//! Errors of the load-test runner.

/// Everything that stops a load test, with what the runner was doing when it happened.
#[derive(Debug, thiserror::Error)]
pub enum LoadTestError {
    /// The settings (flags or the LoadTest spec) cannot describe a run.
    #[error("load test settings: {0}")]
    Settings(String),
    /// The LoadTest CRD on the API server lacks status fields this runner writes.
    #[error("the LoadTest CRD on the API server is older than this runner: it does not declare {fields}; apply the chart's CRDs (kubectl apply --server-side -f charts/outbox-operator/crds/), which helm install and upgrade never update once they exist")]
    StaleCrd { fields: String },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    /// No Kubernetes client could be built (no kubeconfig, no in-cluster config).
    #[error("building a Kubernetes client: {source}")]
    KubeConfig {
        #[source]
        source: kube::Error,
    },
    /// The referenced OutboxSystem has no ready producer to send to.
    #[error("no ready producer endpoint for Service {namespace}/{service} (EndpointSlices labelled kubernetes.io/service-name={service})")]
    NoProducers { namespace: String, service: String },
    /// The HTTP client could not be built.
    #[error("HTTP client: {source}")]
    Http {
        #[source]
        source: reqwest::Error,
    },
    /// The outbox database or its acknowledgement ledger failed (connecting, reading).
    #[error("{context}: {source}")]
    Ledger {
        context: &'static str,
        #[source]
        source: outbox_core::Error,
    },
    /// A verification or bookkeeping query failed.
    #[error("PostgreSQL: {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The outbox database stayed away longer than the runner's patience.
    #[error("the outbox database was unreachable for {seconds}s, longer than the runner's patience ({patience}s, --infrastructure-patience): {last}")]
    DatabaseUnavailable {
        seconds: u64,
        patience: u64,
        last: String,
    },
    /// The API server stayed away longer than the runner's patience.
    #[error("the API server did not take the LoadTest status for {seconds}s, longer than the runner's patience ({patience}s, --infrastructure-patience): {last}")]
    ApiServerUnavailable {
        seconds: u64,
        patience: u64,
        last: String,
    },
    /// Writing the JSON report failed.
    #[error("writing the report to {path}: {source}")]
    Report {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// SIGTERM or Ctrl-C arrived before the run finished.
    #[error("interrupted before the run finished")]
    Interrupted,
    /// Another runner of a shared run wrote `Failed` in its line.
    #[error("runner {index} ({pod}) failed: {message}")]
    RunnerFailed {
        index: i32,
        pod: String,
        message: String,
    },
    /// The runners' segments do not make one result (one missing, or fewer of their
    /// messages in the outbox than they had accepted).
    #[error("{0}")]
    Segments(String),
    /// A runner of a shared run found the run ended (runner 0 wrote its result, or the
    /// operator failed it) while it waited: nothing left for it to do.
    #[error("the run ended ({0:?}) while this runner waited")]
    RunEnded(outbox_contract::crd::LoadTestPhase),
    /// Serialising the report or a status patch failed.
    #[error("serialising {context}: {source}")]
    Json {
        context: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl LoadTestError {
    /// A short stable label for logs and the `reason` of a failed condition.
    pub fn reason(&self) -> &'static str {
        match self {
            LoadTestError::Settings(_) => "InvalidSettings",
            LoadTestError::StaleCrd { .. } => "StaleCrd",
            LoadTestError::Kube { .. } | LoadTestError::KubeConfig { .. } => "KubernetesApiError",
            LoadTestError::NoProducers { .. } => "NoProducers",
            LoadTestError::Http { .. } => "HttpClientError",
            LoadTestError::Ledger { .. } | LoadTestError::Db { .. } => "DatabaseError",
            LoadTestError::DatabaseUnavailable { .. } => "DatabaseUnavailable",
            LoadTestError::ApiServerUnavailable { .. } => "ApiServerUnavailable",
            LoadTestError::Report { .. } | LoadTestError::Json { .. } => "ReportError",
            LoadTestError::Interrupted => "Interrupted",
            LoadTestError::RunnerFailed { .. } => "RunnerFailed",
            LoadTestError::Segments(_) => "SegmentsIncomplete",
            LoadTestError::RunEnded(_) => "RunEnded",
        }
    }
}

/// Result of the load-test runner.
pub type Result<T, E = LoadTestError> = std::result::Result<T, E>;

/// Adds what the runner was doing to Kubernetes errors.
pub(crate) trait KubeContext<T> {
    fn kube(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> KubeContext<T> for std::result::Result<T, kube::Error> {
    fn kube(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| LoadTestError::Kube {
            context: context(),
            source,
        })
    }
}

/// Adds what the runner was doing to PostgreSQL errors.
pub(crate) trait DbContext<T> {
    fn db(self, context: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn db(self, context: &'static str) -> Result<T> {
        self.map_err(|source| LoadTestError::Db { context, source })
    }
}
