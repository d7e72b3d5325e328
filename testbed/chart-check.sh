#!/usr/bin/env bash
# Lints the Helm chart and has the testbed's real kube-apiserver (the pinned v1.33
# release) validate every object it renders, in its default and namespaced forms.
# Needs the testbed's env (run through with-testbed.sh or after `make testbed-up`).
. "$(dirname "$0")/lib.sh"
chart=$REPO_ROOT/charts/outbox-operator
: "${KUBECONFIG:?run through testbed/with-testbed.sh}"
diff -ru "$REPO_ROOT/crds" "$chart/crds" || die "charts/outbox-operator/crds differs from crds/: run make crds"
helm lint --strict "$chart" >/dev/null || { helm lint --strict "$chart"; die "helm lint failed"; }
kubectl get namespace outbox-system >/dev/null 2>&1 || kubectl create namespace outbox-system >/dev/null
for values in "" "--set watchNamespace=outbox-system" "--set leaderElection.enabled=true"; do
  # shellcheck disable=SC2086
  helm template chart-check "$chart" --namespace outbox-system --kube-version "$K8S_VERSION" \
    --include-crds $values | kubectl apply --server-side --field-manager=chart-check --dry-run=server -f - >/dev/null \
    || die "the API server rejected the chart rendered with: ${values:-defaults}"
done
log "chart: helm lint clean; rendered objects accepted by kube-apiserver $K8S_VERSION (dry run)"
