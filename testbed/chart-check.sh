#!/usr/bin/env bash
# Lints the Helm chart, checks what its values render (chart-values-check.sh: helm
# alone), and has the testbed's real kube-apiserver (the pinned v1.33 release) validate
# every object it renders, in its default, namespaced, leader-elected and
# own-ServiceAccount forms; helm install refuses a value of the wrong type.
# Needs the testbed's env (run through with-testbed.sh or after `make testbed-up`).
. "$(dirname "$0")/lib.sh"
chart=$REPO_ROOT/charts/outbox-operator
: "${KUBECONFIG:?run through testbed/with-testbed.sh}"
diff -ru "$REPO_ROOT/crds" "$chart/crds" || die "charts/outbox-operator/crds differs from crds/: run make crds"
helm lint --strict "$chart" >/dev/null || { helm lint --strict "$chart"; die "helm lint failed"; }
"$TESTBED_DIR/chart-values-check.sh"
kubectl get namespace outbox-system >/dev/null 2>&1 || kubectl create namespace outbox-system >/dev/null
for values in "" "--set watchNamespace=outbox-system" "--set leaderElection.enabled=true" "--set replicaCount=2" \
  "--set serviceAccount.create=false --set serviceAccount.name=chart-check --set rbac.aggregateClusterRoles=false"; do
  # shellcheck disable=SC2086
  helm template chart-check "$chart" --namespace outbox-system --kube-version "$K8S_VERSION" \
    --include-crds $values | kubectl apply --server-side --force-conflicts --field-manager=chart-check --dry-run=server -f - >/dev/null \
    || die "the API server rejected the chart rendered with: ${values:-defaults}"
done
# With the Prometheus Operator's CRDs served (from its Go module), the monitors, the rules
# and the dashboards render and the API server accepts them.
apply_monitoring_crds
helm template chart-check "$chart" --namespace outbox-system --kube-version "$K8S_VERSION" \
  --api-versions monitoring.coreos.com/v1/PodMonitor --api-versions monitoring.coreos.com/v1/ServiceMonitor \
  --api-versions monitoring.coreos.com/v1/PrometheusRule --set metrics.podMonitor.enabled=true \
  --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true --set metrics.dashboards.enabled=true |
  kubectl apply --server-side --force-conflicts --field-manager=chart-check --dry-run=server -f - >/dev/null ||
  die "the API server rejected the chart rendered with its monitors, rules and dashboards on"
# helm install validates the values against values.schema.json before it renders.
if out=$(helm install chart-check "$chart" --namespace outbox-system --dry-run=server --set replicaCount=abc 2>&1); then
  die "helm install accepted replicaCount=abc"
fi
grep -q "/replicaCount" <<<"$out" || die "helm install refused replicaCount=abc without naming the field: $out"
log "chart: helm lint clean; rendered objects (monitors, rules and dashboards too) accepted by kube-apiserver $K8S_VERSION (dry run); helm install refuses a wrong type"
