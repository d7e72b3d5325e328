#!/usr/bin/env bash
# Runs a command with the testbed up: starts it (unless it already runs, in which case it
# is left running afterwards), sources .testbed/env, runs the command, and stops what it
# started on any exit, failure or interrupt included.
. "$(dirname "$0")/lib.sh"

started=0
if [ ! -f "$STATE_DIR/env" ]; then
  started=1
  trap '"$TESTBED_DIR/down.sh"' EXIT
  "$TESTBED_DIR/up.sh"
fi
# shellcheck source=/dev/null
. "$STATE_DIR/env"
((started)) || log "using the testbed that already runs (left running afterwards)"
"$@"
