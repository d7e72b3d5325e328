# Shared helpers for the testbed scripts. Sourced, not run.
# shellcheck shell=bash
# The variables are for the scripts that source this file.
# shellcheck disable=SC2034
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
COREDNS_BIN=$CACHE_DIR/coredns-$COREDNS_VERSION
KAFKA_LIB=$CACHE_DIR/kafka-$KAFKA_VERSION/lib
# Runtime state of one testbed: git-ignored, inside the checkout.
STATE_DIR=${OUTBOX_TESTBED_STATE:-$REPO_ROOT/.testbed}
LOG_DIR=$STATE_DIR/logs
RUN_DIR=$STATE_DIR/run

# The node (testbed/node.sh): one per machine. Its bridge is the node's address and the
# host side of the pod network, where pods reach Kafka, PostgreSQL, the API server and DNS.
TESTBED_NODE=${TESTBED_NODE:-1}
NODE_NAME=outbox-testbed-node
NODE_BRIDGE=outboxbr0
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
POD_PREFIX=16
SERVICE_CIDR=10.0.0.0/24
PAUSE_IMAGE=registry.k8s.io/pause:3.10

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

# Postgres' server binaries from Debian's postgresql-$PG_MAJOR package.
pg_bindir() { echo "/usr/lib/postgresql/$PG_MAJOR/bin"; }

# ---------------------------------------------------------------- service cgroups
# With the node, the pods share the cores with PostgreSQL and Kafka. On cgroup v1 a
# process left in the root cgroup weighs as much (cpu.shares 1024) as one core's worth of
# the whole /kubepods tree (1024 per core), so twenty busy PostgreSQL backends outweighed
# every pod together ten to one: under a load of single messages the relay and the
# consumers starved while ingest ran. Each service runs in a cpu cgroup of its own
# instead, under /outbox-testbed, which weighs one core (its default 1,024 shares) for
# the two together, as a database and a broker in one pod requesting one CPU would; the
# children's shares divide that between them. Made by up.sh as root with the node
# (cgroup v1 only), removed by down.sh.
SERVICE_CGROUPS=/sys/fs/cgroup/cpu/outbox-testbed
SERVICE_CPU_SHARES=1024

service_cgroups_create() { # one cpu cgroup per service, when the node runs on cgroup v1
  ((TESTBED_NODE)) && [ "$(id -u)" = 0 ] || return 0
  if [ ! -f /sys/fs/cgroup/cpu/cpu.shares ]; then
    log "no cgroup v1 cpu hierarchy: PostgreSQL and Kafka share the root cgroup with the node"
    return 0
  fi
  local name
  for name in postgres kafka; do
    mkdir -p "$SERVICE_CGROUPS/$name"
    echo "$SERVICE_CPU_SHARES" >"$SERVICE_CGROUPS/$name/cpu.shares"
  done
}

enter_service_cgroup() { # enter_service_cgroup NAME: this (sub)shell and what it starts join NAME's cgroup, if made
  if [ -d "$SERVICE_CGROUPS/$1" ]; then echo "$BASHPID" >"$SERVICE_CGROUPS/$1/cgroup.procs"; fi
}

service_cgroups_remove() { # once their processes are gone
  [ -d "$SERVICE_CGROUPS" ] || return 0
  local dir
  for dir in "$SERVICE_CGROUPS"/*/; do
    [ -d "$dir" ] && { rmdir "$dir" || log "warning: $dir still has processes: $(tr '\n' ' ' <"$dir/cgroup.procs")"; }
  done
  rmdir "$SERVICE_CGROUPS" 2>/dev/null || true
}

# write_if_changed FILE: writes stdin to FILE, leaving FILE untouched when it already
# holds exactly that. A running kube-proxy exits when its config file is written, even
# with the same bytes, so `up.sh` on a running testbed must not rewrite it.
write_if_changed() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

# free_ports N: N distinct TCP ports free on loopback, below the kernel's ephemeral range
# (so no outgoing connection can take one between this pick and the bind), starting at a
# random place so that two testbeds on one machine are unlikely to pick the same ones.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
want = int(sys.argv[1])
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    ephemeral_low = int(f.read().split()[0])
low, high = 20000, min(ephemeral_low, 32768)
start = random.randrange(low, high)
found = []
for i in range(high - low):
    port = low + (start - low + i) % (high - low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        found.append(port)
    except OSError:
        continue
    finally:
        s.close()
    if len(found) == want:
        print(" ".join(map(str, found)))
        sys.exit(0)
sys.exit("no free ports on 127.0.0.1 between %d and %d" % (low, high))
PY
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

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$STATE_DIR/kubeconfig" "$@"; }

# stop_part NAME: stops a part `up.sh` started (its own session, so its process group id
# is its pid and the signal reaches every child): TERM, then KILL after 10 s.
stop_part() {
  local pidfile=$RUN_DIR/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "$1: stopping (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$1: did not stop on TERM, killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}
