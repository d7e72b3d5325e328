#!/usr/bin/env bash
# A real Prometheus on the running testbed, scraping what the chart's PodMonitor and
# ServiceMonitor select (Kubernetes service discovery of the node's pods through the
# testbed's kubeconfig) and evaluating the chart's alert rules, as the Prometheus
# Operator would set it up from the chart's objects (testbed/monitor/render.py).
#
#   testbed/monitor.sh up [HELM-FLAGS...]   start it (or restart it with a new config)
#   testbed/monitor.sh down                 stop it (testbed/down.sh does too)
#   testbed/monitor.sh url                  print its address
#   testbed/monitor.sh promtool ARGS...     the same release's promtool
#
# up also applies the Prometheus Operator's CRDs to the testbed, so that the chart
# installs with metrics.podMonitor/serviceMonitor/prometheusRule on. The monitors are
# rendered for the release MONITOR_RELEASE (outbox-operator) in MONITOR_NAMESPACE
# (outbox-system), as `make kind-chart` and `make demo` install it; HELM-FLAGS change the
# chart's values (e.g. --set metrics.prometheusRule.deliveryStalled.ageSeconds=15).
# MONITOR_INTERVAL (10s) is the scrape and evaluation interval.
. "$(dirname "$0")/lib.sh"
[ -f "$STATE_DIR/env" ] || die "no testbed runs here ($STATE_DIR/env is missing): make testbed-up"
dir=$STATE_DIR/prometheus

url() { echo "http://127.0.0.1:$(cat "$dir/port")"; }

up() {
  "$TESTBED_DIR/build.sh" prometheus
  mkdir -p "$dir/data"
  apply_monitoring_crds
  "$HELM_BIN/helm" template "${MONITOR_RELEASE:-outbox-operator}" "$REPO_ROOT/charts/outbox-operator" \
    --namespace "${MONITOR_NAMESPACE:-outbox-system}" \
    --api-versions monitoring.coreos.com/v1/PodMonitor --api-versions monitoring.coreos.com/v1/ServiceMonitor \
    --api-versions monitoring.coreos.com/v1/PrometheusRule \
    --set metrics.podMonitor.enabled=true --set metrics.serviceMonitor.enabled=true \
    --set metrics.prometheusRule.enabled=true "$@" >"$dir/chart.yaml"
  python3 "$TESTBED_DIR/monitor/render.py" scrape "$dir/chart.yaml" "$STATE_DIR/kubeconfig" \
    "${MONITOR_INTERVAL:-10s}" >"$dir/prometheus.yml"
  python3 "$TESTBED_DIR/monitor/render.py" rules "$dir/chart.yaml" >"$dir/rules.yaml"
  "$PROMETHEUS_BIN/promtool" check config "$dir/prometheus.yml" >/dev/null
  [ -f "$dir/port" ] || free_ports 1 >"$dir/port"
  stop_part prometheus || true
  start_part prometheus "$PROMETHEUS_BIN/prometheus" --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/data" --storage.tsdb.retention.time=1d \
    --web.listen-address="127.0.0.1:$(cat "$dir/port")" --log.level=warn
  wait_for prometheus 60 "$LOG_DIR/prometheus.log" curl -fsS "$(url)/-/ready" || die "prometheus did not start"
  log "prometheus: $(url) (scraping every ${MONITOR_INTERVAL:-10s}; rules: $dir/rules.yaml)"
  log "try: curl -s '$(url)/api/v1/query' --data-urlencode 'query=sum by (system, group) (outbox_consumer_lag)'"
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) stop_part prometheus ;;
  url) [ -f "$dir/port" ] || die "prometheus has not been started: testbed/monitor.sh up"; url ;;
  promtool) shift; exec "$PROMETHEUS_BIN/promtool" "$@" ;;
  *) die "usage: $0 up [HELM-FLAGS...] | down | url | promtool ARGS..." ;;
esac
