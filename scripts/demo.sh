#!/usr/bin/env bash
# The main job (`make demo`): bring the testbed up, build, install the chart, apply the
# reference OutboxSystem and a LoadTest, run it, and show the verified result.
#
# The testbed has a control plane but no node yet, so pods cannot run: the operator and
# the workers run here as local processes against the testbed's API server, Kafka and
# PostgreSQL, on the seed system's ports (producers 5301-5303, consumers 5401-5406), and
# the load-test runner writes its results into the LoadTest's status.
#
# LOADTEST=manifests/loadtest-small.yaml make demo   runs the quick LoadTest instead of the
# reference one (10,000,000 batched + 5,000 immediate). KEEP=1 leaves everything running.
. "$(dirname "$0")/../testbed/lib.sh"
cd "$REPO_ROOT"

LOADTEST_FILE=${LOADTEST:-manifests/loadtest-reference.yaml}
NAMESPACE=default
DEMO_LOGS=$STATE_DIR/logs/demo
pids=()
started_testbed=0

cleanup() {
  local code=$?
  if [ "${KEEP:-0}" = 1 ] && [ "$code" = 0 ]; then
    log "KEEP=1: leaving the operator, workers and testbed running (pids ${pids[*]}); make testbed-down stops the testbed"
    return
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if ((started_testbed)); then
    # A failed demo keeps the logs (the demo's and each testbed part's) for a look.
    if ((code == 0)); then "$TESTBED_DIR/down.sh"; else "$TESTBED_DIR/down.sh" --keep-logs; fi
  fi
  ((code == 0)) || log "demo failed (exit $code); logs are in $DEMO_LOGS and $STATE_DIR/logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

spawn() { # spawn NAME CMD...: a local process with its log in .testbed/logs/demo/NAME.log
  local name=$1; shift
  "$@" >"$DEMO_LOGS/$name.log" 2>&1 &
  pids+=($!)
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "testbed"
if [ ! -f "$STATE_DIR/env" ]; then started_testbed=1; fi
"$TESTBED_DIR/up.sh"
# shellcheck source=/dev/null
. "$STATE_DIR/env"
mkdir -p "$DEMO_LOGS"

for port in 5301 5302 5303 5401 5402 5403 5404 5405 5406; do
  port_free "$port" || die "port $port is in use: the demo runs the workers on the seed system's ports 5301-5303 and 5401-5406"
done

step "build (release)"
cargo build --release -p outbox-operator -p outbox-workers --bins
BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release

step "helm install the chart (CRDs, RBAC, operator Deployment)"
helm upgrade --install outbox-operator charts/outbox-operator --namespace outbox-system --create-namespace \
  --set "loadtest.namespaces={$NAMESPACE}"
kubectl wait --for condition=Established crd/outboxsystems.outbox.dev crd/loadtests.outbox.dev --timeout=60s

step "operator (local process with the testbed's kubeconfig; its pod cannot be scheduled without a node)"
spawn operator env LOG_FORMAT=text METRICS_BIND_ADDRESS=127.0.0.1:0 "$BIN/operator"

step "reference OutboxSystem"
kubectl -n "$NAMESPACE" create secret generic outbox-postgres --from-literal=url="$DATABASE_URL" \
  --dry-run=client -o yaml | kubectl apply -f -
sed "s|bootstrapServers: .*|bootstrapServers: $KAFKA_BOOTSTRAP_SERVERS|" manifests/outbox-system.yaml |
  kubectl -n "$NAMESPACE" apply -f -
kubectl -n "$NAMESPACE" wait --for condition=TopicReady outboxsystem/outbox --timeout=120s
SYSTEM_JSON=$(kubectl -n "$NAMESPACE" get outboxsystem outbox -o json)
TOPIC=$(jq -r .spec.topic.name <<<"$SYSTEM_JSON")

step "workers as local processes: producers on 5301-5303, consumers on 5401-5406"
common=(KAFKA_BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP_SERVERS" DATABASE_URL="$DATABASE_URL" KAFKA_TOPICS="$TOPIC" HTTP_ADDRESS=127.0.0.1 LOG_FORMAT=text)
for i in 1 2 3; do
  spawn "producer-$i" env "${common[@]}" SERVICE_ID="producer-$i" HTTP_PORT=$((5300 + i)) "$BIN/outbox-worker" producer
done
port=5401
producer_urls=()
for i in 1 2 3; do producer_urls+=(--producer-url "http://127.0.0.1:$((5300 + i))"); done
groups=()
while read -r group replicas; do
  groups+=(--group "$group")
  for r in $(seq 1 "$replicas"); do
    spawn "consumer-$group-$r" env "${common[@]}" SERVICE_ID="consumer-$group-$r" HTTP_PORT=$port \
      KAFKA_CONSUMER_GROUP="$group" RETRY_MAX_RETRIES=-1 "$BIN/outbox-worker" consumer
    port=$((port + 1))
  done
done < <(jq -r '.spec.consumers.groups[] | "\(.name) \(.replicas)"' <<<"$SYSTEM_JSON")
for p in 5301 5302 5303; do
  wait_for "producer on $p" 60 "$DEMO_LOGS/producer-$((p - 5300)).log" curl -fsS "http://127.0.0.1:$p/api/messages/health"
done
for p in $(seq 5401 $((port - 1))); do
  wait_for "consumer on $p" 60 "$DEMO_LOGS" curl -fsS "http://127.0.0.1:$p/api/consumer/health"
done

step "LoadTest from $LOADTEST_FILE"
LT=$(kubectl create --dry-run=client -f "$LOADTEST_FILE" -o jsonpath='{.metadata.name}')
kubectl -n "$NAMESPACE" delete loadtest "$LT" --ignore-not-found --wait
kubectl -n "$NAMESPACE" apply -f "$LOADTEST_FILE"
# In the clone, not in .testbed/: it outlives the testbed the demo takes down.
REPORT=$REPO_ROOT/loadtest-report.json
"$BIN/outbox-worker" loadtest --namespace "$NAMESPACE" --name "$LT" "${producer_urls[@]}" "${groups[@]}" \
  --topic "$TOPIC" --report "$REPORT"

step "result"
kubectl -n "$NAMESPACE" get outboxsystems,loadtests
echo
kubectl -n "$NAMESPACE" get loadtest "$LT" -o json | jq '{phase: .status.phase,
  verified: ([.status.conditions[]? | select(.type == "Verified")][0] | {status, reason, message}),
  scenarios: [.status.scenarios[]? | {name, accepted, failed, durationSeconds, throughput}],
  groups: [.status.groups[]? | {group, expected, acknowledged, missing, duplicates, outOfOrder}]}'
echo "JSON report: $REPORT"
phase=$(kubectl -n "$NAMESPACE" get loadtest "$LT" -o jsonpath='{.status.phase}')
[ "$phase" = Succeeded ] || die "LoadTest ended $phase"
