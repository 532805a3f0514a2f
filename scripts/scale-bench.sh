#!/usr/bin/env bash
# Scaling benchmark: how the fleet's throughput grows with worker processes. For 1, 2, 4 and 8
# workers (scripts/fleet.sh, release build) it drains a backlog of I/O-bound tasks
# (builtin.sleep, 50 ms) and of no-op tasks (builtin.noop) and prints tasks/s, efficiency against
# linear scaling from one worker, and the CPU the broker, Redis and the workers used.
#
#   bash scripts/scale-bench.sh
#
# The backlog is published before the workers start (one worker declares the queue first), and
# the rate is measured between 5 % and 95 % of the tasks completed, so start-up and the tail do
# not count. Completions are read from the workers' secflow_tasks_settled_total. Settings:
#   SCALE_WORKERS ("1 2 4 8"), SCALE_IO_PREFETCH (8), SCALE_IO_TASKS (1200 per worker),
#   SCALE_NOOP_TASKS (30000), SCALE_KINDS ("io noop").
# The I/O pool runs at prefetch 8 so that eight workers (8 x 8 / 50 ms = 1,280 tasks/s) stay
# under what the machine can settle; at prefetch 64, eight workers would ask for 10,240 tasks/s
# and measure the CPU ceiling (the no-op rows) instead of the scaling.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
if [ "${FLEET_PROFILE:-release}" = release ]; then
  cargo build --release -p secflow-worker -p secflow-producer -p secflow-dlq-inspector --quiet
fi
bin="${CARGO_TARGET_DIR:-target}/${FLEET_PROFILE:-release}"
export FLEET_NO_BUILD=1 FLEET_PROFILE="${FLEET_PROFILE:-release}" RUST_LOG=warn FLEET_METRICS_PORT=19464
SECFLOW_SIGNING_KEY="bench:$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
export SECFLOW_SIGNING_KEY
work=$(mktemp -d)
fleet=""
cleanup() {
  if [ -n "$fleet" ]; then kill -TERM "$fleet" 2>/dev/null || true; wait "$fleet" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

ticks=$(getconf CLK_TCK)
# CPU seconds (user + system) the given processes have used so far.
cpu() {
  local total=0 pid t
  for pid in "$@"; do
    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
listener() { ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1; }
broker_pid=$(listener 5672)
redis_pid=$(listener 6379)
# Completed tasks over every worker of the fleet (n workers from port FLEET_METRICS_PORT on).
completed() {
  local n=$1 sum=0 i v
  for i in $(seq 0 $((n - 1))); do
    v=$(curl -fsS --max-time 1 "http://127.0.0.1:$((FLEET_METRICS_PORT + i))/metrics" 2>/dev/null |
      awk '/^secflow_tasks_settled_total\{.*outcome="completed"/ { s += $NF } END { print s + 0 }')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
# Starts scripts/fleet.sh with n workers on namespace ns and waits until every one is ready.
start_fleet() {
  local n=$1 ns=$2
  rm -rf "$work/fleet"
  SECFLOW_NAMESPACE="$ns" FLEET_DIR="$work/fleet" bash scripts/fleet.sh "$n" 2>>"$work/fleet.log" &
  fleet=$!
  local deadline=$((SECONDS + 90))
  until [ -e "$work/fleet/ready" ]; do
    if ! kill -0 "$fleet" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "scale-bench: the fleet did not start; scripts/fleet.sh said:" >&2
      tail -n 20 "$work/fleet.log" >&2
      exit 1
    fi
    sleep 0.1
  done
}
stop_fleet() { kill -TERM "$fleet"; wait "$fleet" || true; fleet=""; }
# Deletes the namespace's queues and Redis keys (`sf:{NS...`); its empty exchanges stay.
drop_namespace() {
  rabbitmqctl -q list_queues name 2>/dev/null | grep "^$1\." | while read -r q; do
    rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
  done
  redis-cli --scan --pattern "sf:{$1*" | xargs -r -n 1000 redis-cli del >/dev/null
}

printf '%-5s %7s %7s %10s %11s %9s %9s %9s\n' kind workers tasks tasks/s efficiency broker% redis% workers%
for kind in ${SCALE_KINDS:-io noop}; do
  base=""
  for n in ${SCALE_WORKERS:-1 2 4 8}; do
    ns="scale-$kind-$n-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
    case "$kind" in
      io) type=builtin.sleep config='{"ms":50}' tasks=$((${SCALE_IO_TASKS:-1200} * n))
          export SECFLOW_PREFETCH="${SCALE_IO_PREFETCH:-8}" ;;
      noop) type=builtin.noop config='{}' tasks="${SCALE_NOOP_TASKS:-30000}"
          export SECFLOW_PREFETCH=64 ;;
      *) echo "scale-bench: unknown kind $kind (io, noop)" >&2; exit 2 ;;
    esac
    # One worker declares the pool's queue, then the backlog goes in while nobody consumes.
    start_fleet 1 "$ns"
    stop_fleet
    SECFLOW_NAMESPACE="$ns" "$bin/producer" publish --type "$type" --config "$config" --count "$tasks" >/dev/null
    start_fleet "$n" "$ns"
    mapfile -t workers < "$work/fleet/pids"
    lo=$((tasks / 20)) hi=$((tasks - tasks / 20)) t_lo="" t_hi="" done_=0
    deadline=$((SECONDS + 600))
    while [ -z "$t_hi" ]; do
      done_=$(completed "$n")
      now=$(date +%s.%N)
      if [ -z "$t_lo" ] && [ "$done_" -ge "$lo" ]; then
        t_lo=$now c_lo=$done_
        cpu0=("$(cpu "$broker_pid")" "$(cpu "$redis_pid")" "$(cpu "${workers[@]}")")
      fi
      if [ -n "$t_lo" ] && [ "$done_" -ge "$hi" ]; then
        t_hi=$now c_hi=$done_
        cpu1=("$(cpu "$broker_pid")" "$(cpu "$redis_pid")" "$(cpu "${workers[@]}")")
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "scale-bench: $kind with $n workers: only $done_ of $tasks completed in 600 s" >&2
        exit 1
      fi
      sleep 0.05
    done
    # Every task completes exactly once: wait for the last ones, then compare.
    until [ "$(completed "$n")" -ge "$tasks" ] || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.1; done
    final=$(completed "$n")
    stop_fleet
    drop_namespace "$ns"
    if [ "$final" != "$tasks" ]; then
      echo "scale-bench: $kind with $n workers: $final completions for $tasks tasks" >&2
      exit 1
    fi
    awk -v kind="$kind" -v n="$n" -v tasks="$tasks" -v c="$((c_hi - c_lo))" -v t0="$t_lo" -v t1="$t_hi" \
        -v base="$base" -v tk="$ticks" -v b="$((cpu1[0] - cpu0[0]))" -v r="$((cpu1[1] - cpu0[1]))" \
        -v w="$((cpu1[2] - cpu0[2]))" 'BEGIN {
      rate = c / (t1 - t0); if (base == "") base = rate; wall = (t1 - t0) * tk
      printf "%-5s %7d %7d %10.0f %10.0f%% %8.0f%% %8.0f%% %8.0f%%\n", kind, n, tasks, rate,
        100 * rate / (n * base), 100 * b / wall, 100 * r / wall, 100 * w / wall
      print rate > "/dev/stderr" }' 2> "$work/rate"
    [ -n "$base" ] || base=$(cat "$work/rate")
  done
done
echo "(CPU as % of one core over the measured window; this machine has $(nproc) cores)"
