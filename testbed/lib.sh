# Shared helpers for the testbed scripts. Sourced, not run.
# shellcheck shell=bash
set -euo pipefail

TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TESTBED_DIR/.." && pwd)
# shellcheck source=versions.env
. "$TESTBED_DIR/versions.env"

# Builds and downloads live outside the repo so that a fresh clone reuses them.
CACHE_DIR=${OUTBOX_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-testbed}
K8S_BIN=$CACHE_DIR/kubernetes-$K8S_VERSION
ETCD_BIN=$CACHE_DIR/etcd-$ETCD_VERSION
HELM_BIN=$CACHE_DIR/helm-$HELM_VERSION
KAFKA_LIB=$CACHE_DIR/kafka-$KAFKA_VERSION/lib
# Runtime state of one testbed: git-ignored, inside the checkout.
STATE_DIR=${OUTBOX_TESTBED_STATE:-$REPO_ROOT/.testbed}
LOG_DIR=$STATE_DIR/logs
RUN_DIR=$STATE_DIR/run

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

# Postgres' server binaries from Debian's postgresql-$PG_MAJOR package.
pg_bindir() { echo "/usr/lib/postgresql/$PG_MAJOR/bin"; }

# A free TCP port on loopback, asked from the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for NAME SECONDS LOGFILE CMD...: retry CMD until it succeeds or time runs out.
wait_for() {
  local name=$1 secs=$2 logfile=$3; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$name did not become ready within ${secs}s; last lines of $logfile:"
      tail -n 20 "$logfile" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}
