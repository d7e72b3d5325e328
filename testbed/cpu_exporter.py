#!/usr/bin/env python3
"""CPU time of the testbed's host processes (Kafka, PostgreSQL) for the pods.

Usage: cpu_exporter.py --listen HOST:PORT NAME=PIDFILE ...

GET /NAME answers `process_cpu_seconds_total` of the process whose pid is on the
first line of PIDFILE, with every descendant: each one's user and system time plus
the time of its children that have exited (cutime, cstime), so PostgreSQL's backends
count too. A LoadTest's `cpuSources` points at it through the `outbox-testbed-cpu`
Service (testbed/node.sh). A restarted process starts again from zero; the runner
counts a counter that went down from zero.
"""

import argparse
import http.server
import os

TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    """(ppid, utime + stime + cutime + cstime) of pid, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            line = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold anything: count from the last ')'.
    fields = line[line.rfind(")") + 2:].split()
    # After the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17).
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree_seconds(root):
    """CPU seconds of root and all its live descendants, or None when root is gone."""
    parents, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields:
                parents[int(entry)], ticks[int(entry)] = fields
    if root not in ticks:
        return None
    children = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / TICKS


def root_pid(pidfile):
    try:
        with open(pidfile) as f:
            return int(f.readline().strip())
    except (OSError, ValueError):
        return None


def handler_for(components):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.strip("/")
            if name not in components:
                self.send_error(404, f"no component {name!r}; known: {', '.join(sorted(components))}")
                return
            pid = root_pid(components[name])
            seconds = tree_seconds(pid) if pid else None
            if seconds is None:
                self.send_error(503, f"{name} is not running (pid file {components[name]})")
                return
            body = (
                "# HELP process_cpu_seconds_total CPU seconds of the process and its children\n"
                "# TYPE process_cpu_seconds_total counter\n"
                f'process_cpu_seconds_total{{component="{name}"}} {seconds:.2f}\n'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("components", nargs="+", help="NAME=PIDFILE")
    args = parser.parse_args()
    components = dict(c.split("=", 1) for c in args.components)
    host, port = args.listen.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), handler_for(components))
    server.serve_forever()


if __name__ == "__main__":
    main()
