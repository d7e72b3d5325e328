#!/usr/bin/env bash
# The main job (`make demo`): bring the testbed up (control plane, Kafka, PostgreSQL and a
# node), build the images, helm install the chart, apply the reference OutboxSystem and
# a LoadTest from manifests/ (adding the testbed's Kafka and PostgreSQL as cpuSources),
# and show the verified result. Everything runs in
# the cluster: the operator as the chart's pod, producers and consumers as the operator's
# Deployments, the load test as the Job the operator creates.
#
# LOADTEST=manifests/loadtest-small.yaml make demo   runs the quick LoadTest instead of the
# reference one (10,000,000 batched + 5,000 immediate). KEEP=1 leaves everything running.
# MONITOR=1 (what `make monitor` sets, with KEEP=1 and the quick LoadTest) starts a real
# Prometheus first (testbed/monitor.sh), installs the chart with its PodMonitor,
# ServiceMonitor, alert rules and dashboards on, and ends with what Prometheus saw.
. "$(dirname "$0")/../testbed/lib.sh"
cd "$REPO_ROOT" || exit 1

LOADTEST_FILE=${LOADTEST:-manifests/loadtest-reference.yaml}
NAMESPACE=default
RELEASE_NAMESPACE=outbox-system
started_testbed=0

cleanup() {
  local code=$?
  if ((code != 0)) && [ -f "$STATE_DIR/env" ]; then
    # What a user would look at first: the pods, the events, the operator's last words.
    {
      kubectl_ get pods -A -o wide
      kubectl_ get events -n "$NAMESPACE" --sort-by=.lastTimestamp | tail -n 30
      kubectl_ logs -n "$RELEASE_NAMESPACE" deploy/outbox-operator --tail=40
    } >"$STATE_DIR/logs/demo-failure.txt" 2>&1 || true
  fi
  if [ "${KEEP:-0}" = 1 ] && [ "$code" = 0 ]; then
    log "KEEP=1: leaving the testbed and everything in it running; make testbed-down stops it"
    return
  fi
  if ((started_testbed)); then
    # A failed demo keeps the logs (each testbed part's) for a look.
    if ((code == 0)); then "$TESTBED_DIR/down.sh"; else "$TESTBED_DIR/down.sh" --keep-logs; fi
  fi
  ((code == 0)) || log "demo failed (exit $code); logs are in $STATE_DIR/logs (demo-failure.txt first)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "testbed: control plane, Kafka, PostgreSQL, node"
[ -f "$STATE_DIR/env" ] || started_testbed=1
"$TESTBED_DIR/up.sh"
# shellcheck source=/dev/null
. "$STATE_DIR/env"
[ "${TESTBED_NODE:-0}" = 1 ] || die "the demo runs in the cluster and needs the testbed's node (TESTBED_NODE=1)"

chart_flags=()
if [ "${MONITOR:-0}" = 1 ]; then
  step "Prometheus on the testbed: scraping what the chart's monitors select, the chart's alert rules loaded"
  MONITOR_NAMESPACE=$RELEASE_NAMESPACE "$TESTBED_DIR/monitor.sh" up
  chart_flags=(--set metrics.podMonitor.enabled=true --set metrics.serviceMonitor.enabled=true
    --set metrics.prometheusRule.enabled=true --set metrics.dashboards.enabled=true)
fi

step "build (release) and load the operator and worker images into the node"
cargo build --release -p outbox-operator -p outbox-workers --bins
"$TESTBED_DIR/load-images.sh" "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"

step "helm install the chart (CRDs, RBAC, the operator's Deployment)"
helm upgrade --install outbox-operator charts/outbox-operator --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set "loadtest.namespaces={$NAMESPACE}" --set logFormat=text "${chart_flags[@]}" --wait --timeout 3m
kubectl -n "$RELEASE_NAMESPACE" get pods -o wide

step "reference OutboxSystem (manifests/outbox-system.yaml, as written)"
# outbox-kafka and outbox-postgres (Services and Secret) are the testbed's, as on kind
# they are manifests/kind/'s: kubectl -n default get svc,secret outbox-kafka outbox-postgres
kubectl -n "$NAMESPACE" apply -f manifests/outbox-system.yaml
kubectl -n "$NAMESPACE" wait --for condition=Ready outboxsystem/outbox --timeout=300s
kubectl -n "$NAMESPACE" get outboxsystems
kubectl -n "$NAMESPACE" get pods -o wide

step "LoadTest from $LOADTEST_FILE (run as the operator's Job)"
LT=$(kubectl create --dry-run=client -f "$LOADTEST_FILE" -o jsonpath='{.metadata.name}')
kubectl -n "$NAMESPACE" delete loadtest "$LT" --ignore-not-found --wait
# The LoadTest as written, plus the testbed's Kafka and PostgreSQL (host processes, not
# pods) as cpuSources: testbed/cpu_exporter.py serves their CPU time, so status.cpu
# accounts for every component.
kubectl patch --local -f "$LOADTEST_FILE" --type merge -o yaml -p '{"spec": {"cpuSources": [
  {"component": "kafka", "url": "http://outbox-testbed-cpu:9100/kafka"},
  {"component": "postgresql", "url": "http://outbox-testbed-cpu:9100/postgresql"}]}}' |
  kubectl -n "$NAMESPACE" apply -f -
start=$SECONDS
phase=
while :; do
  row=$(kubectl -n "$NAMESPACE" get loadtest "$LT" --no-headers 2>/dev/null || true)
  phase=$(kubectl -n "$NAMESPACE" get loadtest "$LT" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  printf '  %4ss  %s\n' "$((SECONDS - start))" "$row"
  case "$phase" in Succeeded | Failed) break ;; esac
  sleep 10
done

step "result"
kubectl -n "$NAMESPACE" get outboxsystems,loadtests
echo
kubectl -n "$NAMESPACE" get jobs,pods -o wide
echo
REPORT=$REPO_ROOT/loadtest-report.json
kubectl -n "$NAMESPACE" get loadtest "$LT" -o json | jq .status >"$REPORT"
jq '{phase,
  verified: ([.conditions[]? | select(.type == "Verified")][0] | {status, reason, message}),
  scenarios: [.scenarios[]? | {name, accepted, failed, durationSeconds, throughput}],
  groups: [.groups[]? | {group, expected, acknowledged, missing, duplicates, outOfOrder}],
  cpu: (.cpu // {} | {windowSeconds, nodeSeconds, microsPerMessage, unreadable,
    components: [.components[]? | "\(.component): \(.seconds) s"]})}' "$REPORT"
elapsed=$((SECONDS - start))
HTML=$REPO_ROOT/loadtest-report.html
CM=$(kubectl -n "$NAMESPACE" get loadtest "$LT" -o jsonpath='{.status.reportConfigMap}')
if [ -n "$CM" ]; then
  kubectl -n "$NAMESPACE" get configmap "$CM" -o jsonpath='{.data.report\.html}' >"$HTML"
  echo "HTML report (charts over time, thresholds, verdict): $HTML"
else
  echo "the runner wrote no HTML report ConfigMap (status.reportConfigMap is empty)"
fi
echo "LoadTest status as JSON: $REPORT; the runner's log: kubectl logs job/$LT-run"
echo "send to verified: $elapsed s"
if [ "${MONITOR:-0}" = 1 ]; then
  step "what Prometheus saw ($("$TESTBED_DIR/monitor.sh" url))"
  # The operator's last scrape may predate the run's end: wait for the result to be in.
  finished="outbox_loadtest_phase{namespace=\"$NAMESPACE\", loadtest=\"$LT\", phase=~\"Succeeded|Failed\"} == 1"
  wait_for "the LoadTest's end in Prometheus" 60 "$LOG_DIR/prometheus.log" bash -c \
    "curl -fsS '$("$TESTBED_DIR/monitor.sh" url)/api/v1/query' --data-urlencode 'query=$finished' | jq -e '.data.result | length > 0'" ||
    log "Prometheus has not scraped the LoadTest's end yet; what follows may predate it"
  "$TESTBED_DIR/monitor/show.sh"
fi
[ "$phase" = Succeeded ] || die "LoadTest ended $phase"
