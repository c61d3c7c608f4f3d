#!/usr/bin/env python3
"""Checks on Shoal's Kubernetes objects that schema validation misses.

Usage: python3 .ci/k8s_checks.py FILE.yaml [...]   (multi-document YAML)
Exits non-zero with one line per problem.

- every name is a DNS-1123 label (subdomain for ConfigMaps);
- a workload's selector matches its pod template's labels;
- a StatefulSet's serviceName is a headless Service (clusterIP: None) that
  publishes not-ready addresses and selects the StatefulSet's pods;
- a PodDisruptionBudget sets exactly one of minAvailable/maxUnavailable and
  selects pods of some workload;
- every Service selects the pods of some workload.
"""
import re
import sys

import yaml

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def load(paths):
    docs = []
    for p in paths:
        with open(p) as f:
            for d in yaml.safe_load_all(f):
                if d:
                    docs.append((p, d))
    return docs


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check(docs):
    problems = []
    workloads = [(p, d) for p, d in docs if d.get("kind") in ("StatefulSet", "Deployment")]
    pod_labels = [d["spec"]["template"]["metadata"].get("labels", {}) for _, d in workloads]
    services = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "Service"}
    for p, d in docs:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name", "")
        where = f"{p}: {kind}/{name}"
        pattern = DNS1123_SUBDOMAIN if kind == "ConfigMap" else DNS1123_LABEL
        if not pattern.match(name) or len(name) > 63:
            problems.append(f"{where}: name is not a DNS-1123 {'subdomain' if kind == 'ConfigMap' else 'label'}")
        if kind in ("StatefulSet", "Deployment"):
            sel = d["spec"]["selector"].get("matchLabels", {})
            labels = d["spec"]["template"]["metadata"].get("labels", {})
            if not selects(sel, labels):
                problems.append(f"{where}: selector {sel} does not match pod labels {labels}")
            ann = d["spec"]["template"]["metadata"].get("annotations", {})
            for c in d["spec"]["template"]["spec"].get("containers", []):
                if not DNS1123_LABEL.match(c["name"]):
                    problems.append(f"{where}: container name {c['name']!r} is not a DNS-1123 label")
                # The scrape annotation names a port the container serves
                # metrics on (SHOAL_METRICS_LISTEN).
                ports = {str(p.get("containerPort")) for p in c.get("ports", [])}
                env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
                if ann.get("prometheus.io/scrape") == "true":
                    port = str(ann.get("prometheus.io/port", ""))
                    if port not in ports or not env.get("SHOAL_METRICS_LISTEN", "").endswith(":" + port):
                        problems.append(f"{where}: prometheus.io/port {port} is not a container port served by SHOAL_METRICS_LISTEN")
        if kind == "StatefulSet":
            for c in d["spec"]["template"]["spec"].get("containers", []):
                probe = c.get("readinessProbe", {}).get("grpc", {})
                if probe.get("service") != "shoal.ready":
                    problems.append(f"{where}: readiness must probe the shoal.ready health service (caught up), not {probe.get('service')!r}")
                pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                internal = str(probe.get("port", ""))
                if "handoff" not in pre or not any(a.endswith(":" + internal) for a in pre):
                    problems.append(f"{where}: preStop must hand leadership off (`shoal handoff --node 127.0.0.1:{internal}`), got {pre}")
            svc = services.get(d["spec"].get("serviceName", ""))
            if svc is None:
                problems.append(f"{where}: serviceName {d['spec'].get('serviceName')!r} is not a Service here")
            else:
                if svc["spec"].get("clusterIP") != "None":
                    problems.append(f"{where}: serviceName {svc['metadata']['name']} is not headless (clusterIP: None)")
                if not svc["spec"].get("publishNotReadyAddresses"):
                    problems.append(f"{where}: headless service must publish not-ready addresses (peers find each other before ready)")
                if not selects(svc["spec"].get("selector", {}), d["spec"]["template"]["metadata"].get("labels", {})):
                    problems.append(f"{where}: headless service does not select this StatefulSet's pods")
        if kind == "PodDisruptionBudget":
            spec = d["spec"]
            if ("minAvailable" in spec) == ("maxUnavailable" in spec):
                problems.append(f"{where}: set exactly one of minAvailable and maxUnavailable")
            if not any(selects(spec.get("selector", {}).get("matchLabels", {}), l) for l in pod_labels):
                problems.append(f"{where}: selects no workload's pods")
        if kind == "Service":
            if not any(selects(d["spec"].get("selector", {}), l) for l in pod_labels):
                problems.append(f"{where}: selects no workload's pods")
    return problems


if __name__ == "__main__":
    problems = check(load(sys.argv[1:]))
    for line in problems:
        print(line)
    print(f"k8s checks: {len(problems)} problem(s) in {len(sys.argv) - 1} file(s)")
    sys.exit(1 if problems else 0)
