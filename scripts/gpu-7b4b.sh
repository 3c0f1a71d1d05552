#!/usr/bin/env bash
# Runs on the GPU machine (copied into gpu-bundle/ by scripts/gpu-check.sh): makes the hbridge-7b4b
# checkpoint with random weights (never committed; ~23 GB on local disk), then one 1024x1024 text-to-image
# request on CUDA (text guidance, 50 steps, VAE decode) with CUDA graph replay, and a short eager run of
# the same request for the replay-vs-eager comparison. Logs under $OUT (or gpu-bundle/logs).
#   bash gpu-bundle/run-7b4b.sh [STEPS] [EAGER_STEPS]
set -uo pipefail
steps=${1:-50}
eager_steps=${2:-5}
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${OUT:-$bundle/logs}"
mkdir -p "$logs"
bin="$bundle/bin/hbridge"
model="${HBRIDGE_7B4B_DIR:-/tmp/hbridge-7b4b}"
repo="$(dirname "$bundle")"
source "$bundle/env.sh"
df -h "$(dirname "$model")" | tail -1
if [ ! -f "$model/hbridge.json" ]; then
  /usr/bin/time -v "$bin" init "$model" --config hbridge-7b4b --force 2>&1 | tee "$logs/7b4b-init.log" \
    | grep -E "wrote|Maximum resident|Elapsed|error"
fi
du -sh "$model"
prompt="a red fox sitting in a snowy forest at dawn, detailed fur, soft light"
echo "== replayed (CUDA graphs), $steps steps"
"$bin" --device cuda generate "$model" -p "$prompt" --steps "$steps" -o "$logs/7b4b-fox.png" 2>&1 \
  | tee "$logs/7b4b-generate.log" | grep -v '^denoising'
echo "== eager (no CUDA graphs), $eager_steps steps"
"$bin" --device cuda generate "$model" -p "$prompt" --steps "$eager_steps" --no-cuda-graphs -o "$logs/7b4b-eager.png" 2>&1 \
  | tee "$logs/7b4b-generate-eager.log" | grep -v '^denoising'
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
