#!/usr/bin/env bash
# Re-run every benchmark (pass --quick for the short versions); results go to benchmarks/results/<name>.log,
# and the last line of each (one JSON object) is collected in benchmarks/results/summary.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
: > benchmarks/results/summary.jsonl
for name in rerank export ingest query store_open; do
  echo "== $name"
  .venv/bin/python "benchmarks/$name.py" "$@" 2>&1 | tee "benchmarks/results/$name.log" | tail -n 1 \
    | tee -a benchmarks/results/summary.jsonl
done
