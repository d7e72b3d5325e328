#!/usr/bin/env bash
# Stops every testbed process that up.sh started and removes the testbed's state.
# --keep-logs keeps .testbed/logs (up.sh uses it after a failed start).
. "$(dirname "$0")/lib.sh"

keep_logs=0
[ "${1:-}" = "--keep-logs" ] && keep_logs=1
[ -d "$STATE_DIR" ] || { log "nothing to stop"; exit 0; }

PG_BIN=$(pg_bindir)
if [ -f "$STATE_DIR/postgres/postmaster.pid" ]; then
  log "postgres: stopping"
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$STATE_DIR/postgres" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  else
    "$PG_BIN/pg_ctl" -D "$STATE_DIR/postgres" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
  pid=$(head -n1 "$STATE_DIR/postgres/postmaster.pid" 2>/dev/null || true)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
fi

# Reverse start order. Each part runs in its own session (setsid), so its process group
# id is its pid: the signal reaches every child too.
for name in kafka kube-controller-manager kube-apiserver etcd; do
  pidfile=$RUN_DIR/$name.pid
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: stopping (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name: did not stop on TERM, killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
done

if ((keep_logs)); then
  find "$STATE_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
else
  rm -rf "$STATE_DIR"
fi
log "stopped"
