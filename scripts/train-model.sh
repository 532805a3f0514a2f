#!/usr/bin/env bash
# Retrains the classifier's model (worker/rules/model.json) on tests/corpus/errors.yaml and every
# tests/corpus/train*.yaml, never on a held-out file; prints the training and validation figures.
# Rebuild the worker afterwards to embed it, or start workers with --model worker/rules/model.json.
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--examples tests/corpus/errors.yaml)
for f in tests/corpus/train*.yaml; do
    [[ -e "$f" ]] && args+=(--examples "$f")
done
cargo run --quiet -p secflow-worker --bin worker -- classify --train "${args[@]}" --out worker/rules/model.json "$@"
