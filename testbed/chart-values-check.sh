#!/usr/bin/env bash
# What the chart's values do, checked on what `helm template` renders: needs helm (on
# PATH, or the testbed's build) and python3 with PyYAML, no cluster. Each check prints
# what it checked; the script exits non-zero when any failed.
#   testbed/chart-values-check.sh            (CHART=<dir> checks another copy of the chart)
. "$(dirname "$0")/lib.sh"
chart=${CHART:-$REPO_ROOT/charts/outbox-operator}
command -v helm >/dev/null || PATH=$HELM_BIN:$PATH
command -v helm >/dev/null || die "helm not found (on PATH or in $HELM_BIN): run make testbed-build"
python3 -c 'import yaml' 2>/dev/null || die "python3 with PyYAML (Debian python3-yaml) is needed"

release=chk
namespace=outbox-system
fullname=$release-outbox-operator
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")
failures=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }

# helm template with the given flags; the rendered documents as one JSON array on stdout,
# helm's messages in $out_err, its exit status in $rc.
render() {
  local yaml
  rc=0
  yaml=$(helm template "$release" "$chart" --namespace "$namespace" "$@" 2>"$tmp/err") || rc=$?
  out_err=$(cat "$tmp/err")
  ((rc == 0)) || { echo '[]'; return 0; }
  python3 -c '
import json, sys, yaml
json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)' <<<"$yaml"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# expect_refused WHAT FIELD-PATTERN HELM-FLAGS...: helm template and helm lint exit non-zero,
# and template's message names the field. (helm install validates the values the same way
# before it renders; chart-check.sh shows it against the testbed's API server.)
expect_refused() {
  local what=$1 field=$2
  shift 2
  render "$@" >/dev/null
  if ((rc == 0)); then
    fail "$what: helm template accepted it"
  elif ! grep -Eq "$field" <<<"$out_err"; then
    fail "$what: refused, but the message does not name ${field}: $out_err"
  elif helm lint "$chart" "$@" >/dev/null 2>&1; then
    fail "$what: helm lint accepted it"
  else
    pass "$what: refused by template and lint (exit $rc): $(grep -E "$field" <<<"$out_err" | head -n1 | cut -c1-150)"
  fi
}

# check WHAT JQ-FILTER: the filter is true of the last render.
check() {
  if jq -e "$2" "$tmp/docs.json" >/dev/null; then pass "$1"; else fail "$1"; fi
}
# rendered HELM-FLAGS...: renders into $tmp/docs.json; false (and a failure) when helm failed.
rendered() {
  render "$@" >"$tmp/docs.json"
  ((rc == 0)) || { fail "helm template $* failed: $out_err"; return 1; }
}

operator='(.[] | select(.kind == "Deployment"))'
container="($operator | .spec.template.spec.containers[0])"
env_of() { echo "([$container.env[] | select(.name == \"$1\") | .value] | first)"; }

echo "values.schema.json: a wrong type or an unknown value is refused, naming the field"
expect_refused "replicaCount=abc" "replicaCount" --set replicaCount=abc
expect_refused "leaderElection.enabled=maybe" "leaderElection(/|\.)enabled" --set leaderElection.enabled=maybe
expect_refused "resources: \"big\"" "resources" --set resources=big
expect_refused "metrics.port=http" "metrics(/|\.)port" --set metrics.port=http
expect_refused "serviceAccount.create=yes" "serviceAccount(/|\.)create" --set-string serviceAccount.create=yes
expect_refused "workerImage.pullPolicy=Sometimes" "workerImage(/|\.)pullPolicy" --set workerImage.pullPolicy=Sometimes
expect_refused "a misspelt top-level value (replicaCont=2)" "replicaCont" --set replicaCont=2
if rendered --set global.imageRegistry=example.org; then
  pass "global.* (what a parent chart passes down) is accepted"
fi

echo "leader election follows replicaCount"
if rendered; then
  check "defaults: 1 replica" "$operator.spec.replicas == 1"
  check "defaults: no LEADER_ELECT, Recreate (never two operators at once)" \
    "$(env_of LEADER_ELECT) == null and $operator.spec.strategy.type == \"Recreate\""
fi
if rendered --set replicaCount=2; then
  check "replicaCount=2: 2 replicas" "$operator.spec.replicas == 2"
  check "replicaCount=2: LEADER_ELECT=true, POD_NAMESPACE from the pod" \
    "$(env_of LEADER_ELECT) == \"true\" and ([$container.env[] | select(.name == \"POD_NAMESPACE\")][0].valueFrom.fieldRef.fieldPath == \"metadata.namespace\")"
  check "replicaCount=2: the Lease Role and its binding" \
    '[.[] | select(.metadata.name | endswith("-leader-election")) | .kind] | sort == ["Role", "RoleBinding"]'
fi
if rendered --set replicaCount=1 --set leaderElection.enabled=true; then
  check "leaderElection.enabled=true with 1 replica: LEADER_ELECT=true" "$(env_of LEADER_ELECT) == \"true\""
fi
render --set replicaCount=2 --set leaderElection.enabled=false >/dev/null
if ((rc != 0)) && grep -q "leaderElection.enabled" <<<"$out_err" && grep -q "replicaCount" <<<"$out_err"; then
  pass "replicaCount=2 with leaderElection.enabled=false fails: $(grep -o 'leaderElection.enabled.*' <<<"$out_err" | head -n1 | cut -c1-120)"
else
  fail "replicaCount=2 with leaderElection.enabled=false: rc=$rc, $out_err"
fi

echo "serviceAccount"
if rendered --set serviceAccount.create=false --set serviceAccount.name=x; then
  check "create=false: no ServiceAccount for the operator (only the load-test runner's)" \
    '[.[] | select(.kind == "ServiceAccount") | .metadata.name] == ["outbox-loadtest"]'
  check "create=false: the operator pod runs as x" "$operator.spec.template.spec.serviceAccountName == \"x\""
  check "create=false: every operator binding names x in the release namespace" \
    "[.[] | select(.kind | endswith(\"Binding\")) | select(.metadata.name | contains(\"loadtest-runner\") | not) | .subjects[]] as \$s
     | (\$s | length) >= 2 and all(\$s[]; .name == \"x\" and .namespace == \"$namespace\")"
fi
if rendered --set serviceAccount.annotations.role-arn=arn:example; then
  check "create=true: one ServiceAccount $fullname, with the annotations" \
    "[.[] | select(.kind == \"ServiceAccount\" and .metadata.name == \"$fullname\") | .metadata.annotations[\"role-arn\"]] == [\"arn:example\"]"
fi
expect_refused "serviceAccount.create=false without a name" "serviceAccount.name" --set serviceAccount.create=false

echo "worker image: the operator's default for producers, consumers and runners"
if rendered; then
  check "defaults: WORKER_IMAGE=ghcr.io/outbox-dev/outbox-worker:$app_version (appVersion)" \
    "$(env_of WORKER_IMAGE) == \"ghcr.io/outbox-dev/outbox-worker:$app_version\""
  check "defaults: no WORKER_IMAGE_PULL_POLICY" "$(env_of WORKER_IMAGE_PULL_POLICY) == null"
fi
if rendered --set workerImage.repository=registry.example/w --set-string workerImage.tag=7 --set workerImage.pullPolicy=Always; then
  check "workerImage.repository/tag reach WORKER_IMAGE" "$(env_of WORKER_IMAGE) == \"registry.example/w:7\""
  check "workerImage.pullPolicy reaches WORKER_IMAGE_PULL_POLICY" "$(env_of WORKER_IMAGE_PULL_POLICY) == \"Always\""
fi

echo "image policy: the repositories specs may name"
if rendered; then
  check "defaults: no ALLOWED_IMAGE_REPOSITORIES (any image)" "$(env_of ALLOWED_IMAGE_REPOSITORIES) == null"
fi
if rendered --set 'imagePolicy.allowedRepositories={registry.example/team/,ghcr.io/outbox-dev/}'; then
  check "imagePolicy.allowedRepositories reaches ALLOWED_IMAGE_REPOSITORIES, comma-separated" \
    "$(env_of ALLOWED_IMAGE_REPOSITORIES) == \"registry.example/team/,ghcr.io/outbox-dev/\""
fi
expect_refused "imagePolicy.allowedRepositories=registry.example/team/ (a string, not a list)" \
  "imagePolicy(/|\.)allowedRepositories" --set imagePolicy.allowedRepositories=registry.example/team/
expect_refused "imagePolicy.allowedRepositories with a comma inside an entry" \
  "imagePolicy(/|\.)allowedRepositories" --set-json 'imagePolicy.allowedRepositories=["a/,b/"]'

echo "the operator pod: security contexts, scheduling, pull secrets"
if rendered; then
  check "defaults: the pod security context as before (non-root 65532, RuntimeDefault seccomp)" \
    "$operator.spec.template.spec.securityContext == {\"runAsNonRoot\": true, \"runAsUser\": 65532, \"runAsGroup\": 65532, \"seccompProfile\": {\"type\": \"RuntimeDefault\"}}"
  check "defaults: the container security context as before (read-only root, no escalation, no capabilities)" \
    "$container.securityContext == {\"allowPrivilegeEscalation\": false, \"readOnlyRootFilesystem\": true, \"capabilities\": {\"drop\": [\"ALL\"]}}"
  check "defaults: no priorityClassName, no imagePullSecrets" \
    "($operator.spec.template.spec | has(\"priorityClassName\") or has(\"imagePullSecrets\")) | not"
fi
if rendered --set podSecurityContext.fsGroup=65532 --set securityContext.runAsNonRoot=true \
  --set priorityClassName=system-cluster-critical --set 'imagePullSecrets[0].name=regcred' \
  --set nodeSelector.disk=ssd --set 'tolerations[0].operator=Exists'; then
  check "podSecurityContext.fsGroup added to the defaults" \
    "$operator.spec.template.spec.securityContext.fsGroup == 65532 and $operator.spec.template.spec.securityContext.runAsUser == 65532"
  check "securityContext.runAsNonRoot added to the defaults" \
    "$container.securityContext.runAsNonRoot == true and $container.securityContext.readOnlyRootFilesystem == true"
  check "priorityClassName, imagePullSecrets, nodeSelector, tolerations reach the pod" \
    "$operator.spec.template.spec | .priorityClassName == \"system-cluster-critical\" and .imagePullSecrets == [{\"name\": \"regcred\"}] and .nodeSelector == {\"disk\": \"ssd\"} and .tolerations == [{\"operator\": \"Exists\"}]"
fi

echo "aggregated ClusterRoles for admin, edit, view"
kinds='["loadtests", "outboxsystems"]'
if rendered; then
  for role in admin edit view; do
    check "$fullname-$role carries aggregate-to-$role" \
      "[.[] | select(.kind == \"ClusterRole\" and .metadata.name == \"$fullname-$role\") | .metadata.labels[\"rbac.authorization.k8s.io/aggregate-to-$role\"]] == [\"true\"]"
  done
  check "view: get, list, watch on both kinds and their status, nothing more" \
    "[.[] | select(.metadata.name == \"$fullname-view\") | .rules[] | {g: .apiGroups, r: (.resources | sort), v: (.verbs | sort)}]
     == [{g: [\"outbox.dev\"], r: [\"loadtests\", \"loadtests/status\", \"outboxsystems\", \"outboxsystems/status\"], v: [\"get\", \"list\", \"watch\"]}]"
  for role in admin edit; do
    check "$role: every verb on both kinds" \
      "[.[] | select(.metadata.name == \"$fullname-$role\") | .rules[] | select((.resources | sort) == $kinds) | .verbs | sort]
       == [[\"create\", \"delete\", \"deletecollection\", \"get\", \"list\", \"patch\", \"update\", \"watch\"]]"
  done
fi
if rendered --set rbac.aggregateClusterRoles=false; then
  check "rbac.aggregateClusterRoles=false: none of them" \
    '[.[] | select(.metadata.labels // {} | keys | any(startswith("rbac.authorization.k8s.io/aggregate-to")))] == []'
fi

echo "NOTES.txt and kubeVersion"
# helm template leaves NOTES.txt out (helm install prints it, but needs a cluster): a copy
# of the chart renders it through tpl, as a YAML string.
cp -r "$chart" "$tmp/chart"
cp "$chart/templates/NOTES.txt" "$tmp/chart/notes-check.txt"
echo 'notes: {{ tpl (.Files.Get "notes-check.txt") . | toJson }}' >"$tmp/chart/templates/notes-check.yaml"
notes=$(helm template "$release" "$tmp/chart" --namespace "$namespace" --show-only templates/notes-check.yaml 2>&1 |
  python3 -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["notes"])' 2>&1) || true
if ! grep -q "installed" <<<"$notes"; then
  fail "NOTES.txt did not render: $notes"
elif grep -q 'manifests/' <<<"$notes"; then
  fail "NOTES point at manifests/ (a path in this repository, not in an installed chart)"
else
  for want in "namespace $namespace" "kubectl explain outboxsystem" "kubectl -n $namespace logs" "kind: OutboxSystem" "Documentation: https://"; do
    if grep -qF -- "$want" <<<"$notes"; then pass "NOTES: $want"; else fail "NOTES lack \"$want\""; fi
  done
fi
min_kube=$(sed -n 's/^kubeVersion: *">=\([0-9.]*\)-0".*/\1/p' "$chart/Chart.yaml")
below=$(awk -F. '{printf "%d.%d.0", $1, $2 - 1}' <<<"$min_kube")
if rendered --kube-version "$min_kube"; then pass "kubeVersion: renders for Kubernetes $min_kube"; fi
render --kube-version "$below" >/dev/null
if ((rc != 0)) && grep -q "kubeVersion" <<<"$out_err"; then
  pass "kubeVersion: refused for Kubernetes $below"
else
  fail "kubeVersion: Kubernetes $below was not refused (rc=$rc)"
fi
if rendered --kube-version "${K8S_VERSION#v}"; then pass "kubeVersion: renders for the pinned $K8S_VERSION"; fi

echo "monitoring: the monitors, rules and dashboards render only when asked, and monitors only where the cluster serves their kinds"
monitoring_kinds='[.[] | select(.kind == "PodMonitor" or .kind == "ServiceMonitor" or .kind == "PrometheusRule" or (.kind == "ConfigMap" and (.metadata.name | test("-dashboard-"))))]'
if rendered; then check "defaults: no PodMonitor, ServiceMonitor, PrometheusRule or dashboard" "$monitoring_kinds | length == 0"; fi
monitoring_api=(--api-versions monitoring.coreos.com/v1/PodMonitor --api-versions monitoring.coreos.com/v1/ServiceMonitor
  --api-versions monitoring.coreos.com/v1/PrometheusRule)
all_on=(--set metrics.podMonitor.enabled=true --set metrics.serviceMonitor.enabled=true
  --set metrics.prometheusRule.enabled=true --set metrics.dashboards.enabled=true)
if rendered "${monitoring_api[@]}" "${all_on[@]}"; then
  check "all on: one PodMonitor, one ServiceMonitor, one PrometheusRule, two dashboards" \
    "([.[] | .kind] | map(select(. == \"PodMonitor\")) | length) == 1 and ([.[] | .kind] | map(select(. == \"ServiceMonitor\")) | length) == 1 and ([.[] | .kind] | map(select(. == \"PrometheusRule\")) | length) == 1 and ([.[] | select(.kind == \"ConfigMap\" and (.metadata.labels.grafana_dashboard == \"1\"))] | length) == 2"
  check "the PodMonitor selects the operator's worker pods (producers and consumers) on their http port, in every namespace" \
    '.[] | select(.kind == "PodMonitor") | .spec.selector.matchLabels["app.kubernetes.io/managed-by"] == "outbox-operator" and .spec.namespaceSelector.any == true and .spec.podMetricsEndpoints[0].port == "http"'
  check "every dashboard ConfigMap holds valid JSON with a uid" \
    '[.[] | select(.kind == "ConfigMap" and .metadata.labels.grafana_dashboard == "1") | .data[] | fromjson | .uid] | all(. != null)'
  check "the ServiceMonitor keeps the LoadTests' namespace label (honorLabels)" \
    '.[] | select(.kind == "ServiceMonitor") | .spec.endpoints[0].honorLabels == true'
fi
if rendered "${monitoring_api[@]}" --set metrics.podMonitor.enabled=true --set watchNamespace=shop; then
  check "with watchNamespace the PodMonitor selects that namespace only" \
    '.[] | select(.kind == "PodMonitor") | .spec.namespaceSelector.matchNames == ["shop"]'
fi
if rendered "${monitoring_api[@]}" --set metrics.prometheusRule.enabled=true --set metrics.prometheusRule.deliveryStalled.ageSeconds=42; then
  check "prometheusRule.deliveryStalled.ageSeconds sets the stalled alert's threshold" \
    '[.[] | select(.kind == "PrometheusRule") | .spec.groups[].rules[] | select(.alert == "OutboxDeliveryStalled") | .expr] | first | endswith("> 42")'
fi
for kind in PodMonitor ServiceMonitor PrometheusRule; do
  value=metrics.$(tr '[:upper:]' '[:lower:]' <<<"${kind:0:1}")${kind:1}.enabled
  # (helm lint renders `fail` as a warning, so only template and install refuse it.)
  render --set "$value=true" >/dev/null
  if ((rc != 0)) && grep -q "needs the Prometheus Operator's $kind kind" <<<"$out_err"; then
    pass "$value=true on a cluster without the $kind kind: refused, naming it"
  else
    fail "$value=true on a cluster without the $kind kind: rc=$rc: $out_err"
  fi
done
if rendered --set metrics.dashboards.enabled=true; then
  pass "dashboards need no CRD: they render without monitoring.coreos.com"
fi

if ((failures)); then
  die "chart values: $failures check(s) failed"
fi
log "chart values: every check passed"
