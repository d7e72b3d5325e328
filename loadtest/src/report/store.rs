//! Where a run in a Job leaves its HTML report: the ConfigMap `<loadtest>-report`
//! (`outbox_contract::loadtest_report`), key `report.html`. The operator makes it,
//! empty and owned by the LoadTest (deleted with it), before the runner's Job, and lets
//! the runner get and patch that one ConfigMap and no other. It outlives the runner's
//! pod, and one command fetches it:
//!
//! ```text
//! kubectl get configmap <loadtest>-report -o jsonpath='{.data.report\.html}' > report.html
//! ```
//!
//! A ConfigMap holds at most 1 MiB, so a report that would not fit is rendered again
//! from a thinner series (every second point, then every fourth, ...).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::Api;
use outbox_contract::loadtest_report;

use crate::error::{KubeContext, Result};
use crate::series::Series;

/// The key of the HTML in the ConfigMap.
pub const KEY: &str = loadtest_report::KEY;
/// The most a report may weigh: a ConfigMap's 1 MiB, less room for its metadata.
pub const MAX_BYTES: usize = 1_000_000;

/// The ConfigMap name for LoadTest `loadtest`.
pub fn config_map_name(loadtest: &str) -> String {
    loadtest_report::config_map_name(loadtest)
}

/// Where the report goes: the namespace's ConfigMaps and the LoadTest it is for.
#[derive(Clone, Debug)]
pub struct ReportTarget {
    pub api: Api<ConfigMap>,
    pub loadtest: String,
}

/// What the runner applies to the report ConfigMap of `loadtest` (pure): the HTML and
/// the LoadTest's label. The owner is the operator's part of the object.
pub fn config_map(loadtest: &str, html: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(loadtest)),
            labels: Some(BTreeMap::from([(
                outbox_contract::labels::LOADTEST_NAME.to_string(),
                loadtest.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(KEY.to_string(), html)])),
        ..ConfigMap::default()
    }
}

/// Renders with `render` from `series`, thinned until the page fits in [`MAX_BYTES`];
/// also returns by how much it was thinned (1: not at all).
pub fn fitting(series: &Series, mut render: impl FnMut(&Series) -> String) -> (String, usize) {
    let mut every = 1;
    loop {
        let thinned = series.thinned(every);
        let html = render(&thinned);
        if html.len() <= MAX_BYTES || thinned.points.len() <= 2 {
            return (html, every);
        }
        every *= 2;
    }
}

/// Writes the report into the ConfigMap the operator made (server-side apply under the
/// runner's field manager: a patch, all the runner may do to it).
pub async fn store(target: &ReportTarget, html: String) -> Result<String> {
    let object = config_map(&target.loadtest, html);
    let name = config_map_name(&target.loadtest);
    target
        .api
        .patch(
            &name,
            &PatchParams::apply(outbox_contract::field_managers::RUNNER).force(),
            &Patch::Apply(&object),
        )
        .await
        .kube(|| format!("writing the report ConfigMap {name}"))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::Point;

    #[test]
    fn the_runner_applies_only_the_report_into_the_config_map_the_operator_made() {
        let cm = config_map("reference", "<html></html>".into());
        assert_eq!(cm.metadata.name.as_deref(), Some("reference-report"));
        assert_eq!(
            cm.metadata.name,
            Some(outbox_contract::loadtest_report::config_map_name(
                "reference"
            ))
        );
        // The operator's ConfigMap carries the LoadTest as its controller; the runner,
        // which may only get and patch that one ConfigMap, leaves the owner alone.
        assert_eq!(cm.metadata.owner_references, None);
        assert_eq!(
            cm.data
                .as_ref()
                .and_then(|d| d.get(KEY))
                .map(String::as_str),
            Some("<html></html>")
        );
    }

    #[test]
    fn a_report_too_large_for_a_config_map_is_rendered_from_a_thinner_series() {
        let series = Series {
            interval_seconds: 1.0,
            points: (0..1000)
                .map(|t| Point {
                    t: f64::from(t),
                    ..Point::default()
                })
                .collect(),
            ..Series::default()
        };
        // 2,000 bytes a point: 1,000 points are 2 MB, 250 fit.
        let (html, every) = fitting(&series, |s| "x".repeat(2000 * s.points.len()));
        assert_eq!(every, 4);
        assert!(html.len() <= MAX_BYTES);
        let (_, every) = fitting(&series, |_| "small".into());
        assert_eq!(every, 1);
    }
}
