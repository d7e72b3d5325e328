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
    *) kill -0 "$(cat "$RUN_DIR/$1.pid")" ;;
  esac
}

stop() { # stop PART SIGNAL
  if [ "$1" = postgres ]; then
    if [ "$2" = KILL ]; then
      local pid
      pid=$(head -n1 "$PG_DIR/postmaster.pid" 2>/dev/null) || die "postgres is not running"
      log "postgres: SIGKILL to the postmaster (pid $pid)"
      kill -KILL "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    else
      log "postgres: fast shutdown"
      as_pg "$(pg_bindir)/pg_ctl" -D "$PG_DIR" -m fast -w -t 60 stop >/dev/null
    fi
    return 0
  fi
  local pidfile=$RUN_DIR/$1.pid pid
  [ -f "$pidfile" ] || die "$1 is not running (no $pidfile)"
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || die "$1 is not running (pid $pid is gone)"
  # Kept for `start`: the exact command line, NUL-separated.
  cp "/proc/$pid/cmdline" "$RUN_DIR/$1.cmdline"
  if [ "$2" = KILL ]; then
    log "$1: SIGKILL (pid $pid)"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$pidfile"
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
    if [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; then
      log "$1: already running"
      return 0
    fi
    [ -f "$saved" ] || die "$1: no saved command line ($saved): stop it with this script first"
    local -a cmd
    mapfile -d '' -t cmd <"$saved"
    log "$1: starting again (log: $LOG_DIR/$1.log)"
    (enter_service_cgroup "$1"; setsid "${cmd[@]}" >>"$LOG_DIR/$1.log" 2>&1 </dev/null & echo $! >"$RUN_DIR/$1.pid")
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
