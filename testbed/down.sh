#!/usr/bin/env bash
# Stops every testbed process that up.sh started and removes the testbed's state.
# --keep-logs keeps .testbed/logs (up.sh uses it after a failed start).
. "$(dirname "$0")/lib.sh"
# shellcheck source=node.sh
. "$TESTBED_DIR/node.sh"

keep_logs=0
[ "${1:-}" = "--keep-logs" ] && keep_logs=1
[ -d "$STATE_DIR" ] || { log "nothing to stop"; exit 0; }

# The node first (its pods use everything below), then the rest in reverse start order.
# shellcheck source=/dev/null
[ -f "$STATE_DIR/ports.env" ] && . "$STATE_DIR/ports.env"
node_down

PG_BIN=$(pg_bindir)
if [ -f "$STATE_DIR/postgres/postmaster.pid" ]; then
  log "postgres: stopping"
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$STATE_DIR/postgres" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  else
    "$PG_BIN/pg_ctl" -D "$STATE_DIR/postgres" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
  # Still there (pg_ctl timed out): SIGKILL to the postmaster, if its pid is still it.
  stop_recorded_process --kill --process --keep-pidfile postgres "$STATE_DIR/postgres/postmaster.pid" \
    "$PG_BIN/postgres" -D "$STATE_DIR/postgres" || true
fi

# Reverse start order. Each part runs in its own session (setsid), so its process group
# id is its pid: the signal reaches every child too. Only while its pid is still the
# process up.sh started (stop_part checks its start time and command line).
for name in prometheus cpu-exporter kafka kube-controller-manager kube-apiserver etcd; do stop_part "$name" || true; done
service_cgroups_remove

if ((keep_logs)); then
  find "$STATE_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
else
  rm -rf "$STATE_DIR"
fi
log "stopped"
