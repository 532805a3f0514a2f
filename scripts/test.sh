#!/usr/bin/env bash
# The test command: formatting, lints, then every unit and integration test against the real
# RabbitMQ and Redis (started or installed first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The process tests spawn the real binaries.
cargo build --workspace --bins --quiet
cargo test --workspace --quiet 2>&1
