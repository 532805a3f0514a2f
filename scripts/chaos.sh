#!/usr/bin/env bash
# The chaos suite: a 2,002-task workflow through 4 workers while workers are SIGKILLed and
# restarted, RabbitMQ is restarted, Redis is stopped for 10 s and poison messages arrive.
# Uses a RabbitMQ node and a Redis of its own (the shared ones are untouched); bounded by
# --timeout (default 300 s). Prints submitted / completed / dead-lettered (by reason) / lost /
# duplicate completions and the recovery time after the broker restart; exits 1 on a failure.
# Options: --branches N (default 2000) --workers N (default 4) --timeout SECS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --workspace --bins --quiet
exec target/debug/chaos "$@"
