#!/usr/bin/env python3
"""Validate the KEDA ScaledObjects in deploy/k8s/keda/ and how they fit the other manifests.

kubernetes-validate knows only built-in kinds, so the ScaledObjects are checked here:

1. against deploy/schemas/keda-scaledobject-v1alpha1.schema.json (hand-written, strict:
   unknown fields fail, trigger metadata values must be strings, the redis scaler needs
   listName and an address);
2. against the manifests of deploy/k8s/*.yaml:
   - scaleTargetRef names an existing Deployment in the same namespace;
   - that Deployment sets no spec.replicas (KEDA owns the count);
   - a redis trigger's listName is the queue the target's Celery worker consumes
     (``--queues``/``-Q``), and an in-cluster address names a Service and port that exist;
   - minReplicaCount <= maxReplicaCount;
   - every Celery worker Deployment has exactly one ScaledObject and a PodDisruptionBudget.

Needs PyYAML and jsonschema (both installed by deploy/check.sh with the linters).
Usage: ``python deploy/check_keda.py [DEPLOY_DIR]``; exit 1 on any problem.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

Doc = dict[str, Any]


def load_docs(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if isinstance(doc, dict)]


def ns_of(doc: Doc) -> str:
    return str(doc.get("metadata", {}).get("namespace", "default"))


def name_of(doc: Doc) -> str:
    return str(doc.get("metadata", {}).get("name", ""))


def celery_queue(deployment: Doc) -> str | None:
    """The queue named by --queues/-Q in a Celery worker container, or None if not a worker."""
    for container in deployment["spec"]["template"]["spec"].get("containers", []):
        argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        if "celery" not in argv or "worker" not in argv:
            continue
        for i, arg in enumerate(argv):
            if arg in ("--queues", "-Q") and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith("--queues="):
                return arg.split("=", 1)[1]
        return ""  # a worker on the default queue
    return None


def selects(selector: Doc, labels: Doc) -> bool:
    wanted = selector.get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def main(argv: list[str]) -> int:
    deploy = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parent
    shown_root = deploy.parent
    k8s_dir, keda_dir = deploy / "k8s", deploy / "k8s" / "keda"
    schema_path = deploy / "schemas" / "keda-scaledobject-v1alpha1.schema.json"
    problems: list[str] = []

    def fail(path: Path, message: str) -> None:
        problems.append(f"{path.relative_to(shown_root)}: {message}")

    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)

    core: list[tuple[Path, Doc]] = []
    for path in sorted(k8s_dir.glob("*.yaml")):
        core += [(path, doc) for doc in load_docs(path)]
    deployments = {(ns_of(d), name_of(d)): (p, d) for p, d in core if d.get("kind") == "Deployment"}
    services = {(ns_of(d), name_of(d)): d for _, d in core if d.get("kind") == "Service"}
    pdbs = [d for _, d in core if d.get("kind") == "PodDisruptionBudget"]
    for path, doc in core:
        if str(doc.get("apiVersion", "")).startswith("keda.sh/"):
            fail(path, f"{doc.get('kind')} {name_of(doc)}: KEDA objects belong in k8s/keda/")

    scaled: dict[tuple[str, str], list[str]] = {}
    keda_files = sorted(keda_dir.glob("*.yaml"))
    if not keda_files:
        problems.append(f"{keda_dir.relative_to(shown_root)}: no ScaledObject manifests")
    for path in keda_files:
        for doc in load_docs(path):
            label = f"{doc.get('kind')} {name_of(doc) or '?'}"
            if doc.get("kind") != "ScaledObject":
                fail(path, f"{label}: only ScaledObject has a schema here; add one for this kind")
                continue
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            for err in errors:
                where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                fail(path, f"{label}: {where}: {err.message}")
            if errors:
                continue
            spec = doc["spec"]
            ns = ns_of(doc)
            ref = spec["scaleTargetRef"]
            if ref.get("kind", "Deployment") != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1":
                fail(path, f"{label}: scaleTargetRef must be an apps/v1 Deployment here")
                continue
            target = deployments.get((ns, ref["name"]))
            if target is None:
                fail(path, f"{label}: scaleTargetRef {ns}/{ref['name']} is not a Deployment in k8s/*.yaml")
                continue
            scaled.setdefault((ns, ref["name"]), []).append(f"{path.name}:{name_of(doc)}")
            target_path, target_doc = target
            if "replicas" in target_doc["spec"]:
                fail(target_path, f"Deployment {ref['name']}: drop spec.replicas, {label} owns the count")
            lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
            if lo > hi:
                fail(path, f"{label}: minReplicaCount {lo} > maxReplicaCount {hi}")
            queue = celery_queue(target_doc)
            for trig in spec["triggers"]:
                if trig["type"] != "redis":
                    continue
                meta = trig["metadata"]
                if queue is not None and meta["listName"] != queue:
                    fail(
                        path,
                        f"{label}: listName {meta['listName']!r} but Deployment {ref['name']} "
                        f"consumes queue {queue!r}",
                    )
                host, _, port = meta.get("address", "").rpartition(":")
                parts = host.split(".")
                if len(parts) >= 3 and parts[2] == "svc":
                    svc = services.get((parts[1], parts[0]))
                    if svc is None:
                        fail(path, f"{label}: address {meta['address']}: no Service {parts[1]}/{parts[0]}")
                    elif int(port) not in [p.get("port") for p in svc["spec"].get("ports", [])]:
                        fail(path, f"{label}: address {meta['address']}: Service has no port {port}")

    for (ns, name), (path, doc) in deployments.items():
        if celery_queue(doc) is None:
            continue
        owners = scaled.get((ns, name), [])
        if len(owners) != 1:
            fail(path, f"Deployment {name} (Celery worker) needs exactly one ScaledObject, has {owners}")
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        if not any(ns_of(p) == ns and selects(p["spec"].get("selector", {}), labels) for p in pdbs):
            fail(path, f"Deployment {name} (Celery worker) has no PodDisruptionBudget selecting its pods")

    problems = list(dict.fromkeys(problems))  # one schema error can surface twice
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"check_keda: {len(problems)} problem(s)")
        return 1
    count = sum(len(v) for v in scaled.values())
    print(f"check_keda: ok ({count} ScaledObjects, {len(deployments)} Deployments)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
