//! The worker image: the one compiled in, and the one each worker container gets.

use super::DEFAULT_IMAGE_REPOSITORY;

/// The worker image of the default release, compiled in: the default of the operator's
/// `--worker-image`.
pub fn default_image() -> String {
    format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// The worker image the operator gives a worker whose spec names none: the operator's
/// `--worker-image` (`WORKER_IMAGE`, the chart's `workerImage`), else [`default_image`],
/// with the pull policy for it (`--worker-image-pull-policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerImage {
    /// Image reference.
    pub image: String,
    /// Pull policy for that image; None leaves it to Kubernetes.
    pub pull_policy: Option<String>,
}

impl Default for WorkerImage {
    fn default() -> Self {
        WorkerImage {
            image: default_image(),
            pull_policy: None,
        }
    }
}

impl WorkerImage {
    /// Image and pull policy of one worker container: the first image of `specified`
    /// (most specific first, e.g. the role's own, then the system's) with the spec's pull
    /// policy; when none names an image, this one, with the spec's pull policy or else
    /// this one's.
    pub fn resolve(
        &self,
        specified: &[Option<&String>],
        spec_pull_policy: Option<&String>,
    ) -> (String, Option<String>) {
        match specified.iter().flatten().next() {
            Some(image) => ((*image).clone(), spec_pull_policy.cloned()),
            None => (
                self.image.clone(),
                spec_pull_policy.or(self.pull_policy.as_ref()).cloned(),
            ),
        }
    }
}

#[cfg(test)]
#[path = "worker_image_tests.rs"]
mod tests;
