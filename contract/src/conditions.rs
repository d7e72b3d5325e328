//! Condition types of the custom resources' status, by resource.

/// Conditions of a LoadTest.
pub mod loadtest {
    /// The runner Job exists (True) or could not be created (False). Operator.
    pub const SCHEDULED: &str = "Scheduled";
    /// The run is over. Runner; operator when the Job failed before the runner reported.
    pub const COMPLETE: &str = "Complete";
    /// Every consumer group acknowledged every accepted message. Runner.
    pub const VERIFIED: &str = "Verified";
    /// A dependency is away and the runner waits for it. Runner.
    pub const DEGRADED: &str = "Degraded";
}
