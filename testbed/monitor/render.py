#!/usr/bin/env python3
"""Turns the chart's monitoring objects into what a plain Prometheus reads, as the
Prometheus Operator would: PodMonitors and ServiceMonitors into scrape configs
(Kubernetes service discovery through a kubeconfig), PrometheusRules into a rule file.

The testbed has no Prometheus Operator, so this is how its Prometheus scrapes exactly the
pods and Services the chart's monitors select, and loads exactly the chart's rules. Only
the fields the chart uses are translated; any other field is refused by name, so that the
chart cannot grow one that this translation would silently drop.

  render.py scrape RENDERED KUBECONFIG INTERVAL > prometheus.yml   (rule_files: rules.yaml)
  render.py rules RENDERED > rules.yaml

RENDERED is `helm template` output (a stream of YAML documents).
"""
import re
import sys

import yaml


class Unsupported(Exception):
    pass


def objects(path, kind):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d and d.get("kind") == kind]


def only(mapping, allowed, where):
    extra = sorted(set(mapping) - set(allowed))
    if extra:
        raise Unsupported(f"{where}: field(s) {', '.join(extra)} not translated by testbed/monitor/render.py")


def sanitize(label):
    """A Kubernetes label name as Prometheus' service discovery spells it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def selector_keeps(selector, object_kind, where):
    """keep rules for a label selector, as the Prometheus Operator writes them."""
    only(selector, ["matchLabels", "matchExpressions"], where)
    rules = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        k = sanitize(key)
        rules.append({
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_{object_kind}_label_{k}",
                              f"__meta_kubernetes_{object_kind}_labelpresent_{k}"],
            "regex": f"({re.escape(value)});true",
        })
    for expr in selector.get("matchExpressions") or []:
        only(expr, ["key", "operator", "values"], where + ".matchExpressions")
        if expr["operator"] != "In":
            raise Unsupported(f"{where}: operator {expr['operator']} not translated")
        k = sanitize(expr["key"])
        rules.append({
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_{object_kind}_label_{k}",
                              f"__meta_kubernetes_{object_kind}_labelpresent_{k}"],
            "regex": "(" + "|".join(re.escape(v) for v in expr["values"]) + ");true",
        })
    return rules


def namespaces(spec, own_namespace, where):
    ns = spec.get("namespaceSelector") or {}
    only(ns, ["any", "matchNames"], where + ".namespaceSelector")
    if ns.get("any"):
        return None
    return ns.get("matchNames") or [own_namespace]


def relabelings(endpoint, where):
    out = []
    for r in endpoint.get("relabelings") or []:
        only(r, ["sourceLabels", "targetLabel", "regex", "replacement", "action"], where + ".relabelings")
        rule = {"source_labels": r["sourceLabels"]} if "sourceLabels" in r else {}
        for src, dst in [("targetLabel", "target_label"), ("regex", "regex"),
                         ("replacement", "replacement"), ("action", "action")]:
            if src in r:
                rule[dst] = r[src]
        out.append(rule)
    return out


def sd(role, kubeconfig, names):
    config = {"role": role, "kubeconfig_file": kubeconfig}
    if names:
        config["namespaces"] = {"names": names}
    return [config]


def pod_monitor_jobs(monitor, kubeconfig, interval):
    meta, spec = monitor["metadata"], monitor["spec"]
    where = f"PodMonitor {meta['name']}"
    only(spec, ["namespaceSelector", "selector", "podMetricsEndpoints"], where)
    jobs = []
    for i, ep in enumerate(spec["podMetricsEndpoints"]):
        only(ep, ["port", "path", "interval", "relabelings", "honorLabels"], f"{where}.podMetricsEndpoints[{i}]")
        name = f"{meta['namespace']}/{meta['name']}"
        jobs.append({
            "job_name": f"podMonitor/{name}/{i}",
            "honor_labels": bool(ep.get("honorLabels", False)),
            "scrape_interval": interval or ep.get("interval", "30s"),
            "metrics_path": ep.get("path", "/metrics"),
            "kubernetes_sd_configs": sd("pod", kubeconfig, namespaces(spec, meta["namespace"], where)),
            "relabel_configs": [
                {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
                *selector_keeps(spec["selector"], "pod", where + ".selector"),
                {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": ep["port"]},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"target_label": "job", "replacement": name},
                {"target_label": "endpoint", "replacement": ep["port"]},
                *relabelings(ep, f"{where}.podMetricsEndpoints[{i}]"),
            ],
        })
    return jobs


def service_monitor_jobs(monitor, kubeconfig, interval):
    meta, spec = monitor["metadata"], monitor["spec"]
    where = f"ServiceMonitor {meta['name']}"
    only(spec, ["namespaceSelector", "selector", "endpoints"], where)
    jobs = []
    for i, ep in enumerate(spec["endpoints"]):
        only(ep, ["port", "path", "interval", "relabelings", "honorLabels"], f"{where}.endpoints[{i}]")
        jobs.append({
            "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
            "honor_labels": bool(ep.get("honorLabels", False)),
            "scrape_interval": interval or ep.get("interval", "30s"),
            "metrics_path": ep.get("path", "/metrics"),
            "kubernetes_sd_configs": sd("endpointslice", kubeconfig, namespaces(spec, meta["namespace"], where)),
            "relabel_configs": [
                *selector_keeps(spec["selector"], "service", where + ".selector"),
                {"action": "keep", "source_labels": ["__meta_kubernetes_endpointslice_port_name"], "regex": ep["port"]},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
                {"target_label": "endpoint", "replacement": ep["port"]},
                *relabelings(ep, f"{where}.endpoints[{i}]"),
            ],
        })
    return jobs


def scrape(rendered, kubeconfig, interval):
    jobs = []
    for m in objects(rendered, "PodMonitor"):
        jobs += pod_monitor_jobs(m, kubeconfig, interval)
    for m in objects(rendered, "ServiceMonitor"):
        jobs += service_monitor_jobs(m, kubeconfig, interval)
    if not jobs:
        raise Unsupported("no PodMonitor or ServiceMonitor in the rendered chart (metrics.podMonitor.enabled?)")
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": ["rules.yaml"],
        "scrape_configs": jobs,
    }


def rules(rendered):
    groups = []
    for r in objects(rendered, "PrometheusRule"):
        only(r["spec"], ["groups"], f"PrometheusRule {r['metadata']['name']}")
        groups += r["spec"]["groups"]
    if not groups:
        raise Unsupported("no PrometheusRule in the rendered chart (metrics.prometheusRule.enabled?)")
    return {"groups": groups}


def main(argv):
    try:
        if len(argv) == 5 and argv[1] == "scrape":
            out = scrape(argv[2], argv[3], argv[4])
        elif len(argv) == 3 and argv[1] == "rules":
            out = rules(argv[2])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Unsupported as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump(out, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
