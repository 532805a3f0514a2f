#!/usr/bin/env python3
"""Offline checks of the Kubernetes and compose manifests (run by scripts/check-k8s.sh).

  check.py prometheusrule [--write]   base/prometheusrule.yaml matches deploy/prometheus/alerts.yaml
  check.py validate KUBE_VERSION FILE...   rendered overlays: built-in kinds against the Kubernetes
                                      schemas (kubernetes-validate), KEDA, RabbitMQ operator and
                                      Prometheus operator kinds against crds/*.yaml (jsonschema)
  check.py compose FILE               the compose file has the services and keys it needs

Unknown fields are errors everywhere: the API server would drop them silently.
"""
import copy
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yaml"
RULE = HERE / "base" / "prometheusrule.yaml"
RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by `scripts/check-k8s.sh --write`: edit that file
# (and its unit tests), not this one. CI fails when the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: secflow
  labels: { app.kubernetes.io/name: secflow-worker }
spec:
"""


def prometheus_rule() -> str:
    """The PrometheusRule: alerts.yaml's groups, indented under `spec:`, comments dropped."""
    lines = [l for l in ALERTS.read_text().splitlines() if not l.startswith("#")]
    body = "".join(("  " + l if l.strip() else "") + "\n" for l in lines)
    return RULE_HEADER + body


def check_prometheus_rule(write: bool) -> list[str]:
    want = prometheus_rule()
    if write:
        RULE.write_text(want)
        return []
    if not RULE.exists() or RULE.read_text() != want:
        return [f"{RULE.relative_to(HERE.parent.parent)} is out of date with "
                "deploy/prometheus/alerts.yaml: run scripts/check-k8s.sh --write"]
    groups = yaml.safe_load(want)["spec"]["groups"]
    if groups != yaml.safe_load(ALERTS.read_text())["groups"]:
        return ["the generated PrometheusRule's groups differ from alerts.yaml's"]
    return []


def closed(schema):
    """The schema with `additionalProperties: false` wherever it lists properties and neither
    says otherwise nor preserves unknown fields, so misspelt fields fail as Kubernetes would
    prune them."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_schemas() -> dict:
    """(apiVersion, kind) -> JSON schema, from every CRD stored in crds/."""
    schemas = {}
    for path in sorted((HERE / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = closed(version["schema"]["openAPIV3Schema"])
                # metadata is validated by the API server itself, not by the CRD.
                schema.get("properties", {}).pop("metadata", None)
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


# The worker stops what is still running at --grace-period and takes up to 10 s more to hand it
# back; task timeouts are capped at 1500 s.
HAND_BACK_SECS = 10
MAX_TASK_SECS = 1500


def fleet_rules(doc: dict, what: str) -> list[str]:
    """What the fleet's guarantees need from a rendered object, beyond its schema."""
    errors, kind, spec = [], doc.get("kind"), doc.get("spec") or {}
    if kind == "Deployment" and doc["metadata"].get("labels", {}).get(
            "app.kubernetes.io/name") == "secflow-worker":
        pod = spec["template"]["spec"]
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        grace = int(env.get("SECFLOW_GRACE_PERIOD") or 30)
        if pod.get("terminationGracePeriodSeconds", 30) <= grace + HAND_BACK_SECS:
            errors.append(f"{what}: terminationGracePeriodSeconds must exceed the grace period "
                          f"({grace} s) + {HAND_BACK_SECS} s")
        for c in pod["containers"]:
            probes = {p: (c.get(p) or {}).get("httpGet", {}).get("path")
                      for p in ("livenessProbe", "readinessProbe")}
            if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
                errors.append(f"{what}: probes must be /healthz (liveness), /readyz (readiness)")
            if not (c.get("securityContext") or {}).get("readOnlyRootFilesystem"):
                errors.append(f"{what}: container {c['name']} needs a read-only root filesystem")
    if kind == "RabbitmqCluster":
        lines = spec["rabbitmq"]["additionalConfig"].splitlines()
        conf = {k.strip(): v.strip() for k, v in
                (l.split("=", 1) for l in lines if "=" in l and not l.lstrip().startswith("#"))}
        timeout_ms = int(conf.get("consumer_timeout") or 0)
        if timeout_ms <= MAX_TASK_SECS * 1000:
            errors.append(f"{what}: consumer_timeout must exceed the longest task ({MAX_TASK_SECS} s)")
    if kind == "Secret" and "CHANGE-ME" in str(doc.get("stringData")) and \
            doc["metadata"].get("namespace") != "secflow-dev":
        errors.append(f"{what}: placeholder Secret outside the dev overlay")
    return errors


def validate(kube_version: str, files: list[str]) -> list[str]:
    errors, crds = [], crd_schemas()
    for file in files:
        for doc in yaml.safe_load_all(pathlib.Path(file).read_text()):
            if not doc:
                continue
            what = f"{file}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            errors += fleet_rules(doc, what)
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in crds:
                body = {k: v for k, v in doc.items() if k != "metadata"}
                for e in jsonschema.Draft7Validator(crds[key]).iter_errors(body):
                    path = ".".join(str(p) for p in e.absolute_path) or "(top)"
                    errors.append(f"{what}: {path}: {e.message}")
                continue
            if key[0] and "." in key[0].split("/")[0] and not key[0].startswith(
                    ("apps/", "batch/", "policy/", "autoscaling/", "networking.k8s.io/")):
                errors.append(f"{what}: no CRD schema for {key[0]} {key[1]} in deploy/k8s/crds/")
                continue
            try:
                kubernetes_validate.validate(doc, kube_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                errors.append(f"{what}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{what}: no Kubernetes {kube_version} schema: {e}")
    return errors


REQUIRED_SERVICES = {"rabbitmq", "redis", "worker-1", "worker-2", "demo"}


def check_compose(file: str) -> list[str]:
    doc = yaml.safe_load(pathlib.Path(file).read_text())
    services = doc.get("services") or {}
    errors = [f"{file}: no service `{s}`" for s in sorted(REQUIRED_SERVICES - services.keys())]
    for name, svc in services.items():
        if not (svc.get("image") or svc.get("build")):
            errors.append(f"{file}: service `{name}` has neither image nor build")
        for dep in svc.get("depends_on") or {}:
            if dep not in services:
                errors.append(f"{file}: `{name}` depends on unknown service `{dep}`")
        if name.startswith("worker"):
            env = svc.get("environment") or {}
            for key in ("AMQP_URL", "REDIS_URL", "SECFLOW_SIGNING_KEY", "SECFLOW_DELIVERY_LIMIT"):
                if key not in env:
                    errors.append(f"{file}: worker `{name}` lacks {key}")
            if not svc.get("read_only") or "ALL" not in (svc.get("cap_drop") or []):
                errors.append(f"{file}: worker `{name}` must run read-only with all capabilities dropped")
    for volume in (doc.get("volumes") or {}):
        if not any(str(v).startswith(f"{volume}:") for s in services.values()
                   for v in s.get("volumes") or []):
            errors.append(f"{file}: volume `{volume}` is not used")
    return errors


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command == "prometheusrule":
        errors = check_prometheus_rule("--write" in args)
    elif command == "validate":
        errors = validate(args[0], args[1:])
    elif command == "compose":
        errors = check_compose(args[0])
    else:
        print(f"check.py: unknown command `{command}`\n{__doc__}", file=sys.stderr)
        return 2
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
