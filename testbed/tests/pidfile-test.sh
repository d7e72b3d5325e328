#!/usr/bin/env bash
# The testbed signals a process named by a pid file only while that pid is still the
# process that was started (lib.sh's stop_recorded_process: its start time and command
# line as recorded by start_part), never one that got the pid later. With harmless
# `sleep`s of its own, each in its own session as up.sh starts its parts:
#   (a) a part start_part started is stopped by stop_part, its whole process group too;
#   (b) a pid file whose pid now belongs to another process (another command line, or
#       the same command line started later) is not signalled: that process survives,
#       and the stale pid file is removed, with a message;
#   (c) a pid file naming a pid that does not exist is removed quietly;
#   (d) a pid file another program wrote (PROGRAM FLAG VALUE expected, as for
#       PostgreSQL's postmaster.pid and a containerd shim's shim.pid) is signalled only
#       when the process runs that program with those arguments;
#   (e) a part started by a name that a PATH shim turns into the program's full path
#       (pyenv's python3 runs the cpu exporter so) is still its recorded process, and
#       stopped.
# No root, no testbed, a few seconds: bash testbed/tests/pidfile-test.sh
# TESTBED_LIB=FILE runs it against another lib.sh (how it was shown to fail before).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
# lib.sh's RUN_DIR and LOG_DIR are under the state directory: a throwaway one.
export OUTBOX_TESTBED_STATE=$tmp/state

# The start time (field 22 of /proc/PID/stat) of PID; empty when it is gone or a zombie.
# The test's own, so that the cleanup works whatever lib.sh does.
start_time_of() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
  local -a f
  read -ra f <<<"${stat##*) }"
  [ "${f[0]}" = Z ] || echo "${f[19]}"
}

# Every process this test starts, as "PID START": the cleanup kills exactly these, and
# only while each pid is still that process.
started=()
cleanup() {
  local entry pid start
  for entry in "${started[@]}"; do
    read -r pid start <<<"$entry"
    [ -n "$start" ] && [ "$(start_time_of "$pid")" = "$start" ] && kill -KILL "$pid" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
remember() { started+=("$1 $(start_time_of "$1")"); }

# shellcheck source=../lib.sh
. "${TESTBED_LIB:-$here/../lib.sh}"
set +e # lib.sh sets -e; the checks below report instead of stopping at the first
mkdir -p "$RUN_DIR" "$LOG_DIR"

failures=0
pass() { echo "ok - $*"; }
fail() { echo "not ok - $*"; failures=$((failures + 1)); }
check() { # check DESCRIPTION CMD...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

alive() { [ -n "$(start_time_of "$1")" ]; }
gone() { ! alive "$1"; }

# Waits (up to 5 s) until PID runs PROGRAM: it has exec'd, as the testbed's parts have
# long before anything stops them.
wait_exec() {
  local pid=$1 program=$2 argv0 _
  for _ in $(seq 1 50); do
    argv0=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n1)
    [ "${argv0##*/}" = "$program" ] && return 0
    sleep 0.1
  done
  return 1
}

# Processes are started from a subshell, as up.sh's and part.sh's are (no job of this
# shell, so no "Killed" notices).
wait_gone() { # wait_gone PID: up to 5 s
  local _
  for _ in $(seq 1 50); do gone "$1" && return 0; sleep 0.1; done
  return 1
}

# spawn CMD...: CMD in its own session (its process group id is its pid), not recorded
# anywhere: an unrelated process. Its pid in SPAWNED.
spawn() {
  (setsid "$@" </dev/null >/dev/null 2>&1 & echo $! >"$tmp/spawned")
  read -r SPAWNED <"$tmp/spawned"
  remember "$SPAWNED"
  wait_exec "$SPAWNED" "$1"
}

# start_recorded NAME CMD...: start_part's part NAME, its pid in RECORDED.
start_recorded() {
  (start_part "$@" 2>/dev/null)
  read -r RECORDED <"$RUN_DIR/$1.pid"
  remember "$RECORDED"
}

# start_sleeper: the part "sleeper" (sleep 1000), its pid in SLEEPER.
start_sleeper() {
  start_recorded sleeper sleep 1000
  SLEEPER=$RECORDED
  wait_exec "$SLEEPER" sleep
}

# The sleeper exits (here: killed by the test itself), as a part that crashed.
sleeper_exits() {
  kill -KILL "$SLEEPER"
  wait_gone "$SLEEPER"
}

echo "# (a) a recorded part and its process group are stopped"
start_recorded group sh -c "sleep 1001 & echo \$! >'$tmp/child'; wait"
leader=$RECORDED
for _ in $(seq 1 50); do [ -s "$tmp/child" ] && break; sleep 0.1; done
read -r child <"$tmp/child"
remember "$child"
check "the part and its child run" alive "$leader"
check "the child is in the part's process group" \
  test "$(ps -o pgid= -p "$child" | tr -d ' ')" = "$leader"
stop_part group 2>"$tmp/a.log"
check "stop_part stopped the part" wait_gone "$leader"
check "stop_part stopped its child (the signal went to the group)" wait_gone "$child"
check "its pid file is removed" test ! -e "$RUN_DIR/group.pid"
sed 's/^/#   /' "$tmp/a.log"

echo "# (b) a pid that now belongs to another process is not signalled"
start_sleeper
sleeper_exits
spawn sleep 2000
other=$SPAWNED
# As if the kernel had given the sleeper's pid to that other process.
echo "$other" >"$RUN_DIR/sleeper.pid"
stop_part sleeper 2>"$tmp/b1.log"
sleep 0.3
check "another command line: the process with the pid survives" alive "$other"
check "another command line: the stale pid file is removed" test ! -e "$RUN_DIR/sleeper.pid"
check "another command line: it says why it did not signal" grep -q "not signalling pid $other" "$tmp/b1.log"
sed 's/^/#   /' "$tmp/b1.log"

start_sleeper
sleeper_exits
spawn sleep 1000
same=$SPAWNED
echo "$same" >"$RUN_DIR/sleeper.pid"
stop_part sleeper 2>"$tmp/b2.log"
sleep 0.3
check "the same command line started later: the process with the pid survives" alive "$same"
check "the same command line started later: the stale pid file is removed" test ! -e "$RUN_DIR/sleeper.pid"
check "the same command line started later: it says why it did not signal" \
  grep -q "not signalling pid $same" "$tmp/b2.log"
sed 's/^/#   /' "$tmp/b2.log"

# The pid and start time are the recorded ones, but the process has since exec'd
# another program (what the command line check alone catches).
start_recorded changer sh -c 'sleep 0.3; exec sleep 1002'
changer=$RECORDED
wait_exec "$changer" sleep
stop_part changer 2>"$tmp/b3.log"
sleep 0.3
check "the recorded process now runs another program: it survives" alive "$changer"
check "the recorded process now runs another program: the stale pid file is removed" \
  test ! -e "$RUN_DIR/changer.pid"
check "the recorded process now runs another program: it says why it did not signal" \
  grep -q "not signalling pid $changer" "$tmp/b3.log"
sed 's/^/#   /' "$tmp/b3.log"

echo "# (c) a pid that does not exist is cleaned up quietly"
start_sleeper
sleeper_exits
# Reaped too (by init: its parent, a subshell, has exited): no /proc entry at all.
for _ in $(seq 1 50); do [ -e "/proc/$SLEEPER" ] || break; sleep 0.1; done
check "the pid does not exist" test ! -e "/proc/$SLEEPER"
stop_part sleeper >"$tmp/c.log" 2>&1
status=$?
check "stop_part succeeds" test "$status" = 0
check "the pid file is removed" test ! -e "$RUN_DIR/sleeper.pid"
check "nothing is said" test ! -s "$tmp/c.log"
sed 's/^/#   /' "$tmp/c.log"

echo "# (d) a pid file another program wrote: PROGRAM FLAG VALUE expected"
spawn python3 -c 'import time; time.sleep(1000)' -address "$tmp/sock"
shim=$SPAWNED
echo "$shim" >"$tmp/shim.pid"
stop_recorded_process --kill --process "shim" "$tmp/shim.pid" python3 -address "$tmp/elsewhere.sock" 2>"$tmp/d1.log"
sleep 0.3
check "another socket: not signalled" alive "$shim"
check "another socket: it says why" grep -q "not signalling pid $shim" "$tmp/d1.log"
sed 's/^/#   /' "$tmp/d1.log"
echo "$shim" >"$tmp/shim.pid"
stop_recorded_process --kill --process "shim" "$tmp/shim.pid" python3 -address "$tmp/sock" 2>"$tmp/d2.log"
check "its program and socket: killed" wait_gone "$shim"
check "its program and socket: the pid file is removed" test ! -e "$tmp/shim.pid"
sed 's/^/#   /' "$tmp/d2.log"

echo "# (e) a part whose program a PATH shim ran under its full path is stopped"
mkdir -p "$tmp/shims"
real_sleep=$(command -v sleep)
printf '#!/bin/sh\nexec %s "$@"\n' "$real_sleep" >"$tmp/shims/sleep"
chmod +x "$tmp/shims/sleep"
PATH="$tmp/shims:$PATH" start_recorded shimmed sleep 1003
shimmed=$RECORDED
wait_exec "$shimmed" sleep
check "the shim exec'd the program under its full path" \
  test "$(tr '\0' '\n' <"/proc/$shimmed/cmdline" | head -n1)" = "$real_sleep"
stop_part shimmed 2>"$tmp/e.log"
check "stop_part stopped it" wait_gone "$shimmed"
check "its pid file is removed" test ! -e "$RUN_DIR/shimmed.pid"
sed 's/^/#   /' "$tmp/e.log"

echo "$SECONDS s, $failures failed"
[ "$failures" = 0 ]
