#!/usr/bin/env bash
# Unit tests of the chart's alert rules with promtool: renders the chart's PrometheusRule
# (default values), checks it with `promtool check rules` and runs every test file in
# charts/outbox-operator/rules-tests with `promtool test rules`. Needs no cluster.
. "$(dirname "$0")/../lib.sh"
"$TESTBED_DIR/build.sh" helm prometheus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chart=$REPO_ROOT/charts/outbox-operator
"$HELM_BIN/helm" template outbox "$chart" --api-versions monitoring.coreos.com/v1/PrometheusRule \
  --set metrics.prometheusRule.enabled=true >"$work/rendered.yaml"
python3 "$TESTBED_DIR/monitor/render.py" rules "$work/rendered.yaml" >"$work/rules.yaml"
"$PROMETHEUS_BIN/promtool" check rules --lint-fatal "$work/rules.yaml"
cp "$chart"/rules-tests/*.yaml "$work/"
(cd "$work" && "$PROMETHEUS_BIN/promtool" test rules ./*.test.yaml)
# Every alert of the rules has a test that fires it and one that keeps it quiet.
python3 - "$work/rules.yaml" "$chart"/rules-tests/*.yaml <<'PY'
import sys, yaml
rules = {r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"] if "alert" in r}
fired, quiet = set(), set()
for path in sys.argv[2:]:
    for t in yaml.safe_load(open(path))["tests"]:
        for a in t.get("alert_rule_test", []):
            (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
for what, seen in (("fires", fired), ("keeps quiet", quiet)):
    missing = sorted(rules - seen)
    if missing:
        sys.exit(f"test-rules: no test {what} {', '.join(missing)}")
print(f"test-rules: {len(rules)} alerts, each fired by a test and kept quiet by another")
PY
