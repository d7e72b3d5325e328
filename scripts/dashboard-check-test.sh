#!/usr/bin/env bash
# The self-test of scripts/dashboard-check.py:
#   (a) the chart's dashboards pass, and --exprs prints each one's queries as JSON lines
#       with a panel and an expr;
#   (b) a copy of the system dashboard with one panel, inside a collapsed row, that has no
#       expr, one panel using a variable the dashboard does not define, one target with
#       another datasource and one duplicated panel id fails, naming the dashboard and
#       each of those panels, and --exprs refuses it;
#   (c) a file that is not JSON fails, naming it.
# No testbed, seconds: bash scripts/dashboard-check-test.sh
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checker=$here/dashboard-check.py
dashboards=$here/../charts/outbox-operator/dashboards
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failures=0
pass() { echo "ok - $*"; }
fail() { echo "not ok - $*"; failures=$((failures + 1)); }
check() { # check DESCRIPTION CMD...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
# Whether the checker's output (in $tmp/out) has a line holding every one of the words.
said() {
  local line word
  while IFS= read -r line; do
    for word in "$@"; do
      [[ $line == *"$word"* ]] || continue 2
    done
    return 0
  done <"$tmp/out"
  return 1
}

# (a)
"$checker" >"$tmp/out" 2>&1
check "the chart's dashboards pass" test $? = 0
sed 's/^/#   /' "$tmp/out"
for dashboard in "$dashboards"/*.json; do
  name=$(basename "$dashboard")
  check "$name: panel count printed" said "$name:" "panels in"
  "$checker" --exprs "$dashboard" >"$tmp/exprs" 2>"$tmp/err"
  check "$name: --exprs succeeds" test $? = 0
  check "$name: --exprs prints one JSON object with a panel and an expr per line" \
    python3 -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no lines"
for line in lines:
    target = json.loads(line)
    assert set(target) == {"panel", "expr"} and target["panel"] and target["expr"], line
' "$tmp/exprs"
done

# (b) Broken on purpose: the Resources row collapsed with its panels inside it, "CPU by
# pod" among them without an expr; "Lag by group" using $cluster; "Relay errors" on
# another datasource; "Abandoned by group" with the id of "Dead-lettered by group".
python3 - "$dashboards/outbox-system.json" "$tmp/outbox-system.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
by_title = {p.get("title"): p for p in d["panels"]}
row = next(i for i, p in enumerate(d["panels"]) if p["type"] == "row" and p["title"] == "Resources")
d["panels"], d["panels"][row]["panels"] = d["panels"][:row + 1], d["panels"][row + 1:]
d["panels"][row]["collapsed"] = True
cpu = next(p for p in d["panels"][row]["panels"] if p["title"] == "CPU by pod")
del cpu["targets"][0]["expr"]
by_title["Lag by group"]["targets"][0]["expr"] = 'sum by (group) (outbox_consumer_lag{cluster="$cluster"})'
by_title["Relay errors"]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "prom-1"}
by_title["Abandoned by group"]["id"] = by_title["Dead-lettered by group"]["id"]
json.dump(d, open(sys.argv[2], "w"), indent=2)
EOF
"$checker" "$tmp/outbox-system.json" >"$tmp/out" 2>&1
check "a broken copy fails" test $? = 1
sed 's/^/#   /' "$tmp/out"
check "it names the panel in a collapsed row that has no expr" said outbox-system.json "'CPU by pod'" "no expr"
check "it names the panel using an undefined variable, and the variable" said outbox-system.json "'Lag by group'" "\$cluster"
check "it names the target on another datasource" said outbox-system.json "'Relay errors'" prom-1
check "it names the panel with a duplicated id" said outbox-system.json "'Abandoned by group'" "'Dead-lettered by group'"
"$checker" --exprs "$tmp/outbox-system.json" >"$tmp/exprs" 2>"$tmp/out"
check "--exprs refuses it" test $? = 1
check "... printing no query" test ! -s "$tmp/exprs"
check "--exprs says why" said "'CPU by pod'" "no expr"

# (c)
echo '{"uid": "x",' >"$tmp/broken.json"
"$checker" "$tmp/broken.json" >"$tmp/out" 2>&1
check "a file that is not JSON fails" test $? = 1
check "... naming it" said broken.json "not valid JSON"

echo "$SECONDS s, $failures failed"
[ "$failures" = 0 ]
