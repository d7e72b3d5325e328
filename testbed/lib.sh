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
PROMETHEUS_BIN=$CACHE_DIR/prometheus-$PROMETHEUS_VERSION
MONITORING_CRDS=$CACHE_DIR/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION
KEDA_CRDS=$CACHE_DIR/keda-crds-$KEDA_VERSION
KEDA_BIN=$CACHE_DIR/keda-$KEDA_VERSION
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

# The Prometheus Operator's PodMonitor, ServiceMonitor and PrometheusRule CRDs (from its Go
# module, built if missing) applied to the running testbed, and served.
apply_monitoring_crds() {
  "$TESTBED_DIR/build.sh" monitoring_crds
  kubectl_ apply --server-side --force-conflicts -f "$MONITORING_CRDS/" >/dev/null
  kubectl_ wait --for condition=Established --timeout 60s crd/podmonitors.monitoring.coreos.com \
    crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com >/dev/null
}

# ---------------------------------------------------------------- recorded processes
# A pid file alone names whatever process has that pid now: once the recorded process
# has exited, the kernel may give its pid to an unrelated process, and `kill -0` cannot
# tell the two apart. Signalled as root, that process's group would die instead. So when
# a part starts, its pid file NAME.pid (the pid alone: cpu_exporter.py and the Rust tests
# read it) gets two companions: NAME.start, the process's start time (field 22 of
# /proc/PID/stat, clock ticks after boot: with the pid, unique until the next reboot),
# and NAME.cmdline, the command line it was started with (NUL-separated, as in
# /proc/PID/cmdline; part.sh starts the part again from it). A process is signalled only
# while both still match; nothing is ever selected by a pattern (no pkill, no killall).

proc_stat_fields() { # proc_stat_fields PID: fields 3 (state) onwards of /proc/PID/stat, one per word
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  # The command name (field 2) is in parentheses and may hold spaces and parentheses.
  echo "${stat##*) }"
}

proc_start_time() { # proc_start_time PID: PID's start time; fails when it is gone (a zombie is gone)
  local -a f
  read -ra f <<<"$(proc_stat_fields "$1")" || return 1
  case ${f[0]:-} in "" | Z | X | x) return 1 ;; esac
  echo "${f[19]}"
}

record_process() { # record_process PIDFILE PID [ARG...]: PID and its start time, and ARGs (its command line)
  local pidfile=$1 pid=$2 base=${1%.pid}
  shift 2
  proc_start_time "$pid" >"$base.start" || rm -f "$base.start"
  if [ $# -gt 0 ]; then printf '%s\0' "$@" >"$base.cmdline"; fi
  echo "$pid" >"$pidfile"
}

argv_matches() { # argv_matches N PROGRAM [FLAG VALUE]... ARG...: the N words describe the ARGs (see check_recorded_process)
  local n=$1 i j
  shift
  local -a want=("${@:1:n}") have=("${@:n+1}")
  [ ${#have[@]} -gt 0 ] || return 1
  [[ ${have[0]} == "${want[0]}" || ${have[0]##*/} == "${want[0]}" ]] || return 1
  for ((i = 1; i < n; i += 2)); do
    for ((j = 1; j + 1 < ${#have[@]}; j++)); do
      [[ ${have[j]} == "${want[i]}" && ${have[j + 1]} == "${want[i + 1]:-}" ]] && continue 2
    done
    return 1
  done
}

argv_equal() { # argv_equal N WORD... ARG...: the N WORDs are the ARGs (the program by its base name)
  local n=$1 i
  shift
  [ $# = $((2 * n)) ] || return 1
  local -a want=("${@:1:n}") have=("${@:n+1}")
  # A program started by name may run under its full path: a PATH shim (pyenv's
  # python3) execs the real one, whose argv[0] is that path. The start time already
  # tells the process apart; the program's base name must still match.
  [[ ${have[0]} == "${want[0]}" || ${have[0]##*/} == "${want[0]##*/}" ]] || return 1
  for ((i = 1; i < n; i++)); do [[ ${have[i]} == "${want[i]}" ]] || return 1; done
}

# check_recorded_process PIDFILE [PROGRAM [FLAG VALUE]...]: whether the process PIDFILE
# names (its first line) still runs and is the one that was recorded. Sets RECORDED_PID
# and, when it is not, RECORDED_WHY. Returns 0 when it is, 1 when there is no pid file or
# no such process (or a zombie), 2 when the pid now belongs to another process: its start
# time is not the one in PIDFILE's .start file, or its command line is not the one in the
# .cmdline file (without either file: none of its arguments names $STATE_DIR). With
# PROGRAM (a pid file another program wrote: PostgreSQL's postmaster.pid, a containerd
# shim's shim.pid), the command line is checked against that instead: PROGRAM is its
# program (whole or base name) and each FLAG is followed by VALUE.
check_recorded_process() {
  local pidfile=$1 base=${1%.pid} start recorded
  shift
  RECORDED_PID='' RECORDED_WHY=''
  [ -f "$pidfile" ] || { RECORDED_WHY="no pid file"; return 1; }
  read -r RECORDED_PID <"$pidfile" || true
  if ! [[ $RECORDED_PID =~ ^[1-9][0-9]*$ ]] || [ "$RECORDED_PID" = 1 ]; then
    RECORDED_WHY="no pid in $pidfile"
    return 1
  fi
  start=$(proc_start_time "$RECORDED_PID") || { RECORDED_WHY="pid $RECORDED_PID is gone"; return 1; }
  if [ -f "$base.start" ]; then
    read -r recorded <"$base.start" || true
    if [ "$start" != "$recorded" ]; then
      RECORDED_WHY="pid $RECORDED_PID started at tick $start, not at tick $recorded as recorded"
      return 2
    fi
  fi
  local -a want have
  mapfile -d '' -t have 2>/dev/null <"/proc/$RECORDED_PID/cmdline" || true
  if [ $# -gt 0 ]; then
    want=("$@")
    argv_matches ${#want[@]} "${want[@]}" "${have[@]}" && return 0
    RECORDED_WHY="pid $RECORDED_PID runs '${have[*]}', not $1 with ${*:2}"
    return 2
  fi
  if [ ! -f "$base.cmdline" ]; then
    # A pid file from before the start times (an up.sh older than this check, whose
    # testbed still runs): the part is the process whose arguments name this testbed's
    # state directory, as every part's do.
    local arg
    if [ ! -f "$base.start" ]; then
      for arg in "${have[@]:1}"; do [[ $arg == *"$STATE_DIR/"* ]] && return 0; done
    fi
    RECORDED_WHY="pid $RECORDED_PID runs '${have[*]}' and there is no record ($base.cmdline) of what was started"
    return 2
  fi
  mapfile -d '' -t want <"$base.cmdline"
  argv_equal ${#want[@]} "${want[@]}" "${have[@]}" && return 0
  RECORDED_WHY="pid $RECORDED_PID runs '${have[*]}', not '${want[*]}' as recorded"
  return 2
}

still_running() { # still_running PID START: PID runs and started at START (no other process took its pid)
  [ "$(proc_start_time "$1")" = "$2" ]
}

gone_within() { # gone_within PID START TICKS: waits up to TICKS quarter seconds for PID to exit
  local i
  for ((i = 0; i < $3; i++)); do still_running "$1" "$2" || return 0; sleep 0.25; done
  ! still_running "$1" "$2"
}

# stop_recorded_process [--kill] [--process] [--keep-pidfile] NAME PIDFILE [PROGRAM [FLAG VALUE]...]
# Stops the process PIDFILE names, and every process in its group when it leads one (a
# part started with setsid: its process group id is its pid), but only while
# check_recorded_process says it is the recorded one: TERM, up to 10 s, then KILL
# (--kill: KILL at once). --process: the process alone, not its group. Then removes
# PIDFILE and its .start file (.cmdline stays: part.sh starts the part again from it),
# unless --keep-pidfile (a pid file the program itself owns). A pid that is gone: the
# files are removed quietly. A pid that now belongs to another process: not signalled,
# said so, and the stale files removed. Returns 0 unless the process outlived KILL.
stop_recorded_process() {
  local kill_now=0 group=1 keep=0
  while :; do
    case ${1:-} in
      --kill) kill_now=1 ;;
      --process) group=0 ;;
      --keep-pidfile) keep=1 ;;
      *) break ;;
    esac
    shift
  done
  local name=$1 pidfile=$2 status=0 pid start target
  shift 2
  check_recorded_process "$pidfile" "$@" || status=$?
  pid=$RECORDED_PID
  case $status in
    0) ;;
    1) ((keep)) || rm -f "$pidfile" "${pidfile%.pid}.start"; return 0 ;;
    *)
      log "$name: not signalling pid $pid: it is no longer the process that was started ($RECORDED_WHY)$( ((keep)) || echo "; removing the stale pid file $pidfile")"
      ((keep)) || rm -f "$pidfile" "${pidfile%.pid}.start"
      return 0
      ;;
  esac
  start=$(proc_start_time "$pid") || start=gone
  target=$pid
  if ((group)); then
    local -a f
    read -ra f <<<"$(proc_stat_fields "$pid")" || true
    [ "${f[2]:-}" = "$pid" ] && target=-$pid
  fi
  if ((kill_now)); then
    log "$name: SIGKILL (pid $pid$([ "$target" = "$pid" ] || echo ", its process group"))"
  else
    log "$name: stopping (pid $pid)"
    kill -TERM -- "$target" 2>/dev/null || true
    if ! gone_within "$pid" "$start" 40; then
      log "$name: did not stop on TERM, killing"
      kill_now=1
    fi
  fi
  if ((kill_now)) && still_running "$pid" "$start"; then
    kill -KILL -- "$target" 2>/dev/null || true
    gone_within "$pid" "$start" 40 || { log "$name: pid $pid is still there after SIGKILL"; return 1; }
  fi
  ((keep)) || rm -f "$pidfile" "${pidfile%.pid}.start"
}

# start_part NAME CMD...: runs CMD detached in its own session (setsid: its process
# group id is its pid), logging to logs/NAME.log, and records it (record_process) in
# run/NAME.pid. Nothing when NAME already runs.
start_part() {
  local name=$1
  shift
  local status=0
  part_running "$name" || status=$?
  case $status in
    0) log "$name: already running (pid $RECORDED_PID)"; return 0 ;;
    2) log "$name: its pid file is stale ($RECORDED_WHY)" ;;
  esac
  log "$name: starting (log: $LOG_DIR/$name.log)"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  record_process "$RUN_DIR/$name.pid" $! "$@"
}

part_running() { # part_running NAME: true while the process start_part recorded for NAME runs
  check_recorded_process "$RUN_DIR/$1.pid"
}

# stop_part NAME: stops a part start_part started (stop_recorded_process).
stop_part() { stop_recorded_process "$1" "$RUN_DIR/$1.pid"; }
