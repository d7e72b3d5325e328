#!/usr/bin/env python3
"""Checks the Grafana dashboards the chart ships (charts/outbox-operator/dashboards/*.json)
before Grafana or Prometheus sees them. A dashboard must be JSON with a uid (its own) and
a title, and a `datasource` variable of type datasource for Prometheus. Every panel (a
row's collapsed panels too) must have targets, each with an `expr` and the datasource
`${datasource}`; no two panels may share an id; every variable an expr or a variable's
query uses must be defined, `$__rate_interval` being the one Grafana macro allowed (the
testbed test runs each expr against a real Prometheus with only that one substituted);
an expr's brackets must pair up.

  scripts/dashboard-check.py [DASHBOARD.json ...]   check these (default: all the chart's);
                                                    exit 1 naming each problem's dashboard and panel
  scripts/dashboard-check.py --exprs DASHBOARD.json  check it, then print each target's expr
                                                    as a JSON line {"panel": TITLE, "expr": EXPR}

Its self-test is scripts/dashboard-check-test.sh.
"""
import glob
import json
import os
import re
import sys

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MACROS = {"__rate_interval"}
# $name, ${name}, ${name:format}, [[name]], [[name:format]]
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")
PAIRS = {")": "(", "]": "[", "}": "{"}


def dashboards_dir():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "charts", "outbox-operator", "dashboards")


def panels_of(dashboard):
    """Every panel in order, a row's collapsed panels right after the row."""
    for panel in dashboard.get("panels") or []:
        yield panel
        if panel.get("type") == "row":
            yield from panel.get("panels") or []


def variables_used(text):
    return [next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)]


def bracket_problem(expr):
    """What is wrong with the brackets of `expr` outside its string literals, or None."""
    expr = VARIABLE.sub("x", expr)
    stack, quote, i = [], None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\" and quote != "`":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            stack.append(c)
        elif c in PAIRS:
            if not stack or stack.pop() != PAIRS[c]:
                return f"unmatched {c!r}"
        i += 1
    if quote:
        return f"unclosed string {quote}"
    if stack:
        return f"unclosed {stack[-1]!r}"
    return None


def check_variables(name, dashboard, problems):
    """The names of the dashboard's variables; problems with them appended."""
    variables = (dashboard.get("templating") or {}).get("list") or []
    names = {v.get("name") for v in variables if isinstance(v, dict)}
    source = [v for v in variables if v.get("name") == "datasource"]
    if not source or source[0].get("type") != "datasource" or source[0].get("query") != "prometheus":
        problems.append(f"{name}: no variable `datasource` of type datasource with query prometheus")
    for v in variables:
        if v.get("type") != "query":
            continue
        if v.get("datasource") != DATASOURCE:
            problems.append(f"{name}: variable {v.get('name')}: datasource {json.dumps(v.get('datasource'))}, not {json.dumps(DATASOURCE)}")
        query = v.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        for used in variables_used(text + " " + str(v.get("definition") or "")):
            if used not in names:
                problems.append(f"{name}: variable {v.get('name')}: its query uses ${used}, which is not a variable of this dashboard")
    return names


def check_panel(name, panel, variables, problems):
    where = f"{name}: panel {panel.get('title')!r} (id {panel.get('id')})"
    if "datasource" in panel and panel["datasource"] != DATASOURCE:
        problems.append(f"{where}: datasource {json.dumps(panel['datasource'])}, not {json.dumps(DATASOURCE)}")
    targets = panel.get("targets") or []
    if not targets:
        problems.append(f"{where}: no targets")
    for target in targets:
        ref = target.get("refId", "?")
        expr = target.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            problems.append(f"{where}: target {ref} has no expr")
            continue
        if target.get("datasource") != DATASOURCE:
            problems.append(f"{where}: target {ref}: datasource {json.dumps(target.get('datasource'))}, not {json.dumps(DATASOURCE)}")
        for used in variables_used(expr):
            if used not in variables and used not in MACROS:
                problems.append(f"{where}: target {ref} uses ${used}, which is neither a variable of this dashboard nor $__rate_interval")
        brackets = bracket_problem(expr)
        if brackets:
            problems.append(f"{where}: target {ref}: {brackets} in {expr}")


def check(path):
    """(the dashboard or None, its problems)."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        return None, [f"{name}: not valid JSON: {e}"]
    if not isinstance(dashboard, dict):
        return None, [f"{name}: not a dashboard (a JSON object)"]
    problems = []
    for key in ("uid", "title"):
        if not isinstance(dashboard.get(key), str) or not dashboard[key].strip():
            problems.append(f"{name}: no {key}")
    variables = check_variables(name, dashboard, problems)
    ids = {}
    for panel in panels_of(dashboard):
        title = panel.get("title")
        if panel.get("id") in ids:
            problems.append(f"{name}: panel {title!r}: id {panel.get('id')} is also the id of panel {ids[panel.get('id')]!r}")
        ids.setdefault(panel.get("id"), title)
        if panel.get("type") != "row":
            check_panel(name, panel, variables, problems)
    return dashboard, problems


def main(args):
    if args[:1] == ["--exprs"]:
        if len(args) != 2:
            print("usage: scripts/dashboard-check.py --exprs DASHBOARD.json", file=sys.stderr)
            return 2
        dashboard, problems = check(args[1])
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            return 1
        for panel in panels_of(dashboard):
            for target in panel.get("targets") or []:
                print(json.dumps({"panel": panel.get("title"), "expr": target["expr"]}))
        return 0
    paths = args or sorted(glob.glob(os.path.join(dashboards_dir(), "*.json")))
    if not paths:
        print(f"no dashboards in {dashboards_dir()}")
        return 1
    problems, uids, summary = [], {}, []
    for path in paths:
        dashboard, found = check(path)
        problems += found
        if dashboard is None:
            continue
        name, uid = os.path.basename(path), dashboard.get("uid")
        if uid in uids:
            problems.append(f"{name}: uid {uid!r} is also the uid of {uids[uid]} (Grafana would load only one)")
        uids.setdefault(uid, name)
        panels = list(panels_of(dashboard))
        rows = sum(1 for p in panels if p.get("type") == "row")
        targets = sum(len(p.get("targets") or []) for p in panels)
        summary.append(f"{name}: {len(panels) - rows} panels in {rows} rows, {targets} queries")
    for line in summary:
        print(line)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} dashboard problems")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
