#!/usr/bin/env bash
# Runs on the GPU machine after gpu-bench.sh (same checkpoint, same GPU): reference/bench_torch.py in
# bf16 eager (SDPA flash), then torch.compile, each printed side by side with hbridge's JSON; first
# reference/bench_sdpa.py, torch SDPA alone at the attention shapes of benches/kernels.rs.
#   bash gpu-bundle/run-torch.sh [extra bench_torch.py args]
set -uo pipefail
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$bundle")"
logs="${OUT:-$bundle/logs}"
model="${HBRIDGE_7B4B_DIR:-/tmp/hbridge-7b4b}"
hb="$logs/bench-7b4b.json"
[ -f "$hb" ] || hb="$bundle/bench-7b4b.json"
echo "== torch SDPA at the kernel bench's attention shapes"
(cd "$repo" && python3 reference/bench_sdpa.py --json "$logs/sdpa.json" 2>&1 | tee "$logs/sdpa.log")
for mode in eager compile; do
  echo "== PyTorch $mode"
  (cd "$repo" && python3 reference/bench_torch.py "$model" --device cuda --mode "$mode" \
      --json "$logs/torch-7b4b-$mode.json" ${hb:+--compare "$hb"} "$@" 2>&1 | tee "$logs/torch-7b4b-$mode.log" | tail -25)
done
