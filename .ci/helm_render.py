#!/usr/bin/env python3
"""Lints the Helm chart and renders it (default values and a variant) into
a directory, one file per object, for schema validation and the k8s checks.
Also checks that the default render has the same objects (kind, name) as
deploy/k8s with release name `shoal`, so the two stay one design.

Usage: python3 .ci/helm_render.py deploy/helm/shoal OUT_DIR deploy/k8s/*.yaml
"""
import os
import sys

import helm_python as helm
import yaml

chart_dir, out = sys.argv[1], sys.argv[2]
plain = sys.argv[3:]
os.makedirs(out, exist_ok=True)

lint = helm.lint(chart_dir)
print("helm lint:", lint)
# Severity 1 is INFO, 2 WARNING, 4 ERROR (Helm's support.Severity).
errors = list(lint.get("errors") or []) + [m for m in lint.get("messages", []) if m.get("severity", 0) >= 4]
if errors:
    sys.exit(f"helm lint errors: {errors}")

variants = {
    "default": {},
    "big": {"nodes": {"replicas": 5, "seeds": 5, "antiAffinity": "preferred", "storage": {"storageClassName": "fast"}}, "coordinators": {"replicas": 4}},
}
objects = {}
with helm.Chart.load(chart_dir) as chart:
    for variant, values in variants.items():
        rendered = chart.render(values, name="shoal", namespace="db")
        n = 0
        for template, text in sorted(rendered.items()):
            for doc in yaml.safe_load_all(text or ""):
                if not doc:
                    continue
                n += 1
                path = os.path.join(out, f"{variant}-{n:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml")
                with open(path, "w") as f:
                    yaml.safe_dump(doc, f)
                objects.setdefault(variant, set()).add((doc["kind"], doc["metadata"]["name"]))
        print(f"rendered {variant}: {n} objects")

big = [yaml.safe_load(open(os.path.join(out, p))) for p in os.listdir(out) if p.startswith("big-")]
sts = next(d for d in big if d["kind"] == "StatefulSet")
join = next(e["value"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "SHOAL_JOIN")
assert sts["spec"]["replicas"] == 5 and join.count(",") == 4, (sts["spec"]["replicas"], join)

want = set()
for p in plain:
    for doc in yaml.safe_load_all(open(p)):
        if doc and doc.get("kind") != "Kustomization":
            want.add((doc["kind"], doc["metadata"]["name"]))
if plain and objects["default"] != want:
    sys.exit(f"chart and deploy/k8s differ: chart only {objects['default'] - want}, k8s only {want - objects['default']}")
print("chart renders the same objects as deploy/k8s:", sorted(want))
