#!/usr/bin/env bash
# Stops, kills, starts or restarts one part of a running testbed: the real process, with
# real signals, and the same command line it had (read from /proc when it is stopped).
# Fault-injection tests and `make chaos` use it.
#
#   testbed/part.sh stop|kill|start|restart PART
#
# PART: postgres, kafka, kube-apiserver, kubelet (any part up.sh started with `start`
# works; those four are the ones the fault matrix uses). `stop` is graceful (PostgreSQL's
# fast shutdown, SIGTERM for the others), `kill` is SIGKILL (PostgreSQL: its postmaster).
# `start` returns once the part answers again.
. "$(dirname "$0")/lib.sh"

usage() { die "usage: $0 stop|kill|start|restart PART"; }
[ $# -eq 2 ] || usage
action=$1 part=$2
[ -f "$STATE_DIR/env" ] || die "no testbed runs here ($STATE_DIR/env is missing): make testbed-up"
# shellcheck source=/dev/null
. "$STATE_DIR/ports.env"

PG_DIR=$STATE_DIR/postgres
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

ready() { # ready PART: true when PART answers
  case $1 in
    postgres) as_pg "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" ;;
    kafka) python3 "$TESTBED_DIR/kafka_metadata.py" "127.0.0.1:$KAFKA_PORT" ;;
    kube-apiserver) kubectl_ get --raw /readyz ;;
    kubelet) curl -fsS "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" ;;
    *) part_running "$1" ;;
  esac
}

# The postmaster as pg_ctl starts it: what its pid in postmaster.pid must still run.
POSTMASTER=("$(pg_bindir)/postgres" -D "$PG_DIR")

stop() { # stop PART SIGNAL
  if [ "$1" = postgres ]; then
    if [ "$2" = KILL ]; then
      # The postmaster alone (its backends notice and exit, as after a crash); its
      # postmaster.pid stays for the next start's checks.
      check_recorded_process "$PG_DIR/postmaster.pid" "${POSTMASTER[@]}" \
        || die "postgres is not running (${RECORDED_WHY})"
      stop_recorded_process --kill --process --keep-pidfile postgres "$PG_DIR/postmaster.pid" "${POSTMASTER[@]}"
    else
      log "postgres: fast shutdown"
      as_pg "$(pg_bindir)/pg_ctl" -D "$PG_DIR" -m fast -w -t 60 stop >/dev/null
    fi
    return 0
  fi
  # Only the process start_part recorded: its start time and command line still match.
  # Its command line stays in run/PART.cmdline for `start`.
  part_running "$1" || die "$1 is not running (${RECORDED_WHY})"
  # A part an older up.sh started has no recorded command line: keep the one it runs.
  [ -f "$RUN_DIR/$1.cmdline" ] || cp "/proc/$RECORDED_PID/cmdline" "$RUN_DIR/$1.cmdline"
  if [ "$2" = KILL ]; then
    stop_recorded_process --kill "$1" "$RUN_DIR/$1.pid"
  else
    stop_part "$1"
  fi
}

start() { # start PART: the same command line as before, then wait until it answers
  if [ "$1" = postgres ]; then
    log "postgres: starting"
    (enter_service_cgroup postgres; as_pg "$(pg_bindir)/pg_ctl" -D "$PG_DIR" -l "$LOG_DIR/postgres.log" -w -t 60 start >/dev/null)
  else
    local saved=$RUN_DIR/$1.cmdline
    if part_running "$1"; then
      log "$1: already running"
      return 0
    fi
    [ -f "$saved" ] || die "$1: no saved command line ($saved)"
    local -a cmd
    mapfile -d '' -t cmd <"$saved"
    log "$1: starting again"
    (enter_service_cgroup "$1"; start_part "$1" "${cmd[@]}")
  fi
  wait_for "$1" 120 "$LOG_DIR/$1.log" ready "$1" || die "$1 did not answer within 120 s after starting"
  log "$1: answering"
}

case $action in
  stop) stop "$part" TERM ;;
  kill) stop "$part" KILL ;;
  start) start "$part" ;;
  restart) stop "$part" TERM && start "$part" ;;
  *) usage ;;
esac
