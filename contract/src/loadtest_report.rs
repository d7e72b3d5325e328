//! Where a LoadTest's HTML report lives: the ConfigMap `<loadtest>-report`, key
//! `report.html`. The operator creates it, empty and owned by the LoadTest, before the
//! runner's Job, with a Role that lets the runner get and patch that one ConfigMap and
//! nothing else; the runner fills it.

/// The key of the HTML in the ConfigMap.
pub const KEY: &str = "report.html";

/// The key under which runner `index` of a LoadTest with `parallelism` above 1 leaves
/// its segment's results (JSON) for runner 0 to merge; runner 0 removes these keys
/// when it writes the report.
pub fn segment_key(index: i32) -> String {
    format!("segment-{index}.json")
}

/// The report ConfigMap's name for LoadTest `loadtest`.
pub fn config_map_name(loadtest: &str) -> String {
    format!("{loadtest}-report")
}

/// The name of the Role (and its RoleBinding) that lets the runner of `loadtest` write
/// its report ConfigMap.
pub fn writer_role_name(loadtest: &str) -> String {
    format!("{loadtest}-report-writer")
}
