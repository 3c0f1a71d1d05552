#!/usr/bin/env bash
# Issue 5 item 4: the CPU backend against the PyTorch reference on the CPU (f32, same weights, same
# thread count) on the mid preset, one after the other in one run, printed side by side with ratios.
#   bash scripts/bench-cpu-vs-torch.sh [PYTHON]   (PYTHON: an interpreter with torch, transformers,
#                                                  diffusers; default python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${1:-python3}
threads=${HBRIDGE_BENCH_THREADS:-$(nproc)}
model=${HBRIDGE_MID_DIR:-/tmp/hbridge-mid}
out=${HBRIDGE_BENCH_OUT:-target/bench-cpu-vs-torch}
mkdir -p "$out"
cargo build --release --bin hbridge
[ -f "$model/hbridge.json" ] || ./target/release/hbridge init "$model" --config mid
args=(--prompt-len 128 --context 512 --decode-tokens 16 --size 256 --steps 4 --runs 3)
echo "== hbridge (CPU backend, $threads threads)"
RAYON_NUM_THREADS=$threads ./target/release/hbridge --device cpu bench "$model" "${args[@]}" \
  --json "$out/hbridge.json" | tee "$out/hbridge.txt"
echo "== PyTorch (f32, eager, $threads threads)"
"$py" reference/bench_torch.py "$model" --device cpu --mode eager --threads "$threads" "${args[@]}" \
  --json "$out/torch.json" --compare "$out/hbridge.json" | tee "$out/torch.txt"
