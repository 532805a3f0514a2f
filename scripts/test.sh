#!/usr/bin/env bash
# The test command: formatting, lints, then every unit and integration test against the real
# RabbitMQ and Redis (started or installed first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# Tool tests run python3 stand-ins and, for scan.nmap, the real nmap; the Prometheus tests run
# promtool and prometheus (Debian packages, as command:package).
for tool in python3:python3 nmap:nmap promtool:prometheus prometheus:prometheus chromium:chromium npm:npm; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "test: installing ${tool#*:}" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${tool#*:}" >/dev/null
  fi
done
# The OTLP test receiver decodes spans with the official OpenTelemetry protobuf definitions.
if ! python3 -c 'import opentelemetry.proto.collector.trace.v1' >/dev/null 2>&1; then
  echo "test: installing opentelemetry-proto (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check opentelemetry-proto >/dev/null
fi
# Private RabbitMQ nodes (sf-*@localhost) that a killed earlier run left behind.
for pid in $(pgrep beam.smp 2>/dev/null || true); do
  node=$(tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | sed -n 's/^RABBITMQ_NODENAME=\(sf-[a-z0-9]*@localhost\)$/\1/p' || true)
  if [ -n "$node" ]; then rabbitmqctl -n "$node" -q stop >/dev/null 2>&1 || true; fi
done
# The labelled error corpus: fields, classes, no held-out message copied from training.
python3 tests/corpus/check.py >/dev/null
python3 tests/corpus/check.py tests/corpus/train.yaml tests/corpus/heldout2.yaml --apart-from tests/corpus/heldout.yaml >/dev/null
python3 tests/corpus/check.py tests/corpus/train.yaml tests/corpus/heldout3.yaml --apart-from tests/corpus/heldout.yaml --apart-from tests/corpus/heldout2.yaml >/dev/null
python3 tests/corpus/audit.py >/dev/null
bash scripts/check-k8s.sh   # Dockerfile, compose, kustomize overlays against the stored schemas
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The process tests spawn the real binaries.
cargo build --workspace --bins --quiet
# The console's browser tests drive Debian's chromium with playwright-core, from the lock file:
# installed once here rather than by the tests themselves.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --quiet)
fi
chaos() {
  # The chaos suite (scripts/chaos.sh, ~2 min) on its own RabbitMQ node and Redis. A failure is
  # run once more and reported, like nextest's flaky tests.
  if ! target/debug/chaos; then
    echo "chaos suite: FAILED once; running it again (FLAKY if it passes now)" >&2
    target/debug/chaos
    echo "chaos suite: FLAKY (failed once, then passed)" >&2
  fi
}
if cargo nextest --version >/dev/null 2>&1; then
  # Each test in its own process, hung tests killed (see .config/nextest.toml).
  cargo nextest run --workspace
  chaos
else
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  status=0
  cargo test --workspace --quiet 2>&1 | tee "$log" || status=$?
  # One closing line for the whole run (cargo prints one per test binary).
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
       END { printf "%d passed, %d failed\n", p, f }' "$log"
  [ "$status" = 0 ] || exit "$status"
  chaos
fi
