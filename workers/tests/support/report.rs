//! The runner's JSON report and a LoadTest's status as tests read them: a group, a
//! scenario, a condition, a number, the fields the runner writes.

use serde_json::Value;

/// The status of a run that exited 0 and Succeeded (panics showing it otherwise).
pub fn succeeded(exit: std::process::ExitStatus, report: &Value) -> &Value {
    let status = &report["status"];
    assert!(exit.success(), "runner exit {exit}: {status:#}");
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    status
}

/// Group `name` of a report.
pub fn group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["status"]["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == name))
        .unwrap_or_else(|| panic!("no group {name} in {:#}", report["status"]["groups"]))
}

/// Scenario `name` of a report.
pub fn scenario<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["status"]["scenarios"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no scenario {name} in {:#}", report["status"]["scenarios"]))
}

/// Condition `type_` of a status.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no condition {type_} in {:#}", status["conditions"]))
}

/// A number of a report.
pub fn f64_of(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// The runner's fields of a status, for comparison.
pub fn runner_fields(status: &Value) -> Value {
    let keep = [
        "phase",
        "runId",
        "acceptedMessages",
        "throughput",
        "scenarios",
        "groups",
        "endToEndLatency",
        "message",
        "startTime",
        "completionTime",
    ];
    let mut out = serde_json::Map::new();
    for k in keep {
        if let Some(v) = status.get(k) {
            out.insert(k.to_string(), v.clone());
        }
    }
    let conditions: Vec<Value> = status["conditions"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["type"] == "Complete" || c["type"] == "Verified")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    out.insert("conditions".into(), Value::Array(conditions));
    Value::Object(out)
}
