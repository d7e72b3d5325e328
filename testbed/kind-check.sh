#!/usr/bin/env bash
# `make kind-check`: the README's kind quick start, on the testbed's node. Everything
# `make kind-up kind-install` and the README's kubectl steps do, except what needs Docker
# (`kind create cluster`, `docker build`, `kind load`):
#   - manifests/kind/postgres.yaml and kafka.yaml applied unchanged (`make kind-dev`, the
#     part of kind-up after the cluster exists), with stand-in images under their exact
#     names (testbed/node/standin-images.sh);
#   - the chart installed into outbox-system exactly as kind-install installs it
#     (`make kind-chart`);
#   - manifests/outbox-system.yaml and manifests/loadtest-small.yaml applied unchanged
#     (namespace default, the context's), the LoadTest must end Succeeded and Verified.
# The operator and worker images must be in the node already (testbed/load-images.sh).
# The testbed's own outbox-kafka/outbox-postgres stand-ins in `default` make way for
# the kind manifests' for the run and come back afterwards; everything the check
# created is deleted on exit, failure included.
. "$(dirname "$0")/lib.sh"
# shellcheck source=node.sh
. "$TESTBED_DIR/node.sh"
cd "$REPO_ROOT"
[ -f "$STATE_DIR/env" ] || die "the testbed is not running: make testbed-up (or make kind-check, which starts it)"
# shellcheck source=/dev/null
. "$STATE_DIR/env"
[ "${TESTBED_NODE:-0}" = 1 ] || die "the kind check runs pods and needs the testbed's node (TESTBED_NODE=1)"

READY_TIMEOUT=${KIND_CHECK_READY_TIMEOUT:-300}
RUN_TIMEOUT=${KIND_CHECK_RUN_TIMEOUT:-900}
step() { printf '\n== kind-check: %s\n' "$*"; }

step "stand-in images docker.io/apache/kafka:3.9.1 and docker.io/library/postgres:15-bookworm"
images=$CACHE_DIR/images/standins
"$TESTBED_DIR/node/standin-images.sh" "$images" "$KAFKA_LIB" 2>>"$LOG_DIR/images.log" ||
  die "building the stand-in images failed; see $LOG_DIR/images.log"
ctr_ images import --base-name docker.io/apache/kafka "$images/kafka.tar" >>"$LOG_DIR/images.log" 2>&1 ||
  die "importing the Kafka image failed; see $LOG_DIR/images.log"
ctr_ images import --base-name docker.io/library/postgres "$images/postgres.tar" >>"$LOG_DIR/images.log" 2>&1 ||
  die "importing the PostgreSQL image failed; see $LOG_DIR/images.log"

cleanup() {
  local code=$?
  set +e
  if ((code != 0)); then
    step "failed (exit $code): what a user would look at"
    kubectl get pods -A -o wide
    kubectl get outboxsystems,loadtests -o wide
    kubectl get events -n default --sort-by=.lastTimestamp | tail -n 25
    kubectl logs -n outbox-system deploy/outbox-operator --tail=30
    kubectl logs deploy/outbox-kafka --tail=15
    kubectl logs deploy/outbox-postgres --tail=10
  fi
  step "cleaning up"
  kubectl delete loadtests --all --wait=true --timeout=60s >/dev/null
  kubectl delete -f manifests/outbox-system.yaml --ignore-not-found --wait=true --timeout=90s >/dev/null ||
    kubectl patch outboxsystem outbox --type=merge -p '{"metadata":{"finalizers":[]}}' >/dev/null 2>&1
  helm uninstall outbox-operator --namespace outbox-system --wait --timeout 2m >/dev/null
  kubectl delete namespace outbox-system --ignore-not-found --timeout=90s >/dev/null
  kubectl delete -f manifests/kind/kafka.yaml -f manifests/kind/postgres.yaml --ignore-not-found \
    --wait=true --timeout=90s >/dev/null
  kubectl apply -n default -f "$TESTBED_HOST_SERVICES" >/dev/null ||
    log "warning: could not restore the testbed's host services in default"
  if ((code == 0)); then step "passed"; else step "FAILED"; fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "the testbed's outbox-kafka and outbox-postgres in default make way for manifests/kind/"
kubectl delete -n default -f "$TESTBED_HOST_SERVICES" --ignore-not-found --wait=true >/dev/null

step "make kind-dev (kind-up after kind create cluster): Kafka and PostgreSQL as pods"
make --no-print-directory kind-dev

step "make kind-chart (kind-install after docker build and kind load): the chart into outbox-system"
make --no-print-directory kind-chart
kubectl get pods -n outbox-system -o wide

step "kubectl apply -f manifests/outbox-system.yaml"
kubectl apply -f manifests/outbox-system.yaml
if ! kubectl wait --for condition=Ready outboxsystem/outbox --timeout="${READY_TIMEOUT}s"; then
  kubectl get outboxsystem outbox -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
  die "the reference OutboxSystem did not become Ready within ${READY_TIMEOUT}s"
fi
kubectl get outboxsystems

step "kubectl apply -f manifests/loadtest-small.yaml"
kubectl apply -f manifests/loadtest-small.yaml
name=$(kubectl create --dry-run=client -f manifests/loadtest-small.yaml -o jsonpath='{.metadata.name}')
deadline=$((SECONDS + RUN_TIMEOUT))
last=
while :; do
  phase=$(kubectl get loadtest "$name" -o jsonpath='{.status.phase}')
  if [ "$phase" != "$last" ]; then
    kubectl get loadtest "$name" --no-headers
    last=$phase
  fi
  case $phase in Succeeded | Failed) break ;; esac
  ((SECONDS < deadline)) || die "the LoadTest did not finish within ${RUN_TIMEOUT}s (phase ${phase:-none})"
  sleep 5
done
kubectl get outboxsystems,loadtests
verified=$(kubectl get loadtest "$name" -o jsonpath='{.status.conditions[?(@.type=="Verified")].status}')
[ "$phase" = Succeeded ] && [ "$verified" = True ] ||
  die "the LoadTest ended $phase with Verified=${verified:-unset}: $(kubectl get loadtest "$name" \
    -o jsonpath='{.status.conditions[?(@.type=="Verified")].message}')"
