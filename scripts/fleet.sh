#!/usr/bin/env bash
# A local fleet for users without a cluster and for the scaling benchmark: N worker processes
# with the settings of deploy/k8s/ (prefetch 64, grace period 30 s, JSON logs, /healthz /readyz
# /metrics, signed tasks, exec off), on the local RabbitMQ and Redis (started if needed).
# Runs until Ctrl-C or SIGTERM, then stops the workers as Kubernetes does: SIGTERM to each,
# and each finishes or hands back its tasks within the grace period.
#
#   scripts/fleet.sh 4
#   SECFLOW_NAMESPACE=scans SECFLOW_POOL=scan SECFLOW_BIND='scan.#' SECFLOW_PREFETCH=4 scripts/fleet.sh 2
#
# The workers read every other SECFLOW_* variable as usual. Also:
#   FLEET_METRICS_PORT  first worker's metrics port (default 9464; the next ones count up)
#   FLEET_DIR           where logs, pids and `env` go (default: a new temporary directory, kept)
#   FLEET_NO_BUILD=1    use the binaries as they are; FLEET_PROFILE=debug: target/debug's
# `source FLEET_DIR/env` gives a shell the namespace and signing key to run `producer` against
# the fleet. FLEET_DIR/ready appears once every worker answers /readyz.
set -euo pipefail
n="${1:-}"
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fleet.sh N   (N worker processes, N >= 1)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
bash scripts/services.sh
if [ "${FLEET_NO_BUILD:-}" != 1 ]; then
  cargo build --release -p secflow-worker -p secflow-producer -p secflow-dlq-inspector --quiet
fi
bin="${CARGO_TARGET_DIR:-target}/${FLEET_PROFILE:-release}"
dir="${FLEET_DIR:-$(mktemp -d -t secflow-fleet.XXXXXX)}"
mkdir -p "$dir"
port="${FLEET_METRICS_PORT:-9464}"

# The settings of deploy/k8s/ (base/kustomization.yaml, base/worker-*.yaml), unless given.
export SECFLOW_NAMESPACE="${SECFLOW_NAMESPACE:-secflow}"
export SECFLOW_DELIVERY_LIMIT="${SECFLOW_DELIVERY_LIMIT:-5}"
export SECFLOW_POOL="${SECFLOW_POOL:-default}"
export SECFLOW_BIND="${SECFLOW_BIND:-#}"
export SECFLOW_PREFETCH="${SECFLOW_PREFETCH:-64}"
export SECFLOW_GRACE_PERIOD="${SECFLOW_GRACE_PERIOD:-30}"
export SECFLOW_LOG_FORMAT="${SECFLOW_LOG_FORMAT:-json}"
if [ -z "${SECFLOW_SIGNING_KEY:-}" ] && [ -z "${SECFLOW_SIGNING_KEY_FILE:-}" ]; then
  SECFLOW_SIGNING_KEY="fleet:$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  export SECFLOW_SIGNING_KEY
fi
umask 077
{
  echo "export SECFLOW_NAMESPACE='$SECFLOW_NAMESPACE' SECFLOW_DELIVERY_LIMIT='$SECFLOW_DELIVERY_LIMIT'"
  if [ -n "${SECFLOW_SIGNING_KEY:-}" ]; then echo "export SECFLOW_SIGNING_KEY='$SECFLOW_SIGNING_KEY'"; fi
  if [ -n "${SECFLOW_SIGNING_KEY_FILE:-}" ]; then echo "export SECFLOW_SIGNING_KEY_FILE='$SECFLOW_SIGNING_KEY_FILE'"; fi
} > "$dir/env"
rm -f "$dir/ready" "$dir/pids"

# A port already answering would pass the readiness check below for a worker that never started.
for i in $(seq 1 "$n"); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$((port + i - 1))") 2>/dev/null; then
    echo "fleet: port $((port + i - 1)) is in use (another fleet?); set FLEET_METRICS_PORT" >&2
    exit 1
  fi
done

pids=()
stop() {
  trap - TERM INT EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  echo "fleet: stopped ($n workers, last exit status $status)" >&2
}
trap 'stop; exit 0' TERM INT
trap stop EXIT

for i in $(seq 1 "$n"); do
  SECFLOW_WORKER_ID="fleet-$SECFLOW_NAMESPACE-w$i" SECFLOW_METRICS_ADDR="127.0.0.1:$((port + i - 1))" \
    "$bin/worker" 2>"$dir/w$i.log" &
  pids+=($!)
  echo $! >> "$dir/pids"
done

# Ready when every worker's /readyz answers 200 (a worker stops waiting for the broker after
# --connect-timeout-secs, 30 s by default, and exits).
deadline=$((SECONDS + 60))
for i in $(seq 1 "$n"); do
  until curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$((port + i - 1))/readyz"; do
    if ! kill -0 "${pids[$((i - 1))]}" 2>/dev/null; then
      echo "fleet: worker $i exited at start; its log ($dir/w$i.log) ends:" >&2
      tail -n 5 "$dir/w$i.log" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "fleet: worker $i not ready within 60 s (log: $dir/w$i.log)" >&2
      exit 1
    fi
    sleep 0.1
  done
done
touch "$dir/ready"
echo "fleet: $n workers ready on namespace $SECFLOW_NAMESPACE, pool $SECFLOW_POOL, prefetch $SECFLOW_PREFETCH;" \
  "metrics 127.0.0.1:$port-$((port + n - 1)); logs in $dir; 'source $dir/env' to run producer against it" >&2
# Until a worker dies or this script is told to stop.
wait -n "${pids[@]}" || true
echo "fleet: a worker exited; stopping the others" >&2
