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
- every Service selects the pods of some workload;
- security: every pod runs as non-root with seccomp RuntimeDefault, every
  container without privilege escalation, with a read-only root
  filesystem and all capabilities dropped; every Shoal container has TLS on
  (SHOAL_TLS_DIR or SHOAL_TLS_CERT) from a mounted Secret; coordinators
  read API keys (SHOAL_API_KEYS_FILE) from a mounted Secret; no gRPC probe
  targets a TLS port (the kubelet cannot present a certificate); a
  NetworkPolicy admits the nodes' internal port only from Shoal pods and
  their metrics port only from a namespace selector;
- with `--rehearsal COMPOSE`: the compose rehearsal of the StatefulSet
  (deploy/k8s-rehearsal.yml) runs every pod and the coordinator with the
  arguments and environment the manifests give them (`$(VAR)` references,
  field refs and ConfigMap refs resolved, namespace "default"), under the
  pod's stable DNS name as a network alias.
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
        if kind in ("StatefulSet", "Deployment"):
            problems += check_security(where, d)
        if kind == "StatefulSet":
            for c in d["spec"]["template"]["spec"].get("containers", []):
                probe = c.get("readinessProbe", {}).get("exec", {}).get("command", [])
                if "probe" not in probe or "--ready" not in probe:
                    problems.append(f"{where}: readiness must run `shoal probe --ready` (the shoal.ready health service: caught up), not {probe}")
                pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                internal = next((a.rsplit(":", 1)[1] for a in probe if a.startswith("127.0.0.1:")), "")
                if "handoff" not in pre or not internal or not any(a.endswith(":" + internal) for a in pre):
                    problems.append(f"{where}: preStop must hand leadership off (`shoal handoff --node 127.0.0.1:{internal}`), got {pre}")
            if not any(policy_guards(pd, d) for _, pd in docs if pd.get("kind") == "NetworkPolicy"):
                problems.append(f"{where}: no NetworkPolicy admits the internal port only from Shoal pods and metrics only from a namespace selector")
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


def secret_mounts(pod_spec, container):
    """Mount paths of `container` backed by Secrets (plain or projected)."""
    secret_vols = set()
    for v in pod_spec.get("volumes", []):
        if "secret" in v or ("projected" in v and all("secret" in src for src in v["projected"].get("sources", []))):
            secret_vols.add(v["name"])
    return [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in secret_vols]


def check_security(where, d):
    problems = []
    spec = d["spec"]["template"]["spec"]
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext must set runAsNonRoot: true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod securityContext must set seccompProfile RuntimeDefault")
    for c in spec.get("containers", []):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: container {c['name']} must set allowPrivilegeEscalation: false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: container {c['name']} must set readOnlyRootFilesystem: true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: container {c['name']} must drop all capabilities")
        env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
        mounts = secret_mounts(spec, c)
        tls = env.get("SHOAL_TLS_DIR") or env.get("SHOAL_TLS_CERT")
        if not tls:
            problems.append(f"{where}: container {c['name']} has TLS off (set SHOAL_TLS_DIR or SHOAL_TLS_CERT)")
        elif not any(tls == m or tls.startswith(m.rstrip("/") + "/") for m in mounts):
            problems.append(f"{where}: container {c['name']} reads TLS from {tls}, which is not a mounted Secret")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if "grpc" in c.get(probe, {}):
                problems.append(f"{where}: container {c['name']} {probe} is a gRPC probe, which cannot present a certificate to a TLS port (use `shoal probe`)")
        if d["kind"] == "Deployment" and "coordinator" in c.get("args", []):
            keys = env.get("SHOAL_API_KEYS_FILE", "")
            if not keys:
                problems.append(f"{where}: coordinator has authentication off (set SHOAL_API_KEYS_FILE)")
            elif not any(keys.startswith(m.rstrip("/") + "/") for m in mounts):
                problems.append(f"{where}: coordinator reads API keys from {keys}, which is not a mounted Secret")
    return problems


def policy_guards(policy, sts):
    """Whether `policy` selects the StatefulSet's pods and admits its
    internal port only from Shoal pods and its metrics port only from a
    namespace selector."""
    labels = sts["spec"]["template"]["metadata"].get("labels", {})
    if not selects(policy["spec"].get("podSelector", {}).get("matchLabels", {}), labels):
        return False
    if "Ingress" not in policy["spec"].get("policyTypes", []):
        return False
    internal_ok = metrics_ok = False
    for rule in policy["spec"].get("ingress", []):
        ports = {str(p.get("port")) for p in rule.get("ports", [])}
        sources = rule.get("from", [])
        if not ports or not sources:
            # A rule open to every port or every source.
            return False
        if "7400" in ports:
            internal_ok = all(set(s) == {"podSelector"} and s["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "shoal" for s in sources)
            if not internal_ok:
                return False
        if "9400" in ports:
            metrics_ok = all("namespaceSelector" in s for s in sources)
            if not metrics_ok:
                return False
    return internal_ok and metrics_ok


NAMESPACE = "default"


def pod_env(container, configmaps, pod_name):
    """The environment Kubernetes gives `container` in pod `pod_name`."""
    env = {}
    for ref in container.get("envFrom", []):
        cm = ref.get("configMapRef", {}).get("name")
        env.update({k: str(v) for k, v in configmaps.get(cm, {}).items()})
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
            continue
        src = e.get("valueFrom", {})
        field = src.get("fieldRef", {}).get("fieldPath")
        if field == "metadata.name":
            env[e["name"]] = pod_name
        elif field == "metadata.namespace":
            env[e["name"]] = NAMESPACE
        elif "configMapKeyRef" in src:
            r = src["configMapKeyRef"]
            env[e["name"]] = str(configmaps.get(r["name"], {}).get(r["key"], ""))
    return env


def check_rehearsal(docs, compose):
    """Problems of the compose rehearsal against the manifests."""
    problems = []
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for _, d in docs if d.get("kind") == "ConfigMap"}
    services = compose.get("services", {})

    def same(where, svc, container, pod_name):
        args = container.get("args", [])
        if [str(a) for a in svc.get("command", [])] != [str(a) for a in args]:
            problems.append(f"{where}: command {svc.get('command')} differs from the manifest's args {args}")
        want = pod_env(container, configmaps, pod_name)
        have = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        for k in sorted(set(want) | set(have)):
            if want.get(k) != have.get(k):
                problems.append(f"{where}: {k}={have.get(k)!r}, the manifests set {want.get(k)!r}")

    for _, d in docs:
        if d.get("kind") == "StatefulSet":
            c = d["spec"]["template"]["spec"]["containers"][0]
            for i in range(d["spec"].get("replicas", 1)):
                pod = f"{d['metadata']['name']}-{i}"
                svc = services.get(pod)
                if svc is None:
                    problems.append(f"rehearsal: no service {pod!r} for StatefulSet pod {i}")
                    continue
                same(f"rehearsal {pod}", svc, c, pod)
                dns = f"{pod}.{d['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local"
                nets = svc.get("networks") or {}
                aliases = [a for n in (nets.values() if isinstance(nets, dict) else []) for a in ((n or {}).get("aliases") or [])]
                if dns not in aliases:
                    problems.append(f"rehearsal {pod}: not reachable as {dns} (network aliases {aliases})")
        if d.get("kind") == "Deployment":
            svc = services.get(d["metadata"]["name"])
            if svc is None:
                problems.append(f"rehearsal: no service {d['metadata']['name']!r} for the Deployment")
            else:
                same(f"rehearsal {d['metadata']['name']}", svc, d["spec"]["template"]["spec"]["containers"][0], d["metadata"]["name"])
    return problems


if __name__ == "__main__":
    args = sys.argv[1:]
    rehearsal = None
    if args[:1] == ["--rehearsal"]:
        rehearsal, args = args[1], args[2:]
    docs = load(args)
    problems = check(docs)
    if rehearsal:
        with open(rehearsal) as f:
            problems += check_rehearsal(docs, yaml.safe_load(f))
    for line in problems:
        print(line)
    print(f"k8s checks: {len(problems)} problem(s) in {len(args) + bool(rehearsal)} file(s)")
    sys.exit(1 if problems else 0)
