#!/usr/bin/env bash
# benchmarks/serve.py with the server pinned to N physical cores of a larger machine: issue 12's "on 2 CPU cores"
# where no idle 2-core machine is at hand (a lent GPU machine's CPU, say). Two runs on the same store and bundle:
#   shared   the load generator on the server's cores too (what a 2-core machine measures)
#   apart    the load generator on other cores (remote clients take none of the server's CPU)
# Cores are chosen one per physical core (lscpu's CORE column), so two hyperthreads of one core never count as two.
#
#   bash benchmarks/serve_pinned.sh [N=2] [serve.py arguments...]   e.g. bash benchmarks/serve_pinned.sh 2 --seconds 15
#
# Environment: PYTHON (default .venv/bin/python), KEEP (bundle and store folder, default /tmp/hark-serve-pinned;
# built by a first short run on all cores), RUNS (default "shared apart").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
N="${1:-2}"
shift || true
KEEP="${KEEP:-/tmp/hark-serve-pinned}"
mapfile -t cores < <(lscpu -p=CPU,CORE | grep -v '^#' | sort -t, -k2,2n -k1,1n -u | cut -d, -f1)
if (( ${#cores[@]} < N + 1 )); then
  echo "need more than $N physical cores, found ${#cores[@]}" >&2; exit 2
fi
server=$(IFS=,; echo "${cores[*]:0:N}")
clients=$(IFS=,; echo "${cores[*]:N:4}")
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); server cores $server; client cores $clients;" \
     "int8 instructions: $(grep -o -w -E 'avx512_vnni|avx_vnni|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "== all cores (builds the bundle and the store on a first run: minutes)"
"$PY" benchmarks/serve.py --keep "$KEEP" "$@" --seconds 5 --warmup 2 --concurrency 1 4 | tail -n 1
for run in ${RUNS:-shared apart}; do
  echo "== $run"
  if [[ "$run" == shared ]]; then
    taskset -c "$server" "$PY" benchmarks/serve.py --keep "$KEEP" "$@"
  else
    taskset -c "$server" "$PY" benchmarks/serve.py --keep "$KEEP" --client-cpus "$clients" "$@"
  fi
done
