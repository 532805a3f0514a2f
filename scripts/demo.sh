#!/usr/bin/env bash
# Demo: starts RabbitMQ and Redis if needed, builds, runs two workers and a local HTTP target,
# publishes a mix of tasks (successes, a retried flaky task, failures that end in the DLQ) and
# prints every event until the fleet is idle, then the DLQ depth. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --workspace --bins --quiet
export SECFLOW_NAMESPACE="${SECFLOW_NAMESPACE:-demo}" SECFLOW_LOG_FORMAT=text RUST_LOG=warn
# Tasks are signed: a fresh key for this demo's producer and workers (ID:SECRET).
export SECFLOW_SIGNING_KEY="${SECFLOW_SIGNING_KEY:-demo:$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}"
# What `exec` tasks and tool nodes may run here; /no/such/scanner below is refused as a security
# failure. The scanners are stand-ins (tests/standins/) that print the real tools' output formats:
# feroxbuster and nuclei are not installed here. Put the real ones on the allowlist to scan for real.
standins="$PWD/tests/standins"
export SECFLOW_EXEC_ALLOW="${SECFLOW_EXEC_ALLOW:-uname,python3,$standins/feroxbuster,$standins/nuclei}"
# Where res://NAME:TAG settings resolve, and the CVE service enrich.cve asks (served below).
export SECFLOW_RESOURCES="${SECFLOW_RESOURCES:-$PWD/recipes/resources}"
export SECFLOW_CVE_SOURCE="${SECFLOW_CVE_SOURCE:-http://127.0.0.1:18082}"
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== local HTTP target on 127.0.0.1:18080"
mkdir -p "$work/site" && echo '{"service":"demo target","status":"up"}' > "$work/site/health.json"
printf 'User-agent: *\nDisallow: /admin/\n' > "$work/site/robots.txt"
python3 -m http.server 18080 --bind 127.0.0.1 --directory "$work/site" >/dev/null 2>&1 & pids+=($!)
echo "== local CVE service on 127.0.0.1:18082 (GET /CVE-ID)"
mkdir -p "$work/cve" && echo '{"cvss": 6.1, "summary": "demo record: reflected XSS in the stand-in app"}' > "$work/cve/CVE-2024-1001"
python3 -m http.server 18082 --bind 127.0.0.1 --directory "$work/cve" >/dev/null 2>&1 & pids+=($!)

echo "== two workers on namespace $SECFLOW_NAMESPACE"
$bin/worker --worker-id demo-w1 2>"$work/w1.log" & pids+=($!)
$bin/worker --worker-id demo-w2 2>"$work/w2.log" & pids+=($!)
$bin/producer events --idle-exit 4 > "$work/events.log" & events=$!
# Wait for the workers to declare their queue (the publish is mandatory and needs it).
for _ in $(seq 1 100); do
  $bin/producer publish --type builtin.echo --config '{"message":"hello from the demo"}' >/dev/null 2>&1 && break
  sleep 0.2
done

echo "== publishing"
$bin/producer publish --type builtin.echo --config '{"message":"scan queued"}' --count 3
$bin/producer publish --type exec --config '{"argv":["uname","-sr"]}'
$bin/producer publish --type http --config '{"url":"http://127.0.0.1:18080/health.json"}'
$bin/producer publish --type builtin.fail --config '{"times":2}' --retry '{"base_delay_ms":300,"jitter":"equal"}'
$bin/producer publish --type http --config '{"url":"http://127.0.0.1:18080/missing"}'
$bin/producer publish --type exec --config '{"argv":["/no/such/scanner"]}'
$bin/producer publish --type builtin.fail --config '{"class":"permanent","message":"target out of scope"}'

echo "== events (until 4 s of quiet)"
wait "$events" || true
cat "$work/events.log"
echo
completed=$(grep -c "node.completed" "$work/events.log" || true)
dead=$(grep -c "node.dead_lettered" "$work/events.log" || true)
retried=$(grep -c "node.retrying" "$work/events.log" || true)
echo "== summary: $completed completed, $retried retries scheduled, $dead dead-lettered to $SECFLOW_NAMESPACE.dlq"
echo
echo "== a workflow: recipes/web-discovery.yaml (discovery -> probes -> enrichment -> report)"
echo "   the enrichment service (127.0.0.1:18081) is down on purpose: the node is optional, so the run ends partial"
$bin/producer validate recipes/web-discovery.yaml
run=$($bin/producer submit recipes/web-discovery.yaml --no-cache --wait --timeout 60 2>/dev/null || true)
$bin/producer status "$run" || true

echo
echo "== the published recipe: recipes/owasp-top10.yaml (discovery.ferox -> scan.nuclei -> enrich.cve), target 127.0.0.1:18080"
$bin/producer validate recipes/owasp-top10.yaml --resources recipes/resources
$bin/producer events --trace --idle-exit 3 > "$work/trace.log" & trace=$!
sleep 0.5
run=$($bin/producer submit recipes/owasp-top10.yaml --target http://127.0.0.1:18080 --no-cache --wait --timeout 60 2>/dev/null || true)
wait "$trace" || true
grep -v "^\[.*\] \(run\.\|hook\.\)" "$work/trace.log" || true
$bin/producer status "$run" || true

echo
echo "== the DLQ, as an operator reviews it (dlq-inspector list; requeue, purge and export work the same way)"
$bin/dlq-inspector list --filter newer=1m

echo
echo "== the fleet as an operator steers it (dlq-inspector workers, breakers, degrade; see README)"
$bin/dlq-inspector workers
$bin/dlq-inspector breakers
$bin/dlq-inspector degrade

echo
echo "== the audit trail: the published recipe's run read back after the fact (dlq-inspector audit), and the last 10 minutes' error analytics"
if [ -n "$run" ]; then
  $bin/dlq-inspector audit --run "$run" --kind node. | tail -8
fi
$bin/dlq-inspector analytics --window 10m
