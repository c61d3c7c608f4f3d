#!/usr/bin/env python3
"""The k8s checks catch what they claim to: each broken copy of the real
manifests yields the expected problem, and the real ones yield none.
Usage: python3 .ci/k8s_checks_test.py deploy/k8s/*.yaml"""
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import k8s_checks  # noqa: E402

docs = k8s_checks.load([p for p in sys.argv[1:] if not p.endswith("kustomization.yaml")])
assert k8s_checks.check(docs) == [], k8s_checks.check(docs)


def broken(kind, mutate, expect, name=None):
    d2 = copy.deepcopy(docs)
    target = next(d for _, d in d2 if d.get("kind") == kind and name in (None, d["metadata"]["name"]))
    mutate(target)
    problems = k8s_checks.check(d2)
    assert any(expect in p for p in problems), f"{kind}: expected {expect!r} in {problems}"
    print(f"caught: {kind}: {expect}")


broken("StatefulSet", lambda d: d["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/component": "other"}), "does not match pod labels")
broken("StatefulSet", lambda d: d["spec"].update({"serviceName": "nope"}), "is not a Service here")
broken("StatefulSet", lambda d: d["metadata"].update({"name": "Shoal_Nodes"}), "DNS-1123")
broken("Service", lambda d: d["spec"].pop("clusterIP"), "is not headless", "shoal-headless")
broken("Service", lambda d: d["spec"].pop("publishNotReadyAddresses"), "publish not-ready", "shoal-headless")
broken("Service", lambda d: d["spec"]["selector"].update({"app.kubernetes.io/component": "gone"}), "selects no workload", "shoal")
broken("PodDisruptionBudget", lambda d: d["spec"].update({"minAvailable": 2}), "exactly one of")
broken("PodDisruptionBudget", lambda d: d["spec"].pop("maxUnavailable"), "exactly one of")
broken("PodDisruptionBudget", lambda d: d["spec"]["selector"]["matchLabels"].update({"x": "y"}), "selects no workload")
broken("Deployment", lambda d: d["spec"]["template"]["metadata"]["labels"].update({"app.kubernetes.io/component": "z"}), "does not match pod labels")
broken("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"].remove("--ready"), "shoal.ready")
broken("StatefulSet", lambda d: d["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"), "runAsNonRoot")
broken("Deployment", lambda d: d["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile")
broken("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update({"allowPrivilegeEscalation": True}), "allowPrivilegeEscalation")
broken("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem")
broken("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"].update({"drop": []}), "drop all capabilities")
broken("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].update({"env": [e for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] != "SHOAL_TLS_DIR"]}), "TLS off")
broken("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].update({"volumeMounts": [m for m in d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["name"] != "tls"]}), "not a mounted Secret")
broken("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update({"env": [e for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] != "SHOAL_API_KEYS_FILE"]}), "authentication off")
broken("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update({"livenessProbe": {"grpc": {"port": 6333}}}), "gRPC probe")
broken("NetworkPolicy", lambda d: d["spec"]["ingress"][0].pop("from"), "no NetworkPolicy admits", "shoal-nodes")
broken("NetworkPolicy", lambda d: d["spec"]["ingress"][1].update({"from": [{"podSelector": {}}]}), "no NetworkPolicy admits", "shoal-nodes")
broken("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("lifecycle"), "preStop must hand leadership off")
broken("StatefulSet", lambda d: d["spec"]["template"]["metadata"]["annotations"].update({"prometheus.io/port": "9999"}), "prometheus.io/port")
# The compose rehearsal of the StatefulSet agrees with the manifests, and
# each way it can drift is caught.
import yaml  # noqa: E402

with open(os.path.join(os.path.dirname(__file__), "..", "deploy", "k8s-rehearsal.yml")) as f:
    compose = yaml.safe_load(f)
assert k8s_checks.check_rehearsal(docs, compose) == [], k8s_checks.check_rehearsal(docs, compose)


def drifted(mutate, expect):
    c2 = copy.deepcopy(compose)
    mutate(c2)
    problems = k8s_checks.check_rehearsal(docs, c2)
    assert any(expect in p for p in problems), f"rehearsal: expected {expect!r} in {problems}"
    print(f"caught: rehearsal: {expect}")


drifted(lambda c: c["services"]["shoal-1"]["environment"].pop("SHOAL_JOIN"), "SHOAL_JOIN=None")
drifted(lambda c: c["services"]["shoal-0"]["environment"].update({"SHOAL_POD_NAME": "shoal-7"}), "SHOAL_POD_NAME='shoal-7'")
drifted(lambda c: c["services"]["shoal-2"].update({"command": ["node"]}), "differs from the manifest's args")
drifted(lambda c: c["services"]["shoal-2"]["networks"]["headless"].update({"aliases": ["shoal-2"]}), "not reachable as shoal-2.shoal-headless")
drifted(lambda c: c["services"].pop("shoal-coordinator"), "no service 'shoal-coordinator'")
print("k8s checks self-test passed")
